"""Property-based tests (hypothesis) of the fused optimizer kernels against the
plain-PyTorch references, and of every optimizer's hyperparameter checks.

Each example builds one parameter of a random shape (0-d, empty, one element, odd
sizes, up to a few thousand elements, 1-4 dims), dtype and dense layout (a random
permutation of the dims: transposed/permuted parameters whose grads and states
share the layout), with extreme but finite values: magnitudes drawn log-uniformly
over most of the dtype's range (grads up to 1e30 in float32/bfloat16, up to the
float16 maximum 65504 down to its subnormals), lr from 1e-8 to 1, betas from 0 to
1 - 1e-9, eps down to 1e-30. It then checks two teacher-forced steps: the first
from zero states, the second from random states and a random step count, each
compared with the reference run from the same inputs.

Tolerances (see ``assert_agrees``), per element, for a result ``want`` of the
reference whose inputs have magnitude ``scale``:

    |got - want| <= rtol_store * |want| + k * eps_math * scale + subnormal_store

- ``rtol_store``: one rounding of the stored dtype (``helpers.rounding_tolerance``),
  since a float32 intermediate one ulp apart may round a 16-bit result the other way;
- ``k * eps_math * scale`` (k = 8): a few roundings of the float32 (float64) math on
  the operands, e.g. ``|m| + |g|`` for the momentum, ``|p| + |update|`` for the
  parameter plus the momentum's rounding carried through ``lr/(1-beta1^t)/denom``
  (a fused multiply-add in the lerp on CUDA, in torch's vectorised lerp and not in
  the portable CPU build; a differently rounded sqrt in torch.optim.AdamW);
- ``subnormal_store``: one unit of the smallest subnormal of the stored dtype.

FusedAdamW and AnyPrecisionAdamW follow their references op by op, so on the CPU
they are held to that bound (AnyPrecisionAdamW bit-exact, as its own tests do);
Adafactor's float32 kernel is compared with transformers' math in float64, with
relative tolerance 2e-5 (float32 sums over up to a few thousand elements).

Non-finite results: where the reference overflows (e.g. ``(1-beta2)*g*g`` of a
float32 grad near 1e30 is inf, so the update is 0), the kernel must produce the
same non-finite value at the same place (inf of the same sign, or NaN). Adafactor
keeps float32 states of ``g*g`` and sums ``p*p`` in float32: with grads or params
beyond ~1e17 the float32 sums of squares overflow where transformers' float64 math
does not (transformers' own float32 code overflows too), so its strategy keeps
``|g| <= 1e16``, ``|p| <= 1e17`` (also after the first step, which weight decay
scaled by RMS(p) can blow up) and ``eps1 >= 1e-30`` (with ``eps1 = 0`` a float32
``g*g`` that underflows to 0 gives 0/0 where float64 does not); that is a property
of float32 state and math, not a kernel bug.

The bugs these tests found are pinned by regression tests at the end of this file.

Examples are derandomized (the same on every run, no database);
``PYTRAINER_HYPOTHESIS_SCALE=40`` runs 40 times as many for a deeper search.
"""
from __future__ import annotations

import inspect
import math
import os

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pytrainer import ops
from pytrainer.optim import Adafactor, AnyPrecisionAdamW, FusedAdamW
from pytrainer.optim._base import State
from pytrainer.optim.anyprecision import resolve_state_dtype
from tests.helpers import rounding_tolerance
from tests.optim_db import KERNEL_OPTIMS, OptimInfo, one_per_class, optims_with
from tests.reference.adafactor import adafactor_step, new_state
from tests.reference.adamw import adamw_step
from tests.reference.anyprecision import anyprecision_step, rounding_bits, rounding_key

pytestmark = pytest.mark.skipif(not ops.available(), reason="compiled kernels not built")

# Reproducible in CI: examples derived from the test's name, no example database.
_COMMON = dict(derandomize=True, database=None, deadline=None, print_blob=False,
               suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                      HealthCheck.data_too_large, HealthCheck.filter_too_much])


#: PYTRAINER_HYPOTHESIS_SCALE=10 runs ten times the examples (still derandomized)
_SCALE = float(os.environ.get("PYTRAINER_HYPOTHESIS_SCALE", "1"))


def fast(max_examples: int):
    return settings(max_examples=max(1, round(max_examples * _SCALE)), **_COMMON)


NAMES = {torch.float64: "f64", torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}
LOW_PRECISION = [torch.float32, torch.bfloat16, torch.float16]

#: log10 of the magnitudes drawn for grads / momenta, params, and second moments
GRAD_RANGE = {torch.float64: (-150, 150), torch.float32: (-30, 30),
              torch.bfloat16: (-30, 30), torch.float16: (-8, math.log10(65504))}
PARAM_RANGE = {torch.float64: (-50, 50), torch.float32: (-15, 15), torch.bfloat16: (-15, 15),
               torch.float16: (-6, math.log10(65504))}
SQ_RANGE = {torch.float64: (-300, 300), torch.float32: (-45, 38.5),
            torch.bfloat16: (-40, 38.5), torch.float16: (-8, math.log10(65504))}


# ------------------------------------------------------------------ strategies


@st.composite
def shapes(draw, max_dims: int = 4, max_numel: int = 3000, min_dims: int = 0):
    """0-d, empty, one element, odd sizes, long vectors, up to ``max_dims`` dims."""
    kind = draw(st.sampled_from(["nd", "nd", "vector"] + (["scalar"] if min_dims == 0 else [])))
    if kind == "scalar":
        return ()
    if kind == "vector" and min_dims <= 1:
        return (draw(st.integers(0, max_numel)),)
    ndim = draw(st.integers(max(1, min_dims), max_dims))
    dims, numel = [], 1
    for _ in range(ndim):
        size = draw(st.integers(0, max(1, min(37, max_numel // max(numel, 1)))))
        dims.append(size)
        numel *= max(size, 1)
    return tuple(dims)


@st.composite
def layouts(draw, shape):
    """A permutation of the dims: the order in which they are laid out in memory."""
    return tuple(draw(st.permutations(range(len(shape))))) if shape else ()


def empty_with_layout(shape, perm, dtype, device) -> torch.Tensor:
    """A dense tensor of ``shape`` whose dims are stored in the order ``perm``."""
    base = torch.empty([shape[d] for d in perm], dtype=dtype, device=device)
    inverse = [perm.index(d) for d in range(len(shape))]
    return base.permute(inverse)


def storage_order(t: torch.Tensor, perm) -> torch.Tensor:
    """The contiguous view of a tensor laid out as ``perm``: element i is the i-th in memory."""
    return t.permute(perm) if perm else t


@st.composite
def magnitudes(draw, lo: float, hi: float):
    """How a tensor's values are drawn: ("spread", a, b): log-uniform over [1e a, 1e b]
    per element, or ("scale", k): normal values times 1e k."""
    if draw(st.booleans()):
        a = draw(st.floats(lo, hi))
        b = draw(st.floats(a, hi))
        return ("spread", a, b)
    return ("scale", draw(st.floats(lo, hi)))


def draw_values(gen, shape, how, dtype, device, *, positive=False, zero_fraction=0.0):
    """Values for ``how`` (see :func:`magnitudes`), random signs unless ``positive``,
    clamped to the finite range of ``dtype`` and rounded to it."""
    if how[0] == "spread":
        u = torch.rand(shape, generator=gen, dtype=torch.float64)
        x = torch.pow(10.0, how[1] + (how[2] - how[1]) * u)
        if not positive:
            x = torch.where(torch.rand(shape, generator=gen) < 0.5, -x, x)
    else:
        x = torch.randn(shape, generator=gen, dtype=torch.float64) * 10.0 ** how[1]
        if positive:
            x = x.abs()
    if zero_fraction:
        x = torch.where(torch.rand(shape, generator=gen) < zero_fraction, torch.zeros_like(x), x)
    big = torch.finfo(dtype).max
    return x.clamp(-big, big).to(dtype).to(device)


def filled(shape, perm, dtype, device, values):
    t = empty_with_layout(shape, perm, dtype, device)
    storage_order(t, perm).copy_(values.reshape(storage_order(t, perm).shape))
    return t


log_uniform = lambda lo, hi: st.floats(lo, hi).map(lambda e: 10.0 ** e)  # noqa: E731

lrs = st.one_of(st.sampled_from([1e-8, 1.0]), log_uniform(-8, 0))
betas_ = st.one_of(st.sampled_from([0.0, 0.5, 0.9, 0.999, 1 - 1e-7, 1 - 1e-9]),
                   st.floats(0.0, 1.0, exclude_max=True).filter(lambda b: b < 1.0),
                   log_uniform(-9, 0).map(lambda e: 1.0 - e).filter(lambda b: 0.0 <= b < 1.0))
epss = st.one_of(st.sampled_from([1e-30, 1e-8]), log_uniform(-30, -1))
weight_decays = st.one_of(st.just(0.0), log_uniform(-8, 0))
# step counts of the teacher-forced second step (exact in the float32 step state)
steps = st.one_of(st.integers(2, 20), st.integers(2, 2 ** 24))


# ------------------------------------------------------------------ comparison


def assert_agrees(got, want, *, scale, rtol_math, what: str, exact: bool = False):
    """``got`` (the kernel) against ``want`` (the reference), both any dtype/device:
    the same non-finite values at the same places, and elementwise
    ``|got - want| <= rtol_store*|want| + rtol_math*scale + subnormal`` elsewhere
    (``got == want`` when ``exact``)."""
    assert got.shape == want.shape, what
    assert got.dtype == want.dtype, (what, got.dtype, want.dtype)
    dtype = got.dtype
    g, w = got.detach().double().cpu(), want.detach().double().cpu()
    if exact:
        same = (g == w) | (torch.isnan(g) & torch.isnan(w))
        if not bool(same.all()):
            i = int((~same).flatten().nonzero()[0])
            raise AssertionError(f"{what}: {int((~same).sum())} of {g.numel()} elements differ; "
                                 f"first at flat index {i}: got {g.flatten()[i].item()!r}, "
                                 f"want {w.flatten()[i].item()!r}")
        return
    finite = torch.isfinite(w)
    bad_nonfinite = ~finite & ~((g == w) | (torch.isnan(g) & torch.isnan(w)))
    if bool(bad_nonfinite.any()):
        i = int(bad_nonfinite.flatten().nonzero()[0])
        raise AssertionError(f"{what}: the reference is {w.flatten()[i].item()} at flat index "
                             f"{i}, the kernel gives {g.flatten()[i].item()}")
    info = torch.finfo(dtype)
    rtol_store = rounding_tolerance(dtype)["rtol"]
    subnormal = info.tiny * info.eps
    scale = torch.as_tensor(scale, dtype=torch.float64).cpu().expand_as(w)
    tol = rtol_store * w.abs() + rtol_math * scale.nan_to_num(posinf=0.0) + subnormal
    err = (g - w).abs()
    bad = finite & ~(err <= tol)
    if bool(bad.any()):
        i = int(bad.flatten().nonzero()[0])
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {g.numel()} elements beyond tolerance; first at flat "
            f"index {i}: got {g.flatten()[i].item()!r}, want {w.flatten()[i].item()!r}, "
            f"|err| {err.flatten()[i].item():.3g} > tol {tol.flatten()[i].item():.3g}")


def math_eps(dtype) -> float:
    return torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps


# ================================================================== FusedAdamW


@st.composite
def adamw_cases(draw, dtypes):
    dtype = draw(st.sampled_from(dtypes))
    shape = draw(shapes())
    return dict(
        dtype=dtype, shape=shape, perm=draw(layouts(shape)), seed=draw(st.integers(0, 2 ** 31)),
        p_how=draw(magnitudes(*PARAM_RANGE[dtype])), g_how=draw(magnitudes(*GRAD_RANGE[dtype])),
        g2_how=draw(magnitudes(*GRAD_RANGE[dtype])), m_how=draw(magnitudes(*GRAD_RANGE[dtype])),
        v_how=draw(magnitudes(*SQ_RANGE[dtype])), step=draw(steps),
        lr=draw(lrs), beta1=draw(betas_), beta2=draw(betas_), eps=draw(epss),
        weight_decay=draw(weight_decays), amsgrad=draw(st.booleans()),
        maximize=draw(st.booleans()))


def _adamw_expected_and_scales(p, g, m, v, x, step, hyper):
    """The reference step and the magnitudes its results are built from.

    The momentum's rounding error is a few eps of ``|m| + |g|`` (not of the new
    momentum, which may be a cancellation: with or without a fused multiply-add in
    the lerp, on CUDA or in the portable CPU build, the new momentum then differs
    in relative terms); the update carries it divided by the denominator, which
    a tiny eps makes large. So the parameter's scale is ``|p| + |update|`` plus
    ``lr/(1-beta1^t) * (|m| + |g|) / denom``."""
    want = adamw_step(p.clone(), g, m.clone(), v.clone(), None if x is None else x.clone(),
                      step, **hyper)
    P, G, M, V = (t.double().cpu() for t in (p, g, m, v))
    lr, beta1, beta2, eps = hyper["lr"], hyper["beta1"], hyper["beta2"], hyper["eps"]
    decayed = P * (1 - lr * hyper["weight_decay"])
    second = (want[3] if hyper["amsgrad"] else want[2]).double().cpu()
    denom = second.sqrt() / math.sqrt(1 - beta2 ** step) + eps
    m_error_in_update = (lr / (1 - beta1 ** step)) * (M.abs() + G.abs()) / denom
    scales = dict(
        p=decayed.abs() + (want[0].double().cpu() - decayed).abs() + m_error_in_update,
        m=M.abs() + G.abs(),
        v=V.abs() * beta2 + (1 - beta2) * G * G)
    return want, scales


def _check_adamw_step(opt, p, perm, want, scales, amsgrad, what, k=8):
    st_ = opt.state[p]
    rtol = k * math_eps(p.dtype)
    got = [p.detach(), st_["exp_avg"], st_["exp_avg_sq"]]
    names = ["param", "exp_avg", "exp_avg_sq"]
    if amsgrad:
        got.append(st_["max_exp_avg_sq"])
        names.append("max_exp_avg_sq")
    for name, g, w in zip(names, got, want):
        scale = scales["v"] if name in ("exp_avg_sq", "max_exp_avg_sq") else scales[
            "p" if name == "param" else "m"]
        assert _same_layout(g, p), name  # states are created in the param's layout
        assert_agrees(storage_order(g, perm), storage_order(w, perm),
                      scale=storage_order(scale, perm), rtol_math=rtol, what=f"{what}: {name}")


def _run_adamw_case(case, device, against_torch=False):
    dtype, shape, perm = case["dtype"], case["shape"], case["perm"]
    gen = torch.Generator().manual_seed(case["seed"])
    n = math.prod(shape)
    hyper = dict(lr=case["lr"], beta1=case["beta1"], beta2=case["beta2"], eps=case["eps"],
                 weight_decay=case["weight_decay"], amsgrad=case["amsgrad"],
                 maximize=case["maximize"])
    p = torch.nn.Parameter(filled(shape, perm, dtype, device,
                                  draw_values(gen, n, case["p_how"], dtype, device)))
    kw = dict(lr=hyper["lr"], betas=(hyper["beta1"], hyper["beta2"]), eps=hyper["eps"],
              weight_decay=hyper["weight_decay"], amsgrad=hyper["amsgrad"],
              maximize=hyper["maximize"])
    opt = FusedAdamW([p], **kw)
    twin = ref_opt = None
    if against_torch:
        twin = torch.nn.Parameter(p.detach().clone())
        ref_opt = torch.optim.AdamW([twin], foreach=False, **kw)

    # step 1, from zero states
    grad = filled(shape, perm, dtype, device, draw_values(gen, n, case["g_how"], dtype, device))
    zeros = torch.zeros_like(p)
    x0 = zeros if hyper["amsgrad"] else None
    if against_torch:
        twin.grad = grad.clone()
        ref_opt.step()
        want = [twin.detach(), ref_opt.state[twin]["exp_avg"], ref_opt.state[twin]["exp_avg_sq"]]
        if hyper["amsgrad"]:
            want.append(ref_opt.state[twin]["max_exp_avg_sq"])
        _, scales = _adamw_expected_and_scales(p.detach(), grad, zeros, zeros, x0, 1, hyper)
    else:
        want, scales = _adamw_expected_and_scales(p.detach(), grad, zeros, zeros, x0, 1, hyper)
    p.grad = grad
    opt.step()
    _check_adamw_step(opt, p, perm, want, scales, hyper["amsgrad"], "step 1")
    assert opt.state[p]["step"].item() == 1

    # step t, from random states
    t = case["step"]
    st_ = opt.state[p]
    st_["step"].fill_(t - 1)
    storage_order(st_["exp_avg"], perm).copy_(
        draw_values(gen, n, case["m_how"], dtype, device).reshape(
            storage_order(p, perm).shape))
    for key in ("exp_avg_sq",) + (("max_exp_avg_sq",) if hyper["amsgrad"] else ()):
        storage_order(st_[key], perm).copy_(draw_values(
            gen, n, case["v_how"], dtype, device, positive=True).reshape(
                storage_order(p, perm).shape))
    grad = filled(shape, perm, dtype, device, draw_values(gen, n, case["g2_how"], dtype, device))
    m, v = st_["exp_avg"].clone(), st_["exp_avg_sq"].clone()
    x = st_["max_exp_avg_sq"].clone() if hyper["amsgrad"] else None
    if against_torch:
        twin.data.copy_(p.detach())
        rs = ref_opt.state[twin]
        rs["step"].fill_(t - 1)
        rs["exp_avg"].copy_(m)
        rs["exp_avg_sq"].copy_(v)
        if hyper["amsgrad"]:
            rs["max_exp_avg_sq"].copy_(x)
        twin.grad = grad.clone()
        ref_opt.step()
        want = [twin.detach(), rs["exp_avg"], rs["exp_avg_sq"]]
        if hyper["amsgrad"]:
            want.append(rs["max_exp_avg_sq"])
        _, scales = _adamw_expected_and_scales(p.detach(), grad, m, v, x, t, hyper)
    else:
        want, scales = _adamw_expected_and_scales(p.detach(), grad, m, v, x, t, hyper)
    p.grad = grad
    opt.step()
    _check_adamw_step(opt, p, perm, want, scales, hyper["amsgrad"], f"step {t}")
    assert st_["step"].item() == t


@pytest.mark.parametrize("dtypes", [[torch.float32, torch.float64],
                                    [torch.float16, torch.bfloat16]], ids=["f32-f64", "f16-bf16"])
@fast(50)
@given(data=st.data())
def test_fused_adamw_matches_reference(device, cpu_isa, dtypes, data):
    _run_adamw_case(data.draw(adamw_cases(dtypes), label="case"), device)


@fast(50)
@given(case=adamw_cases([torch.float32, torch.float64]))
def test_fused_adamw_matches_torch_adamw(device, case):
    """torch.optim.AdamW(foreach=False) for float32/float64: the same ops, except
    torch's vectorised sqrt, which is not always correctly rounded (within k*eps)."""
    _run_adamw_case(case, device, against_torch=True)


# ============================================================ AnyPrecisionAdamW


@st.composite
def anyprecision_cases(draw):
    dtype = draw(st.sampled_from(LOW_PRECISION))
    m_dtype, v_dtype, c_dtype = (draw(st.sampled_from(LOW_PRECISION)) for _ in range(3))
    shape = draw(shapes())
    rounding = draw(st.sampled_from(["nearest", "kahan", "stochastic"]))
    return dict(
        dtype=dtype, m_dtype=m_dtype, v_dtype=v_dtype, c_dtype=c_dtype, rounding=rounding,
        shape=shape, perm=draw(layouts(shape)), seed=draw(st.integers(0, 2 ** 31)),
        sr_seed=draw(st.integers(0, 2 ** 63 - 1)),
        p_how=draw(magnitudes(*PARAM_RANGE[dtype])), g_how=draw(magnitudes(*GRAD_RANGE[dtype])),
        g2_how=draw(magnitudes(*GRAD_RANGE[dtype])),
        m_how=draw(magnitudes(*GRAD_RANGE[m_dtype])),
        v_how=draw(magnitudes(*SQ_RANGE[v_dtype])),
        c_how=draw(magnitudes(*PARAM_RANGE[c_dtype])), step=draw(steps),
        lr=draw(lrs), beta1=draw(betas_), beta2=draw(betas_), eps=draw(epss),
        weight_decay=draw(weight_decays))


def _anyprecision_reference(p, perm, grad, state, step, case, hyper):
    """The reference step, computed on storage-order views (the random bits of
    stochastic rounding are indexed by the element's position in memory)."""
    so = lambda t: storage_order(t, perm)  # noqa: E731
    kahan = case["rounding"] == "kahan"
    c = so(state["compensation"] if kahan else torch.zeros_like(p, dtype=case["c_dtype"])).clone()
    bits = None
    if case["rounding"] == "stochastic":
        bits = rounding_bits(rounding_key(case["sr_seed"], 0, step), p.numel()).to(p.device)
    return anyprecision_step(so(p.detach()).clone(), so(grad), so(state["exp_avg"]).clone(),
                             so(state["exp_avg_sq"]).clone(), c, step, rounding=case["rounding"],
                             bits=bits, **hyper)


def _check_anyprecision(opt, p, perm, want, kahan, exact, what):
    st_ = opt.state[p]
    got = [p.detach(), st_["exp_avg"], st_["exp_avg_sq"]]
    names = ["param", "exp_avg", "exp_avg_sq"]
    if kahan:
        got.append(st_["compensation"])
        names.append("compensation")
    for name, g, w in zip(names, got, want):
        g = storage_order(g, perm)
        # CUDA may fuse a multiply-add: one rounding of the math (a few eps of the
        # operands' magnitude, taken as the result's own) on top of the dtype's
        assert_agrees(g, w, scale=w.double().abs(), rtol_math=8 * 2.0 ** -24,
                      what=f"{what}: {name}", exact=exact)


@fast(50)
@given(case=anyprecision_cases())
def test_anyprecision_matches_reference(device, cpu_isa, case):
    """Bit-exact on the CPU (every instruction set), as the example-based tests."""
    dtype, shape, perm = case["dtype"], case["shape"], case["perm"]
    gen = torch.Generator().manual_seed(case["seed"])
    n = math.prod(shape)
    kahan = case["rounding"] == "kahan"
    hyper = dict(lr=case["lr"], beta1=case["beta1"], beta2=case["beta2"], eps=case["eps"],
                 weight_decay=case["weight_decay"])
    p = torch.nn.Parameter(filled(shape, perm, dtype, device,
                                  draw_values(gen, n, case["p_how"], dtype, device)))
    opt = AnyPrecisionAdamW(
        [p], lr=hyper["lr"], betas=(hyper["beta1"], hyper["beta2"]), eps=hyper["eps"],
        weight_decay=hyper["weight_decay"], use_kahan_summation=kahan,
        momentum_dtype=case["m_dtype"], variance_dtype=case["v_dtype"],
        compensation_buffer_dtype=case["c_dtype"],
        rounding="stochastic" if case["rounding"] == "stochastic" else "nearest",
        seed=case["sr_seed"])
    exact = device.type == "cpu"
    zero_state = dict(exp_avg=torch.zeros_like(p, dtype=case["m_dtype"]),
                      exp_avg_sq=torch.zeros_like(p, dtype=case["v_dtype"]),
                      compensation=torch.zeros_like(p, dtype=case["c_dtype"]))
    grad = filled(shape, perm, dtype, device, draw_values(gen, n, case["g_how"], dtype, device))
    want = _anyprecision_reference(p, perm, grad, zero_state, 1, case, hyper)
    p.grad = grad
    opt.step()
    _check_anyprecision(opt, p, perm, want, kahan, exact, "step 1")

    t = case["step"]
    st_ = opt.state[p]
    st_["step"].fill_(t - 1)
    so_shape = storage_order(p, perm).shape
    storage_order(st_["exp_avg"], perm).copy_(
        draw_values(gen, n, case["m_how"], case["m_dtype"], device).reshape(so_shape))
    storage_order(st_["exp_avg_sq"], perm).copy_(
        draw_values(gen, n, case["v_how"], case["v_dtype"], device, positive=True)
        .reshape(so_shape))
    if kahan:
        storage_order(st_["compensation"], perm).copy_(
            draw_values(gen, n, case["c_how"], case["c_dtype"], device).reshape(so_shape)
            * torch.finfo(dtype).eps)  # what rounding a weight of that size drops
    grad = filled(shape, perm, dtype, device, draw_values(gen, n, case["g2_how"], dtype, device))
    want = _anyprecision_reference(p, perm, grad, st_, t, case, hyper)
    p.grad = grad
    opt.step()
    _check_anyprecision(opt, p, perm, want, kahan, exact, f"step {t}")
    assert st_["step"].item() == t


# ==================================================================== Adafactor

#: float32 states of g*g: |g| up to 1e16 keeps every float32 sum of squares finite
ADAFACTOR_GRAD_RANGE = {torch.float32: (-30, 16), torch.bfloat16: (-30, 16),
                        torch.float16: (-8, math.log10(65504))}


@st.composite
def adafactor_cases(draw, contiguous=True):
    dtype = draw(st.sampled_from(LOW_PRECISION))
    shape = draw(shapes())
    relative_step = draw(st.booleans())
    return dict(
        dtype=dtype, shape=shape, perm=tuple(range(len(shape))) if contiguous else
        draw(layouts(shape)), seed=draw(st.integers(0, 2 ** 31)),
        p_exp=draw(st.floats(*PARAM_RANGE[dtype])) if dtype == torch.float16 else
        draw(st.floats(-15, 15)),
        g_exp=draw(st.floats(*ADAFACTOR_GRAD_RANGE[dtype])),
        g2_exp=draw(st.floats(*ADAFACTOR_GRAD_RANGE[dtype])),
        state_spread=draw(st.floats(0, 6)), step=draw(steps),
        hyper=dict(
            lr=None if relative_step else draw(lrs),
            eps=(draw(st.one_of(st.just(1e-30), log_uniform(-30, -3))),
                 draw(st.one_of(st.just(1e-3), log_uniform(-8, 0)))),
            clip_threshold=draw(st.one_of(st.just(1.0), log_uniform(-3, 2))),
            decay_rate=draw(st.one_of(st.sampled_from([-0.8, 0.0, -1.0]), st.floats(-1.5, 0.0))),
            beta1=draw(st.one_of(st.none(), betas_)),
            weight_decay=draw(weight_decays),
            scale_parameter=draw(st.booleans()),
            relative_step=relative_step,
            warmup_init=relative_step and draw(st.booleans())))


def _gauss(gen, shape, exponent, dtype, device):
    return draw_values(gen, math.prod(shape), ("scale", exponent), dtype, "cpu").reshape(
        shape).to(device)


def _adafactor_check(opt, p, want_p, ref_state, p_before, what):
    dtype = p.dtype
    want = want_p.to(dtype)
    delta = (want_p - p_before.double()).abs()
    scale = p_before.double().abs() + (delta.max() if delta.numel() else 0.0)
    assert_agrees(p.detach().cpu(), want, scale=scale, rtol_math=2e-5, what=f"{what}: param")
    if not p.numel():
        return  # (the reference's means over an empty dim are NaN; the kernel's stay 0)
    got = opt.state[p]
    for key in ("exp_avg_sq_row", "exp_avg_sq_col", "exp_avg_sq", "exp_avg"):
        assert (key in got) == (key in ref_state), key
        if key in ref_state:
            w = ref_state[key]  # float64; the kernel's states are float32
            assert_agrees(got[key].cpu(), w.to(got[key].dtype), scale=w.abs().max(),
                          rtol_math=2e-5, what=f"{what}: {key}")


@fast(50)
@given(case=adafactor_cases())
def test_adafactor_matches_transformers_math(device, cpu_isa, case):
    dtype, shape, hyper = case["dtype"], case["shape"], case["hyper"]
    gen = torch.Generator().manual_seed(case["seed"])
    p = torch.nn.Parameter(_gauss(gen, shape, case["p_exp"], dtype, device))
    opt = Adafactor([p], **hyper)
    ref_state = new_state(p, hyper["beta1"])
    grad = _gauss(gen, shape, case["g_exp"], dtype, device)
    before = p.detach().cpu().clone()
    want = adafactor_step(before, grad.cpu(), ref_state, **hyper)
    p.grad = grad
    opt.step()
    _adafactor_check(opt, p, want, ref_state, before, "step 1")
    # The kernel sums p*p in float32 for RMS(p): beyond |p| ~ 1e19 that overflows where
    # float64 does not. Weight decay scaled by alpha = rho * RMS(p) (scale_parameter) can
    # multiply p by |1 - weight_decay*alpha| >> 1 each step, so a large p can leave the
    # float32 range within two steps: such runs diverge by their hyperparameters anyway.
    assume(want.abs().max().item() <= 1e17 if want.numel() else True)

    # step t from random positive second moments of about the size of g*g
    t = case["step"]
    st_ = opt.state[p]
    st_["step"].fill_(t - 1)
    g2 = (10.0 ** case["g2_exp"]) ** 2 + hyper["eps"][0]
    for key in ("exp_avg_sq_row", "exp_avg_sq_col", "exp_avg_sq"):
        if key in st_:
            spread = torch.rand(st_[key].shape, generator=gen, dtype=torch.float64)
            st_[key].copy_((g2 * 10.0 ** (case["state_spread"] * (2 * spread - 1))).float())
    if "exp_avg" in st_:
        st_["exp_avg"].copy_(torch.randn(st_["exp_avg"].shape, generator=gen) * 1e-2)
    ref_state = {k: (v.cpu().double() if k != "step" else t - 1) for k, v in st_.items()}
    grad = _gauss(gen, shape, case["g2_exp"], dtype, device)
    before = p.detach().cpu().clone()
    want = adafactor_step(before, grad.cpu(), ref_state, **hyper)
    p.grad = grad
    opt.step()
    _adafactor_check(opt, p, want, ref_state, before, f"step {t}")
    assert st_["step"].item() == t


@fast(30)
@given(case=adafactor_cases(contiguous=False))
def test_adafactor_layouts(device, case):
    """Factored (2+ dims) parameters must be row-major: a permuted layout is refused
    with a clear error before anything changes; 0-d and 1-d ones, and permutations
    that torch still calls contiguous (of size-1 dims), are updated."""
    dtype, shape, perm = case["dtype"], case["shape"], case["perm"]
    gen = torch.Generator().manual_seed(case["seed"])
    n = math.prod(shape)
    p = torch.nn.Parameter(filled(shape, perm, dtype, device,
                                  _gauss(gen, (n,), case["p_exp"], dtype, device)))
    grad = filled(shape, perm, dtype, device, _gauss(gen, (n,), case["g_exp"], dtype, device))
    before = p.detach().clone()
    p.grad = grad
    opt = Adafactor([p], **case["hyper"])
    if len(shape) >= 2 and not p.is_contiguous():
        with pytest.raises(RuntimeError, match=r"params\[0\] .*is not contiguous"):
            opt.step()
        assert torch.equal(p.detach(), before)
        assert opt.state[p]["step"].item() == 0
    else:
        ref_state = new_state(p, case["hyper"]["beta1"])
        want = adafactor_step(before.cpu(), grad.cpu(), ref_state, **case["hyper"])
        opt.step()
        _adafactor_check(opt, p, want, ref_state, before.cpu(), "step 1")


# ====================================================== grads/states of another layout


@st.composite
def mismatched_layouts(draw):
    shape = draw(shapes(min_dims=2))
    perm = draw(layouts(shape))
    other = draw(layouts(shape))
    return shape, perm, other


def _same_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    """The kernels' rule: strides agree on every dim longer than 1 (any strides do
    for an empty tensor: there is no element to walk)."""
    return a.numel() == 0 or all(a.stride(d) == b.stride(d) for d in range(a.dim())
                                 if a.size(d) > 1)


# the optimizers that update dense parameters of any layout (factored ones refuse
# all but row-major), in their configuration with the most states
ANY_LAYOUT = one_per_class(optims_with(KERNEL_OPTIMS, factored=False))


def _kernel_list(opt, key: str) -> str:
    """The kernel argument (a tensor list) that takes state ``key``."""
    rules = opt._state_lists(opt.param_groups[0])
    return next(name for name, rule in rules.items() if isinstance(rule, State) and rule.key == key)


@pytest.mark.parametrize("info, which", [
    (info, which) for info in ANY_LAYOUT
    for which in ["grad", *info.states(torch.empty(2, 2), info.kwargs)]],
    ids=lambda v: repr(v) if isinstance(v, OptimInfo) else v)
@fast(30)
@given(layout=mismatched_layouts(), dtype=st.sampled_from(LOW_PRECISION))
def test_grads_and_states_of_another_layout_are_refused(device, info, which, layout, dtype):
    """A grad (or each state) with the param's shape but other strides: refused with
    an error naming the tensor and both strides, nothing updated; the same layout works."""
    shape, perm, other = layout
    p = torch.nn.Parameter(empty_with_layout(shape, perm, dtype, device).normal_())
    opt = info.make([p])
    p.grad = empty_with_layout(shape, perm, dtype, device).normal_()
    opt.step()  # creates the states in the param's layout
    state_keys = [k for k in opt.state[p] if k != "step"]
    for k in state_keys:
        assert _same_layout(opt.state[p][k], p), k
    before = p.detach().clone()
    saved = {k: v.clone() for k, v in opt.state[p].items()}
    wrong = empty_with_layout(shape, other, dtype, device).normal_()
    if which == "grad":
        p.grad = wrong
        target = r"grads\[0\] has strides"
    else:
        key = which
        st_ = opt.state[p]
        st_[key] = empty_with_layout(shape, other, st_[key].dtype, device).copy_(st_[key])
        saved[key] = st_[key].clone()
        p.grad = empty_with_layout(shape, perm, dtype, device).normal_()
        target = _kernel_list(opt, key) + r"\[0\] has strides"
    if _same_layout(wrong, p):
        opt.step()
        assert opt.state[p]["step"].item() == 2
        return
    with pytest.raises(RuntimeError, match=target) as error:
        opt.step()
    assert str(tuple(p.stride())).replace(" ", "") in str(error.value).replace(" ", "") or \
        str(list(p.stride())).replace(" ", "") in str(error.value).replace(" ", "")
    assert torch.equal(p.detach(), before)
    for k, v in saved.items():
        assert torch.equal(opt.state[p][k], v), k


# ====================================================== hyperparameter validation

PARAMS = lambda: [torch.nn.Parameter(torch.randn(3))]  # noqa: E731

negative = st.floats(max_value=-1e-300, allow_nan=False, allow_infinity=False) | \
    st.sampled_from([-1e-300, -1.0, -math.inf])
not_finite = st.sampled_from([math.nan, math.inf, -math.inf])
outside_unit = st.one_of(st.floats(max_value=-1e-300, allow_infinity=False, allow_nan=False),
                         st.floats(min_value=1.0, allow_nan=False), not_finite)
non_positive = st.one_of(st.just(0.0), st.just(-0.0), negative, not_finite)
not_numbers = st.sampled_from(["abc", None, [1e-3], object(), "1e-3x"])


def _raises_naming(make, *names):
    with pytest.raises(ValueError) as error:
        make()
    message = str(error.value)
    assert any(n in message for n in names), message
    assert "\n" not in message


# the optimizers that take Adam's hyperparameters
ADAM_CLASSES = [info.cls for info in one_per_class() if {"lr", "betas", "eps", "weight_decay"}
                <= set(inspect.signature(info.cls).parameters)]


@fast(50)
@given(which=st.sampled_from(["lr", "beta1", "beta2", "eps", "weight_decay", "betas"]),
       value=st.data(), cls=st.sampled_from(ADAM_CLASSES))
def test_adam_hyperparameter_validation(which, value, cls):
    if which == "lr":
        lr = value.draw(st.one_of(negative, st.just(math.nan), st.just(math.inf), not_numbers))
        _raises_naming(lambda: cls(PARAMS(), lr=lr), "lr", "learning rate")
    elif which in ("beta1", "beta2"):
        beta = value.draw(st.one_of(outside_unit, not_numbers))
        betas = (beta, 0.999) if which == "beta1" else (0.9, beta)
        _raises_naming(lambda: cls(PARAMS(), betas=betas), which)
    elif which == "betas":
        betas = value.draw(st.one_of(st.lists(st.floats(0, 0.9), max_size=4).filter(
            lambda b: len(b) != 2), st.just(0.9), st.none(), st.just("0.9,0.99")))
        _raises_naming(lambda: cls(PARAMS(), betas=betas), "betas")
    elif which == "eps":
        eps = value.draw(st.one_of(non_positive, not_numbers))
        _raises_naming(lambda: cls(PARAMS(), eps=eps), "eps")
    else:
        wd = value.draw(st.one_of(negative, not_finite, not_numbers))
        _raises_naming(lambda: cls(PARAMS(), weight_decay=wd), "weight_decay")


@fast(50)
@given(valid=st.fixed_dictionaries(dict(
    lr=lrs, beta1=betas_, beta2=betas_, eps=epss, weight_decay=weight_decays)),
    cls=st.sampled_from(ADAM_CLASSES))
def test_adam_valid_hyperparameters_are_accepted(valid, cls):
    cls(PARAMS(), lr=valid["lr"], betas=(valid["beta1"], valid["beta2"]), eps=valid["eps"],
        weight_decay=valid["weight_decay"])
    # a one-element tensor lr too (a scheduler updates it in place)
    cls(PARAMS(), lr=torch.tensor(valid["lr"]))


@fast(30)
@given(lr=st.one_of(negative, not_finite, st.just(torch.tensor([1e-3, 1e-3]))),
       cls=st.sampled_from(ADAM_CLASSES))
def test_adam_tensor_lr_validation(lr, cls):
    lr = lr if isinstance(lr, torch.Tensor) else torch.tensor(lr, dtype=torch.float64)
    _raises_naming(lambda: cls(PARAMS(), lr=lr), "lr", "learning rate")


state_dtype_names = ["momentum_dtype", "variance_dtype", "compensation_buffer_dtype"]


@fast(40)
@given(which=st.sampled_from(state_dtype_names),
       value=st.one_of(st.sampled_from([torch.float64, torch.int8, torch.int32, torch.complex64,
                                        torch.bool, torch.uint8]),
                       st.sampled_from(["float64", "fp16", "bf16", "half", "float8", "", "torch.",
                                        None, 16, 3.5, "float32x"]),
                       st.text(max_size=12).filter(
                           lambda s: s.strip().removeprefix("torch.") not in
                           ("float32", "bfloat16", "float16"))))
def test_anyprecision_state_dtype_validation(which, value):
    with pytest.raises(ValueError) as error:
        AnyPrecisionAdamW(PARAMS(), **{which: value})
    message = str(error.value)
    assert which in message and "float32, bfloat16, float16" in message


@fast(20)
@given(which=st.sampled_from(state_dtype_names),
       value=st.sampled_from([torch.float32, torch.bfloat16, torch.float16, "float32",
                              "bfloat16", "float16", "torch.bfloat16", " float16 "]))
def test_anyprecision_state_dtype_spellings_are_accepted(which, value):
    expected = value if isinstance(value, torch.dtype) else getattr(
        torch, value.strip().removeprefix("torch."))
    p = torch.nn.Parameter(torch.randn(3))
    opt = AnyPrecisionAdamW([p], use_kahan_summation=True, **{which: value})
    # (the group may keep the dtype or its name; the state has the dtype)
    assert resolve_state_dtype(which, opt.param_groups[0][which]) == expected
    p.grad = torch.randn(3)
    opt.step()
    key = {"momentum_dtype": "exp_avg", "variance_dtype": "exp_avg_sq",
           "compensation_buffer_dtype": "compensation"}[which]
    assert opt.state[p][key].dtype == expected


@fast(40)
@given(kwargs=st.one_of(
    st.fixed_dictionaries({"seed": st.one_of(st.integers(max_value=-1),
                                             st.integers(min_value=2 ** 63),
                                             st.sampled_from([True, 1.0, "3", None]))}),
    st.fixed_dictionaries({"rounding": st.text(max_size=12).filter(
        lambda s: s not in ("nearest", "stochastic"))}),
    st.fixed_dictionaries({"use_kahan_summation": st.sampled_from([1, 0, "true", None, 1.0])})))
def test_anyprecision_other_argument_validation(kwargs):
    (name,) = kwargs
    _raises_naming(lambda: AnyPrecisionAdamW(PARAMS(), **kwargs), name)


@fast(20)
@given(dtype=st.sampled_from([torch.float64, torch.int64, torch.complex64]),
       info=st.sampled_from(one_per_class()))
def test_unsupported_param_dtypes_are_refused_at_construction(dtype, info):
    assume(dtype not in info.dtypes)
    p = torch.zeros(3, dtype=dtype)
    supported = ", ".join(str(d).removeprefix("torch.") for d in info.dtypes)
    with pytest.raises(ValueError, match=r"(complex|dtype).*supported dtypes: " + supported):
        info.cls([p])


@fast(50)
@given(which=st.sampled_from(["lr", "eps0", "eps1", "eps_pair", "clip_threshold", "decay_rate",
                              "beta1", "weight_decay"]),
       value=st.data())
def test_adafactor_hyperparameter_validation(which, value):
    if which == "lr":
        lr = value.draw(st.one_of(negative, st.sampled_from([math.nan, math.inf])))
        _raises_naming(lambda: Adafactor(PARAMS(), lr=lr, relative_step=False), "lr",
                       "learning rate")
    elif which in ("eps0", "eps1"):
        bad = value.draw(st.one_of(negative, not_finite))
        eps = (bad, 1e-3) if which == "eps0" else (1e-30, bad)
        _raises_naming(lambda: Adafactor(PARAMS(), eps=eps),
                       "eps[0]" if which == "eps0" else "eps[1]")
    elif which == "eps_pair":
        eps = value.draw(st.one_of(st.lists(st.floats(0, 1), max_size=4).filter(
            lambda e: len(e) != 2), st.just(1e-30), st.none()))
        _raises_naming(lambda: Adafactor(PARAMS(), eps=eps), "eps")
    elif which == "clip_threshold":
        clip = value.draw(st.one_of(st.just(0.0), negative, st.just(math.nan)))
        _raises_naming(lambda: Adafactor(PARAMS(), clip_threshold=clip), "clip_threshold")
    elif which == "decay_rate":
        rate = value.draw(st.one_of(st.floats(min_value=1e-300, allow_nan=False),
                                    st.just(math.nan)))
        _raises_naming(lambda: Adafactor(PARAMS(), decay_rate=rate), "decay_rate")
    elif which == "beta1":
        beta = value.draw(outside_unit)
        _raises_naming(lambda: Adafactor(PARAMS(), beta1=beta), "beta1")
    else:
        wd = value.draw(st.one_of(negative, not_finite))
        _raises_naming(lambda: Adafactor(PARAMS(), weight_decay=wd), "weight_decay")


@fast(30)
@given(lr=st.one_of(st.none(), lrs), relative_step=st.booleans(), warmup_init=st.booleans())
def test_adafactor_step_size_options(lr, relative_step, warmup_init):
    """The three step-size options are either consistent or refused with a message
    naming the conflicting options."""
    make = lambda: Adafactor(PARAMS(), lr=lr, relative_step=relative_step,  # noqa: E731
                             warmup_init=warmup_init)
    consistent = (lr is None) == relative_step and (relative_step or not warmup_init)
    if consistent:
        make()
    else:
        _raises_naming(make, "relative_step", "warmup_init")


@pytest.mark.parametrize("kwargs, name", [
    (dict(clip_threshold="abc"), "clip_threshold"),
    (dict(clip_threshold=None), "clip_threshold"),
    (dict(decay_rate="fast"), "decay_rate"),
    (dict(eps=("tiny", 1e-3)), "eps[0]"),
])
def test_adafactor_non_numbers_name_the_argument(kwargs, name):
    with pytest.raises(ValueError) as error:
        Adafactor(PARAMS(), **kwargs)
    if name not in str(error.value):
        raise ValueError(f"the message does not name {name}: {error.value}")


def test_adafactor_first_moment_with_beta1_near_one(device):
    """1 - beta1 computed in float64: for beta1 = 0.9999999 a float32 subtraction
    gives 1.19e-7 instead of 1e-7, 19% off transformers (a bug this file found)."""
    p = torch.nn.Parameter(torch.ones(4, device=device))
    p.grad = torch.ones(4, device=device)
    hyper = dict(lr=1e-2, relative_step=False, scale_parameter=False, beta1=0.9999999)
    opt = Adafactor([p], **hyper)
    ref_state = new_state(p, hyper["beta1"])
    adafactor_step(p.detach().cpu(), p.grad.cpu(), ref_state, **hyper)
    opt.step()
    torch.testing.assert_close(opt.state[p]["exp_avg"].cpu().double(), ref_state["exp_avg"],
                               rtol=1e-5, atol=0)
