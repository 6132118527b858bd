"""Every CPU instruction set stores the same values as the portable build, also
where the 16-bit conversions have edge cases: subnormal results (AVX512-BF16's
conversion instruction flushes them to zero), NaN, infinities and overflow.
The equivalence tests against the references use ordinary values.

AdamW's lerp fuses a multiply-add in the SIMD builds (as torch's vectorised
lerp does) but not in the portable one (as torch's scalar lerp): with beta1 = 0
it reduces to a copy and every build must agree bit for bit; with other betas
only the AVX512 builds must (they differ in the conversions alone)."""
from __future__ import annotations

import pytest
import torch

from pytrainer import ops
from pytrainer.optim import Adafactor, AnyPrecisionAdamW, FusedAdamW

pytestmark = pytest.mark.skipif(not ops.available(), reason="compiled kernels not built")

N = 4099  # not a multiple of any vector width: the tails run too
BITS = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}


def edge_values(seed: int, finite: bool) -> torch.Tensor:
    """float32 values over the whole range: normal, subnormal in float32 and in
    bfloat16, values that overflow 16-bit types, and (unless finite) NaN and inf."""
    gen = torch.Generator().manual_seed(seed)
    scales = torch.tensor([1.0, 1e-3, 1e-36, 1e-38, 1e-39, 3e-41, 1e-44, 1e30, 1e38])
    x = torch.randn(N, generator=gen) * scales[torch.randint(0, len(scales), (N,), generator=gen)]
    if not finite:
        x[torch.randint(0, N, (N // 40,), generator=gen)] = float("nan")
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


def assert_same_values(results: dict[str, list[torch.Tensor]], reference: str) -> None:
    """Bit for bit, except that a NaN only has to be a NaN."""
    expected = results.pop(reference)
    for isa, tensors in results.items():
        for i, (a, b) in enumerate(zip(tensors, expected)):
            same = (a.view(BITS[a.dtype]) == b.view(BITS[b.dtype])) | (a.isnan() & b.isnan())
            assert bool(same.all()), (
                f"{isa}, tensor {i}: {int((~same).sum())} elements differ from {reference}, "
                f"e.g. {a[~same][:4].tolist()} vs {b[~same][:4].tolist()}")


OPTIMIZERS = {
    "adamw": lambda ps: FusedAdamW(ps, lr=1e-2, betas=(0.0, 0.5), weight_decay=0.1),
    "adamw-amsgrad": lambda ps: FusedAdamW(ps, lr=1e-2, betas=(0.0, 0.5), amsgrad=True),
    "anyprecision-kahan": lambda ps: AnyPrecisionAdamW(
        ps, lr=1e-2, weight_decay=0.1, momentum_dtype=torch.bfloat16,
        variance_dtype=torch.bfloat16, compensation_buffer_dtype=torch.bfloat16),
    "anyprecision-nearest": lambda ps: AnyPrecisionAdamW(
        ps, lr=1e-2, momentum_dtype=torch.float16, variance_dtype=torch.bfloat16,
        use_kahan_summation=False),
    "anyprecision-f32-states": lambda ps: AnyPrecisionAdamW(
        ps, lr=1e-2, momentum_dtype=torch.float32, variance_dtype=torch.float32,
        compensation_buffer_dtype=torch.float16),
    "adafactor": lambda ps: Adafactor(ps, lr=1e-2, relative_step=False, scale_parameter=False,
                                      beta1=0.9, weight_decay=0.1),
}
DTYPES = [torch.bfloat16, torch.float16, torch.float32]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_isa_stores_the_same_values(name, dtype):
    # Adafactor's norms spread one NaN over the whole tensor: finite values only.
    finite = name == "adafactor"
    assert_same_values({isa: run(isa, OPTIMIZERS[name], dtype, finite)
                        for isa in ops.cpu_isas()}, "DEFAULT")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_factored_adafactor_stores_the_same_values_on_every_isa(dtype):
    assert_same_values({isa: run(isa, OPTIMIZERS["adafactor"], dtype, True, shape=(61, 67))
                        for isa in ops.cpu_isas()}, "DEFAULT")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("amsgrad", [False, True])
def test_avx512_bf16_equals_avx512_with_fused_lerp(dtype, amsgrad):
    if "AVX512_BF16" not in ops.cpu_isas():
        pytest.skip("this CPU has no AVX512-BF16")

    def make(params):
        return FusedAdamW(params, lr=1e-2, weight_decay=0.1, amsgrad=amsgrad)

    assert_same_values({isa: run(isa, make, dtype, finite=False)
                        for isa in ("AVX512_BF16", "AVX512")}, "AVX512")
