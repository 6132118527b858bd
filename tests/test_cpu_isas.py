"""The CPU instruction sets agree on the values they store, also where the
16-bit conversions have edge cases: subnormal results (AVX512-BF16's conversion
instruction flushes them to zero), NaN (with any payload: the integer roundings
must not carry a NaN's mantissa into its exponent or sign), infinities,
overflow and values exactly halfway between two 16-bit neighbours (ties round
to even). The equivalence tests against the references use ordinary values.

Where the arithmetic is the same in every build, every build must store the
same bits as the portable one: AdamW with beta1 = 0 (its lerp is then a copy;
otherwise the SIMD builds fuse a multiply-add as torch's vectorised lerp does,
and the portable one does not, as torch's scalar lerp) and AnyPrecisionAdamW.
Adafactor's sums add in an order that depends on the vector width, so there
the two AVX512 builds, which differ in the conversions alone, must agree."""
from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from pytrainer import ops
from pytrainer.optim import FusedAdamW
from tests.optim_db import KERNEL_OPTIMS, OptimInfo, optims

pytestmark = pytest.mark.skipif(not ops.available(), reason="compiled kernels not built")

N = 4099  # not a multiple of any vector width: the tails run too
BITS = {torch.float64: torch.int64, torch.float32: torch.int32, torch.bfloat16: torch.int16,
        torch.float16: torch.int16}


# NaN payloads, as float32 bits: quiet and signalling, both signs, all mantissa bits set
NAN_BITS = [0x7FC00000, 0xFFC00000, 0x7FFFFFFF, 0xFFFFFFFF, 0x7F800001, 0xFF800001, 0x7FFF8000]


def from_bits(bits: torch.Tensor) -> torch.Tensor:
    return bits.to(torch.int64).to(torch.int32).view(torch.float32)


def edge_values(seed: int, finite: bool) -> torch.Tensor:
    """float32 values over the whole range: normal, subnormal in float32 and in
    bfloat16, ties of bfloat16 and float16, and unless finite, values that overflow
    16-bit types, NaN of several payloads and inf."""
    gen = torch.Generator().manual_seed(seed)
    scales = torch.tensor([1.0, 1e-3, 1e-36, 1e-38, 1e-39, 3e-41, 1e-44]
                          + ([] if finite else [1e30, 1e38]))
    x = torch.randn(N, generator=gen) * scales[torch.randint(0, len(scales), (N,), generator=gen)]
    # halfway between two bfloat16 (low 16 bits 0x8000) and two float16 (low 13 bits 0x1000)
    bits = x.view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    ties = torch.randint(0, N, (N // 20,), generator=gen)
    x[ties] = from_bits((bits[ties] & 0xFFFF0000) | 0x8000)
    ties = torch.randint(0, N, (N // 20,), generator=gen)
    x[ties] = from_bits((bits[ties] & 0xFFFFE000) | 0x1000)
    if not finite:
        nans = torch.tensor(NAN_BITS)[torch.randint(0, len(NAN_BITS), (N // 40,), generator=gen)]
        x[torch.randint(0, N, (N // 40,), generator=gen)] = from_bits(nans)
        x[torch.randint(0, N, (N // 40,), generator=gen)] = float("inf")
        x[torch.randint(0, N, (N // 40,), generator=gen)] = float("-inf")
    return x


def run(isa: str, make_optimizer, dtype: torch.dtype, finite: bool,
        shape: tuple[int, ...] = (N,)) -> list[torch.Tensor]:
    """Parameters and states after three steps (the third with a grad scale that
    makes every unscaled grad inexact) with the kernels of one instruction set."""
    numel = torch.Size(shape).numel()
    ops.kernels.set_cpu_isa(isa)
    try:
        p = torch.nn.Parameter(edge_values(0, finite)[:numel].view(shape).to(dtype))
        opt = make_optimizer([p])
        for step in range(3):
            p.grad = edge_values(step + 1, finite)[:numel].view(shape).to(dtype)
            if step == 2:
                opt.grad_scale = torch.tensor(3.0)
            opt.step()
        return [p.detach()] + [s for s in opt.state[p].values() if s.dim() > 0]
    finally:
        ops.kernels.set_cpu_isa("")


def same_bits(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Where a and b hold the same bits, or both a NaN (of any payload)."""
    return (a.view(BITS[a.dtype]) == b.view(BITS[b.dtype])) | (a.isnan() & b.isnan())


def assert_same_values(results: dict[str, list[torch.Tensor]], reference: str) -> None:
    """Bit for bit, except that a NaN only has to be a NaN."""
    expected = results.pop(reference)
    for isa, tensors in results.items():
        for i, (a, b) in enumerate(zip(tensors, expected)):
            same = same_bits(a, b)
            assert bool(same.all()), (
                f"{isa}, tensor {i}: {int((~same).sum())} elements differ from {reference}, "
                f"e.g. {a[~same][:4].tolist()} vs {b[~same][:4].tolist()}")


def assert_most_params_moved(results: dict[str, list[torch.Tensor]], finite: bool) -> None:
    """Keeps the comparisons meaningful: not all NaN (inf and NaN inputs spread
    through the states over the steps) or unchanged."""
    p = next(iter(results.values()))[0]
    start = edge_values(0, finite)[:p.numel()].view(p.shape).to(p.dtype)
    moved = (p != start) & p.isfinite()
    assert moved.float().mean() > 0.1, f"only {moved.float().mean():.0%} moved"


DTYPES = [torch.bfloat16, torch.float16, torch.float32]
BITWISE_BASE = [info for info in KERNEL_OPTIMS if info.same_bits_on_every_isa is not None]
_ANYPRECISION = next(info for info in BITWISE_BASE if info.name == "anyprecision-kahan")
_ADAMW = next(info for info in BITWISE_BASE if info.name == "adamw")
BITWISE = BITWISE_BASE + [
    # torchdistx's default states (float32 momentum, nearest rounding): a loop of its own
    replace(_ANYPRECISION, name="anyprecision-default-states", kwargs=dict(lr=1e-2,
                                                                           weight_decay=0.1)),
    # beta1 = 0: the new momentum is the grad itself, rounded to bfloat16 as stored,
    # so the edge values (ties, NaN payloads) of float32 grads reach the rounding as they are
    replace(_ANYPRECISION, name="anyprecision-grads-to-bfloat16", kwargs=dict(
        lr=1e-2, betas=(0.0, 0.5), momentum_dtype=torch.bfloat16, variance_dtype=torch.float16)),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@optims(BITWISE)
def test_every_isa_stores_the_bits_of_the_portable_build(info, dtype):
    make = lambda ps: info.make(ps, **info.same_bits_on_every_isa)  # noqa: E731
    results = {isa: run(isa, make, dtype, finite=info.finite_only) for isa in ops.cpu_isas()}
    assert_most_params_moved(results, finite=info.finite_only)
    assert_same_values(results, "DEFAULT")


_BF16_STATES = dict(momentum_dtype=torch.bfloat16, variance_dtype=torch.bfloat16,
                    compensation_buffer_dtype=torch.bfloat16)
BLOCK_STORES = {
    "adamw": lambda ps: _ADAMW.make(ps, **_ADAMW.same_bits_on_every_isa),
    "amsgrad": lambda ps: _ADAMW.make(ps, amsgrad=True, **_ADAMW.same_bits_on_every_isa),
    "anyprecision-kahan": lambda ps: _ANYPRECISION.make(ps, **_BF16_STATES),
    "anyprecision-nearest": lambda ps: _ANYPRECISION.make(
        ps, use_kahan_summation=False, **_BF16_STATES),
}


def bf16_results_on_every_isa(name: str, take_steps) -> dict[str, list[torch.Tensor]]:
    """Param and states of BLOCK_STORES[name] after take_steps(p, opt), with the
    kernels of each instruction set, from the same bfloat16 params."""
    results = {}
    for isa in ops.cpu_isas():
        ops.kernels.set_cpu_isa(isa)
        try:
            start = torch.randn(N, generator=torch.Generator().manual_seed(5))
            p = torch.nn.Parameter(start.to(torch.bfloat16))
            opt = BLOCK_STORES[name]([p])
            take_steps(p, opt)
            results[isa] = [p.detach()] + [s for s in opt.state[p].values() if s.dim() > 0]
        finally:
            ops.kernels.set_cpu_isa("")
    return results


def assert_same_bits(results: dict[str, list[torch.Tensor]],
                     expected: list[torch.Tensor]) -> None:
    """Strictly bit for bit, NaN payloads included (16-bit tensors)."""
    for isa, tensors in results.items():
        for i, (a, b) in enumerate(zip(tensors, expected)):
            same = a.view(torch.int16) == b.view(torch.int16)
            assert bool(same.all()), (
                f"{isa}, tensor {i}: {int((~same).sum())} elements differ, at "
                f"{(~same).nonzero().flatten()[:4].tolist()}: "
                f"{a[~same][:4].view(torch.int16).tolist()} vs "
                f"{b[~same][:4].view(torch.int16).tolist()}")


@pytest.mark.parametrize("name", list(BLOCK_STORES))
def test_blocks_with_and_without_nan_store_the_bits_of_the_portable_build(name):
    """AVX2 bfloat16 AdamW and AnyPrecisionAdamW (bfloat16 states) store a block
    whose new params are finite by a rounding that has no NaN case (vector_io.h's
    NonFiniteSeen), AnyPrecisionAdamW its moments too before it knows, mending
    their NaNs afterwards in a block that has some; the AVX512 builds store a pair
    with a NaN by the integer rounding. NaN of every payload and infinities in
    three blocks of 256 only, finite values in the others, so that a step takes
    both kinds of stores: strictly bit for bit, NaN included (0x7fc0, as torch;
    the rounding without the NaN case keeps a NaN's sign and payload, 0xffff
    from a grad of all ones, and can carry a payload into the sign), and the
    blocks without specials stay free of them."""
    block = 256
    special = torch.zeros(N, dtype=torch.bool)
    for b in (2, 5, 9):
        special[b * block:(b + 1) * block] = True

    def take_steps(p, opt):
        for step in range(3):
            grad = edge_values(step + 1, finite=True)
            grad[2 * block + 3:2 * block + 3 + len(NAN_BITS)] = from_bits(torch.tensor(NAN_BITS))
            grad[5 * block + 17] = float("inf")
            grad[5 * block + 40] = float("-inf")
            p.grad = grad.to(torch.bfloat16)
            if step == 1:
                p.data[9 * block + 100] = float("inf")
            opt.step()

    results = bf16_results_on_every_isa(name, take_steps)
    expected = results.pop("DEFAULT")
    for t in expected:
        assert bool(t[~special].isfinite().all())
        assert not bool(t[special].isfinite().all())
    assert_same_bits(results, expected)


@pytest.mark.parametrize("write_back", [False, True], ids=["step_scaled", "grads-written-back"])
@pytest.mark.parametrize("name", ["anyprecision-kahan", "anyprecision-nearest"])
def test_a_nan_grad_scale_of_any_payload_stores_the_bits_of_the_portable_build(name, write_back):
    """The grad scale is the one input of the new moments that is not a bfloat16
    value. A NaN scale with every payload bit set, were its payload to reach the
    AVX2 rounding without the NaN case, would carry into the sign and store -0.0:
    a finite step from a NaN scale. Every build stores the portable build's bits,
    NaN throughout."""
    scale = from_bits(torch.tensor([0x7FFFFFFF]))[0]

    def take_steps(p, opt):
        p.grad = edge_values(1, finite=True).to(torch.bfloat16)
        if write_back:
            opt.grad_scale = scale.clone()
            opt.step()
        else:
            opt.step_scaled(scale.clone())

    results = bf16_results_on_every_isa(name, take_steps)
    expected = results.pop("DEFAULT")
    assert all(bool(t.isnan().all()) for t in expected)
    assert_same_bits(results, expected)


# vectors, and for factored states a matrix and a batch of matrices
SHAPES = [(N,)]
FACTORED_SHAPES = [(N,), (61, 67), (3, 20, 60)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("info, shape", [
    (info, shape) for info in KERNEL_OPTIMS
    for shape in (FACTORED_SHAPES if info.factored else SHAPES)],
    ids=lambda v: repr(v) if isinstance(v, OptimInfo) else "x".join(map(str, v)))
def test_avx512_bf16_stores_the_bits_of_avx512(dtype, info, shape):
    if "AVX512_BF16" not in ops.cpu_isas():
        pytest.skip("this CPU has no AVX512-BF16")
    results = {isa: run(isa, info.make, dtype, info.finite_only, shape)
               for isa in ("AVX512_BF16", "AVX512")}
    assert_most_params_moved(results, info.finite_only)
    assert_same_values(results, "AVX512")


# ---------------------------------------------------------------- PYTRAINER_CPU_ISA
ROOT = Path(__file__).resolve().parents[1]


def in_process_with(isa_setting: str, code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTRAINER_CPU_ISA": isa_setting}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=120, cwd=ROOT, env=env)


@pytest.mark.parametrize("isa", [isa for isa in ops.cpu_isas() if isa != ops.cpu_isa()]
                         if ops.available() else [])
def test_environment_variable_forces_an_instruction_set_for_the_process(isa):
    """PYTRAINER_CPU_ISA (any case) picks the kernels of a whole process; set_cpu_isa
    still overrides it, and "" goes back to it, not to the automatic choice."""
    out = in_process_with(isa.lower(), f"""
        import torch
        from pytrainer import ops
        from pytrainer.optim import FusedAdamW
        assert ops.cpu_isa() == "{isa}", ops.cpu_isa()
        p = torch.nn.Parameter(torch.randn(1000))
        p.grad = torch.randn(1000)
        FusedAdamW([p]).step()
        assert ops.set_cpu_isa("{ops.cpu_isa()}") == "{ops.cpu_isa()}"
        assert ops.set_cpu_isa("") == "{isa}"
        print("ok")
        """)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_environment_variable_naming_no_usable_instruction_set_is_a_clear_error():
    if not ops.available():
        pytest.skip("compiled kernels not built")
    missing = [isa for isa in ("AVX512_BF16", "AVX512", "AVX2") if isa not in ops.cpu_isas()]
    for setting in ["SSE9"] + missing[:1]:  # unknown, and known but not on this CPU
        out = in_process_with(setting, """
            import torch
            from pytrainer.optim import FusedAdamW
            p = torch.nn.Parameter(torch.randn(10))
            p.grad = torch.randn(10)
            FusedAdamW([p]).step()
            """)
        assert out.returncode != 0
        assert (f"PYTRAINER_CPU_ISA={setting} is unknown or not supported by this CPU; "
                f"valid here: {', '.join(ops.cpu_isas())}") in out.stderr, out.stderr[-2000:]


# ---------------------------------------------------------------- every 16-bit value
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_every_16_bit_value_converts_as_torch_does_on_every_isa(dtype):
    """Each of the 65536 16-bit values as a grad, with beta1 = beta2 = 0: the new
    momentum is the grad (loaded to float32 and stored back: exact) and the new
    variance is its exact float32 square rounded to the dtype (RNE, overflow to
    inf, subnormal results). Every build, the portable one's lane-parallel software
    conversions included, stores torch's own conversions of the same values."""
    grad = torch.arange(1 << 16, dtype=torch.int32).to(torch.int16).view(dtype)
    finite = grad.isfinite()
    wide = grad.float()
    expected_m, expected_v = grad.clone(), (wide * wide).to(dtype)
    for isa in ops.cpu_isas():
        ops.kernels.set_cpu_isa(isa)
        try:
            p = torch.nn.Parameter(torch.ones(1 << 16, dtype=dtype))
            p.grad = grad.clone()
            opt = FusedAdamW([p], lr=0.0, betas=(0.0, 0.0))
            opt.step()
        finally:
            ops.kernels.set_cpu_isa("")
        m, v = opt.state[p]["exp_avg"], opt.state[p]["exp_avg_sq"]
        bits = BITS[dtype]
        # an infinite grad makes the momentum NaN (0 * inf in the lerp), as torch's
        assert torch.equal(m[finite].view(bits), expected_m[finite].view(bits)), isa
        assert bool(m[~finite].isnan().all()), isa
        same_v = same_bits(v, expected_v)
        assert bool(same_v.all()), (isa, grad[~same_v][:4].tolist(), v[~same_v][:4].tolist())


# ---------------------------------------------------------------- the bias-correction division
def random_nonnegative(dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Random bit patterns of non-negative values over every exponent, subnormals
    included, with zeros, inf and NaN among them."""
    gen = torch.Generator().manual_seed(seed)
    bits = BITS[dtype]
    top = int(torch.tensor(float("inf"), dtype=dtype).view(bits))
    x = torch.randint(0, top, (N,), generator=gen, dtype=torch.int64).to(bits).view(dtype)
    specials = torch.tensor([0.0, -0.0, float("inf"), float("nan")], dtype=dtype)
    x[torch.randint(0, N, (N // 20,), generator=gen)] = specials[
        torch.randint(0, len(specials), (N // 20,), generator=gen)]
    return x


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_division_by_the_bias_correction_has_the_bits_of_a_division_on_every_isa(dtype):
    """The kernels divide sqrt(v) by sqrt(1 - beta2^t) with a multiply by the
    reciprocal and a fused correction (divide_math.h) where torch divides: the
    quotient must still be the correctly rounded one, for every exponent of v
    (subnormal, zero, inf, NaN) and bias corrections of several beta2 and steps.
    With beta1 = 0, lr = 1 and a zero parameter the new parameter is
    -g / (sqrt(v') / d + eps), computed here from the v' the kernel stored, with
    numpy's square root (torch's CPU sqrt of float32, MKL's, is an ulp off for a
    few inputs) and eps small enough to leave the quotient's last bits visible."""
    eps = 1e-30 if dtype == torch.float32 else 1e-300
    gen = torch.Generator().manual_seed(1)
    # grads over most exponents too, so that v' = beta2 v + (1 - beta2) g^2 spans them
    low, high = (-75, 60) if dtype == torch.float32 else (-540, 500)
    grad = torch.ldexp(torch.randn(N, generator=gen, dtype=dtype),
                       torch.randint(low, high, (N,), generator=gen).to(dtype))
    for isa in ops.cpu_isas():
        ops.kernels.set_cpu_isa(isa)
        try:
            p = torch.nn.Parameter(torch.zeros(N, dtype=dtype))
            opt = FusedAdamW([p], lr=1.0, betas=(0.0, 0.999), eps=eps, weight_decay=0.0)
            p.grad = grad.clone()
            opt.step()
            state = opt.state[p]
            checked = 0
            for case, (beta2, t) in enumerate(
                    (beta2, t) for beta2 in (0.999, 0.95, 0.99999)
                    for t in (1, 2, 3, 4, 5, 7, 10, 17, 31, 100, 333, 1000, 4321, 10**4, 10**5)):
                opt.param_groups[0]["betas"] = (0.0, beta2)
                state["step"].fill_(t - 1)
                state["exp_avg"].zero_()
                state["exp_avg_sq"].copy_(random_nonnegative(dtype, 100 + case))
                p.data.zero_()
                opt.step()
                v = state["exp_avg_sq"]
                d = torch.tensor(math.sqrt(1.0 - beta2 ** t), dtype=torch.float64).to(dtype)
                root = torch.from_numpy(np.sqrt(v.numpy()))
                expected = torch.zeros(N, dtype=dtype) + -grad / (root / d + eps)
                same = same_bits(p.detach(), expected)
                assert bool(same.all()), (
                    f"{isa}, beta2={beta2}, t={t}: {int((~same).sum())} of {N} differ, e.g. "
                    f"v={v[~same][:3].tolist()}: {p.detach()[~same][:3].tolist()} "
                    f"vs {expected[~same][:3].tolist()}")
                checked += int(((root / d) != 0).sum())
            assert checked > 0.8 * N * (case + 1)
        finally:
            ops.kernels.set_cpu_isa("")
