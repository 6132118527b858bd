"""The state each optimizer keeps per parameter is what its design says, and no more.

- FusedAdamW: ``exp_avg`` and ``exp_avg_sq`` (plus ``max_exp_avg_sq`` with amsgrad),
  each of the parameter's shape, dtype and layout, plus a 0-d float32 ``step``.
- AnyPrecisionAdamW: ``exp_avg`` in ``momentum_dtype`` and ``exp_avg_sq`` in
  ``variance_dtype`` (plus ``compensation`` in ``compensation_buffer_dtype`` with
  Kahan summation; stochastic rounding keeps nothing extra), plus ``step``.
- Adafactor: for a parameter of 2+ dims, ``exp_avg_sq_row`` (shape[:-1]) and
  ``exp_avg_sq_col`` (shape[:-2] + shape[-1:]) in float32, i.e. rows + cols values
  for a matrix; a full float32 ``exp_avg_sq`` for 0-d and 1-d ones; plus the full
  float32 ``exp_avg`` with beta1; plus ``step``.

Memory is counted as the bytes of the storages the state tensors hold (so a state
that is a view of a larger buffer, or two states sharing one, would show), and is
checked after several steps (nothing grows) and after a state_dict round trip.
"""
from __future__ import annotations

import io
import math
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytrainer import ops
from pytrainer.optim import Adafactor, AnyPrecisionAdamW, FusedAdamW
from tests.optim_db import one_per_class, optims, state_bytes

pytestmark = pytest.mark.skipif(not ops.available(), reason="compiled kernels not built")

_COMMON = dict(derandomize=True, database=None, deadline=None, print_blob=False,
               suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


#: PYTRAINER_HYPOTHESIS_SCALE=10 runs ten times the examples (still derandomized)
_SCALE = float(os.environ.get("PYTRAINER_HYPOTHESIS_SCALE", "1"))


def fast(max_examples: int):
    return settings(max_examples=max(1, round(max_examples * _SCALE)), **_COMMON)


LOW_PRECISION = [torch.float32, torch.bfloat16, torch.float16]


@st.composite
def shapes(draw, max_numel: int = 2000):
    """0-d, empty, one element, odd sizes, 1-4 dims."""
    ndim = draw(st.integers(0, 4))
    dims, numel = [], 1
    for _ in range(ndim):
        size = draw(st.integers(0, max(1, min(41, max_numel // max(numel, 1)))))
        dims.append(size)
        numel *= max(size, 1)
    return tuple(dims)


@st.composite
def params(draw, dtypes, device, any_layout=True):
    shape = draw(shapes())
    perm = tuple(draw(st.permutations(range(len(shape))))) if any_layout and shape else \
        tuple(range(len(shape)))
    dtype = draw(st.sampled_from(dtypes))
    base = torch.randn([shape[d] for d in perm], device=device).to(dtype)
    return torch.nn.Parameter(base.permute([perm.index(d) for d in range(len(shape))]))


def storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind ``tensors``."""
    seen = {}
    for t in tensors:
        storage = t.untyped_storage()
        seen[storage.data_ptr(), storage.nbytes()] = storage.nbytes()
    return sum(seen.values())


def state_tensors(opt, p) -> dict[str, torch.Tensor]:
    return {k: v for k, v in opt.state[p].items() if k != "step"}


def check_step(opt, p, steps: int) -> None:
    step = opt.state[p]["step"]
    assert step.dim() == 0 and step.dtype == torch.float32 and step.device == p.device
    assert step.item() == steps


def same_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    return all(a.stride(d) == b.stride(d) for d in range(a.dim()) if a.size(d) > 1)


def train(opt, ps, steps: int = 3) -> None:
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        for p in ps:
            p.grad = torch.empty_like(p).copy_(
                torch.randn(p.shape, generator=gen).to(p.dtype))
        opt.step()


def reloaded(cls, opt, ps, **kwargs):
    """A new optimizer of ``cls`` on ``ps`` with ``opt``'s state, through a
    weights_only checkpoint."""
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    new = cls(ps, **kwargs)
    new.load_state_dict(torch.load(buffer, weights_only=True, map_location="cpu"))
    return new


def assert_memory(opt, p, expected: dict[str, tuple[tuple[int, ...], torch.dtype]],
                  full_size: set[str]):
    """The states are exactly ``expected`` (shape and dtype per key), on p's device,
    each (p is its optimizer's only parameter here) in a storage of exactly its
    size; ``full_size`` ones in p's layout."""
    states = state_tensors(opt, p)
    assert set(states) == set(expected)
    for key, (shape, dtype) in expected.items():
        t = states[key]
        assert tuple(t.shape) == shape, key
        assert t.dtype == dtype, key
        assert t.device == p.device, key
        if key in full_size:
            assert same_layout(t, p), (key, t.stride(), p.stride())
        else:
            assert t.is_contiguous(), key
        assert t.untyped_storage().nbytes() == t.numel() * t.element_size(), key
        assert t.untyped_storage().data_ptr() != p.untyped_storage().data_ptr() or \
            t.numel() == 0, key
    assert storage_bytes(states.values()) == sum(
        math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        for shape, dtype in expected.values())


# ------------------------------------------------------------------ FusedAdamW


@fast(40)
@given(data=st.data(), amsgrad=st.booleans())
def test_fused_adamw_keeps_two_tensors_of_the_param_size(device, data, amsgrad):
    p = data.draw(params([torch.float32, torch.float64, torch.float16, torch.bfloat16], device))
    idle = torch.nn.Parameter(torch.randn(7, device=device))  # no grad: no state
    opt = FusedAdamW([p, idle], lr=1e-3, amsgrad=amsgrad)
    assert not opt.state  # nothing before the first step
    train(opt, [p], steps=3)
    keys = ["exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if amsgrad else [])
    expected = {k: (tuple(p.shape), p.dtype) for k in keys}
    assert_memory(opt, p, expected, set(keys))
    assert storage_bytes(state_tensors(opt, p).values()) == \
        len(keys) * p.numel() * p.element_size()
    check_step(opt, p, 3)
    assert idle not in opt.state or not opt.state[idle]
    again = reloaded(FusedAdamW, opt, [p, idle], lr=1e-3, amsgrad=amsgrad)
    assert_memory(again, p, expected, set(keys))
    check_step(again, p, 3)


# ----------------------------------------------------------- AnyPrecisionAdamW


@fast(40)
@given(data=st.data(), dtypes=st.tuples(*[st.sampled_from(LOW_PRECISION)] * 3),
       mode=st.sampled_from(["nearest", "kahan", "stochastic"]))
def test_anyprecision_keeps_its_states_in_the_configured_dtypes(device, data, dtypes, mode):
    p = data.draw(params(LOW_PRECISION, device))
    m_dtype, v_dtype, c_dtype = dtypes
    kwargs = dict(lr=1e-3, momentum_dtype=m_dtype, variance_dtype=v_dtype,
                  compensation_buffer_dtype=c_dtype, use_kahan_summation=mode == "kahan",
                  rounding="stochastic" if mode == "stochastic" else "nearest")
    opt = AnyPrecisionAdamW([p], **kwargs)
    train(opt, [p])
    expected = {"exp_avg": (tuple(p.shape), m_dtype), "exp_avg_sq": (tuple(p.shape), v_dtype)}
    if mode == "kahan":
        expected["compensation"] = (tuple(p.shape), c_dtype)
    assert_memory(opt, p, expected, set(expected))
    check_step(opt, p, 3)
    again = reloaded(AnyPrecisionAdamW, opt, [p], **kwargs)
    assert_memory(again, p, expected, set(expected))


@pytest.mark.parametrize("m_dtype, v_dtype, bytes_per_element", [
    (torch.float32, torch.float32, 8), (torch.bfloat16, torch.bfloat16, 4),
    (torch.float32, torch.bfloat16, 6)])
def test_anyprecision_16bit_states_halve_the_memory(device, m_dtype, v_dtype,
                                                     bytes_per_element):
    p = torch.nn.Parameter(torch.randn(64, 33, device=device, dtype=torch.bfloat16))
    opt = AnyPrecisionAdamW([p], momentum_dtype=m_dtype, variance_dtype=v_dtype)
    train(opt, [p], steps=1)
    assert storage_bytes(state_tensors(opt, p).values()) == bytes_per_element * p.numel()


# -------------------------------------------------------------------- Adafactor


def adafactor_expected(p, beta1):
    shape = tuple(p.shape)
    if p.dim() >= 2:
        expected = {"exp_avg_sq_row": (shape[:-1], torch.float32),
                    "exp_avg_sq_col": (shape[:-2] + shape[-1:], torch.float32)}
    else:
        expected = {"exp_avg_sq": (shape, torch.float32)}
    if beta1 is not None:
        expected["exp_avg"] = (shape, torch.float32)
    return expected


@fast(40)
@given(data=st.data(), beta1=st.one_of(st.none(), st.just(0.9)))
def test_adafactor_keeps_factored_second_moments(device, data, beta1):
    p = data.draw(params(LOW_PRECISION, device, any_layout=False))
    opt = Adafactor([p], beta1=beta1)
    train(opt, [p])
    expected = adafactor_expected(p, beta1)
    assert_memory(opt, p, expected, {"exp_avg", "exp_avg_sq"})
    check_step(opt, p, 3)
    floats = sum(t.numel() for t in state_tensors(opt, p).values())
    extra = p.numel() if beta1 is not None else 0
    if p.dim() >= 2:
        rows, cols = p.shape[-2], p.shape[-1]
        batch = math.prod(p.shape[:-2])
        assert floats == batch * (rows + cols) + extra
    else:
        assert floats == p.numel() + extra
    again = reloaded(Adafactor, opt, [p], beta1=beta1)
    assert_memory(again, p, expected, {"exp_avg", "exp_avg_sq"})


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_adafactor_16bit_states_survive_a_reload(device, dtype):
    """torch.optim casts loaded states to the param dtype; Adafactor's float32
    states must come back float32 (a bug the property tests found)."""
    ps = [torch.nn.Parameter(torch.randn(6, 5, device=device).to(dtype)),
          torch.nn.Parameter(torch.randn(7, device=device).to(dtype))]
    opt = Adafactor(ps, beta1=0.9)
    train(opt, ps, steps=1)
    again = reloaded(Adafactor, opt, ps, beta1=0.9)
    for p in ps:
        assert_memory(again, p, adafactor_expected(p, 0.9), {"exp_avg", "exp_avg_sq"})
    train(again, ps, steps=1)


@pytest.mark.parametrize("shape", [(300, 70), (1, 4096), (4096, 1), (8, 16, 32), (2, 3, 4, 5)])
def test_adafactor_matrix_state_is_a_small_fraction(device, shape):
    p = torch.nn.Parameter(torch.randn(shape, device=device))
    opt = Adafactor([p])
    train(opt, [p], steps=1)
    floats = sum(t.numel() for t in state_tensors(opt, p).values())
    batch = math.prod(shape[:-2])
    assert floats == batch * (shape[-2] + shape[-1])
    assert floats < p.numel() or p.numel() <= shape[-2] + shape[-1]


@optims(one_per_class())
def test_states_are_created_only_for_params_with_grads(device, info):
    ps = [torch.nn.Parameter(torch.randn(5, 4, device=device)) for _ in range(3)]
    opt = info.make(ps)
    ps[1].grad = torch.randn_like(ps[1])
    opt.step()
    assert [bool(opt.state.get(p)) for p in ps] == [False, True, False], info.name


@optims()
@pytest.mark.parametrize("shape", [(), (0,), (7,), (6, 5), (2, 3, 4)], ids=str)
def test_states_are_exactly_those_the_database_declares(device, info, shape):
    """Every optimizer, every dtype: after two steps and after a reload, the states
    of a parameter are the declared ones, each in a storage of its own size."""
    for dtype in info.dtypes:
        p = torch.nn.Parameter(torch.randn(shape, device=device).to(dtype))
        idle = torch.nn.Parameter(torch.randn(3, device=device).to(dtype))  # no grad: no state
        opt = info.make([p, idle])
        train(opt, [p], steps=2)
        expected = info.states(p, info.kwargs)
        full_size = {key for key, (s, _) in expected.items() if s == tuple(p.shape)}
        assert_memory(opt, p, expected, full_size)
        assert storage_bytes(state_tensors(opt, p).values()) == state_bytes(info, p)
        assert int(opt.state[p]["step"]) == 2
        assert not opt.state.get(idle)
        again = reloaded(info.cls, opt, [p, idle], **info.kwargs)
        assert_memory(again, p, expected, full_size)
        assert int(again.state[p]["step"]) == 2


def test_states_of_a_group_share_one_buffer_per_kind_without_waste():
    """Contiguous params get views of one buffer per state: the group's states
    take exactly two (three with amsgrad) times the params' bytes, in 2 (3) storages."""
    ps = [torch.nn.Parameter(torch.randn(n)) for n in (5, 17, 300)] + \
        [torch.nn.Parameter(torch.randn(4, 6).t())]  # not contiguous: its own state
    for amsgrad, kinds in ((False, 2), (True, 3)):
        opt = FusedAdamW(ps, amsgrad=amsgrad)
        train(opt, ps, steps=1)
        tensors = [t for p in ps for t in state_tensors(opt, p).values()]
        assert storage_bytes(tensors) == kinds * sum(p.numel() * 4 for p in ps)
        assert len({t.untyped_storage().data_ptr() for t in tensors}) == kinds + kinds
        for p in ps:
            assert all(same_layout(t, p) for t in state_tensors(opt, p).values())
