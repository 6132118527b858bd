"""AnyPrecisionAdamW against the plain-PyTorch reference, and why it exists."""
from __future__ import annotations

import io
import itertools

import pytest
import torch

from pytrainer import ops
from pytrainer.optim import AnyPrecisionAdamW
from pytrainer.optim.registry import OptimizerConfig, build_optimizer
from tests.helpers import random_like_param, rounding_tolerance
from tests.reference.anyprecision import (TorchdistxAnyPrecisionAdamW, anyprecision_step,
                                          rounding_bits, rounding_key, stochastic_round)

pytestmark = pytest.mark.skipif(not ops.available(), reason="compiled kernels not built")

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
SHAPES = [(), (1,), (0,), (37,), (129, 3), (2, 3, 19), (20_011,)]
HYPER = dict(lr=3e-3, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.02)
NAMES = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}


def _ids(dtypes):
    return "-".join(NAMES[d] for d in dtypes)


def make_params(device, dtype, shapes=SHAPES):
    return [torch.nn.Parameter(random_like_param(s, dtype, device)) for s in shapes]


def teacher_forced(device, param_dtype, m_dtype, v_dtype, c_dtype, rounding, steps=50,
                   shapes=SHAPES, seed=7, grad_scale=1.0):
    """Runs the optimizer `steps` steps; before each, computes the reference step
    from the optimizer's current state, and checks every stored tensor after it."""
    params = make_params(device, param_dtype, shapes)
    kahan = rounding == "kahan"
    opt = AnyPrecisionAdamW(params, lr=HYPER["lr"], betas=(HYPER["beta1"], HYPER["beta2"]),
                            eps=HYPER["eps"], weight_decay=HYPER["weight_decay"],
                            use_kahan_summation=kahan, momentum_dtype=m_dtype,
                            variance_dtype=v_dtype, compensation_buffer_dtype=c_dtype,
                            rounding="stochastic" if rounding == "stochastic" else "nearest",
                            seed=seed)
    exact = device.type == "cpu"
    for step in range(1, steps + 1):
        expected = []
        for index, p in enumerate(params):
            p.grad = random_like_param(p.shape, param_dtype, device)
            st = opt.state[p]
            m = st["exp_avg"].clone() if st else torch.zeros_like(p, dtype=m_dtype)
            v = st["exp_avg_sq"].clone() if st else torch.zeros_like(p, dtype=v_dtype)
            c = st["compensation"].clone() if st and kahan else torch.zeros_like(p, dtype=c_dtype)
            bits = None
            if rounding == "stochastic":
                bits = rounding_bits(rounding_key(seed, index, step), p.numel()).to(device)
            expected.append(anyprecision_step(p.detach().clone(), p.grad, m, v, c, step,
                                              rounding=rounding, bits=bits, **HYPER))
        opt.step()
        for p, (ep, em, ev, ec) in zip(params, expected):
            st = opt.state[p]
            pairs = [(p.detach(), ep), (st["exp_avg"], em), (st["exp_avg_sq"], ev)]
            if kahan:
                pairs.append((st["compensation"], ec))
            for got, want in pairs:
                assert got.dtype == want.dtype
                if exact:
                    torch.testing.assert_close(got, want, rtol=0, atol=0)
                else:  # CUDA may fuse a multiply-add: one rounding of the dtype
                    torch.testing.assert_close(got, want, **rounding_tolerance(got.dtype))
    return opt, params


@pytest.mark.parametrize("param_dtype", DTYPES, ids=NAMES.get)
@pytest.mark.parametrize("state_dtypes", list(itertools.product(DTYPES, DTYPES)), ids=_ids)
def test_nearest_every_dtype_combination_50_steps(device, param_dtype, state_dtypes):
    teacher_forced(device, param_dtype, *state_dtypes, torch.bfloat16, "nearest")


@pytest.mark.parametrize("param_dtype", DTYPES, ids=NAMES.get)
@pytest.mark.parametrize("state_dtypes", list(itertools.product(DTYPES, DTYPES, DTYPES)), ids=_ids)
def test_kahan_every_dtype_combination_50_steps(device, param_dtype, state_dtypes):
    teacher_forced(device, param_dtype, *state_dtypes, "kahan")


@pytest.mark.parametrize("param_dtype", DTYPES, ids=NAMES.get)
def test_stochastic_rounding_matches_reference(device, param_dtype):
    teacher_forced(device, param_dtype, torch.float32, torch.bfloat16, torch.bfloat16,
                   "stochastic", steps=20)


@pytest.mark.parametrize("rounding", ["nearest", "kahan", "stochastic"])
@pytest.mark.parametrize("param_dtype", [torch.bfloat16, torch.float16], ids=NAMES.get)
def test_every_cpu_instruction_set(cpu_isa, rounding, param_dtype):
    teacher_forced(torch.device("cpu"), param_dtype, torch.float32, torch.bfloat16,
                   torch.bfloat16, rounding, steps=10)


def test_grad_scale_divides_the_grads(device):
    p = make_params(device, torch.bfloat16, [(333,)])
    q = [torch.nn.Parameter(p[0].detach().clone())]
    a = AnyPrecisionAdamW(p, lr=1e-2, use_kahan_summation=True)
    b = AnyPrecisionAdamW(q, lr=1e-2, use_kahan_summation=True)
    for _ in range(3):
        g = random_like_param((333,), torch.bfloat16, device)
        p[0].grad = (g.float() * 1024).bfloat16()
        q[0].grad = g.clone()
        a.grad_scale = torch.tensor(1024.0, device=device)
        a.step()
        del a.grad_scale
        b.step()
    assert torch.equal(p[0].detach(), q[0].detach())


def test_grad_scaler_skips_inf_steps(device):
    # torch's CUDA GradScaler checks float16 grads, not bfloat16 ones
    dtype = torch.bfloat16 if device.type == "cpu" else torch.float16
    model = torch.nn.Linear(8, 4).to(device=device, dtype=dtype)
    opt = AnyPrecisionAdamW(model.parameters(), lr=1e-2, use_kahan_summation=True)
    scaler = torch.amp.GradScaler(device.type, init_scale=128.0)
    x = torch.randn(16, 8, device=device, dtype=dtype)
    scaler.scale(model(x).float().pow(2).mean()).backward()
    scaler.step(opt)
    scaler.update()
    opt.zero_grad()
    before = [p.detach().clone() for p in model.parameters()]
    states = [{k: v.clone() for k, v in opt.state[p].items()} for p in model.parameters()]
    scaler.scale(model(x).float().pow(2).mean()).backward()
    model.weight.grad[0, 0] = float("nan")
    scaler.step(opt)
    for p, b, st in zip(model.parameters(), before, states):
        assert torch.equal(p.detach(), b)
        for key, value in st.items():
            assert torch.equal(opt.state[p][key], value), key


# ------------------------------------------------------------------ stochastic rounding


def _run_stochastic(seed, device="cpu", steps=5):
    start = torch.randn(5000, generator=torch.Generator().manual_seed(0))
    p = torch.nn.Parameter(start.to(device).bfloat16())
    opt = AnyPrecisionAdamW([p], lr=1e-4, rounding="stochastic", seed=seed)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        p.grad = torch.randn(5000, generator=gen).to(device).bfloat16()
        opt.step()
    return p.detach().clone()


def test_stochastic_rounding_is_reproducible_from_the_seed(device):
    a, b, c = _run_stochastic(3, device), _run_stochastic(3, device), _run_stochastic(4, device)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.cuda
def test_stochastic_rounding_is_the_same_on_every_device():
    if not (torch.cuda.is_available() and ops.has_kernels("cuda")):
        pytest.skip("needs CUDA")
    assert torch.equal(_run_stochastic(5, "cpu"), _run_stochastic(5, "cuda").cpu())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=NAMES.get)
def test_stochastic_rounding_is_unbiased(dtype):
    x = torch.full((200_000,), 1.0 + 2.0 ** -9)  # 1/4 (bf16) or 4 ulp (fp16) past 1.0
    bits = rounding_bits(rounding_key(11, 0, 1), x.numel())
    rounded = stochastic_round(x, dtype, bits).float()
    neighbours = torch.unique(rounded)
    assert len(neighbours) <= 2
    assert abs(rounded.mean().item() - x[0].item()) < 2e-5


# ------------------------------------------------------------------ the feature matters


def _regression(seed=0, n=512, d=16):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen)
    # weights in [1, 2), where a bfloat16 ulp is 1/128
    w_true = (1.5 + 0.15 * torch.randn(d, generator=gen)).clamp(1.05, 1.95)
    y = x @ w_true + 0.5 * torch.randn(n, generator=gen)
    w0 = w_true + 0.05 * torch.randn(d, generator=gen)
    return x, y, w0


def _train(make_opt, dtype, steps=300):
    x, y, w0 = _regression()
    w = torch.nn.Parameter(w0.to(dtype))
    opt = make_opt([w])
    for _ in range(steps):
        opt.zero_grad()
        loss = ((x.to(dtype) @ w).float() - y).pow(2).mean()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return ((x @ w.float()) - y).pow(2).mean().item()


def test_kahan_and_stochastic_rounding_recover_what_plain_bf16_loses():
    """lr * update (1e-3) is below half an ulp of the bf16 weights (1/256): plain
    bf16 updates stall, Kahan summation and stochastic rounding train like float32."""
    lr = 1e-3
    fp32 = _train(lambda ps: torch.optim.AdamW(ps, lr=lr, weight_decay=0.0), torch.float32)
    plain = _train(lambda ps: AnyPrecisionAdamW(ps, lr=lr), torch.bfloat16)
    kahan = _train(lambda ps: AnyPrecisionAdamW(ps, lr=lr, use_kahan_summation=True),
                   torch.bfloat16)
    stochastic = _train(lambda ps: AnyPrecisionAdamW(ps, lr=lr, rounding="stochastic", seed=1),
                        torch.bfloat16)
    assert abs(kahan - fp32) <= 0.01 * fp32, (kahan, fp32)
    assert abs(stochastic - fp32) <= 0.01 * fp32, (stochastic, fp32)
    assert plain > 1.05 * fp32, (plain, fp32)


# ------------------------------------------------------------------ state and anchors


def test_state_dicts_from_before_dtype_names_still_load():
    """Older state dicts (and torchdistx's) hold torch.dtype objects in the groups."""
    p = torch.nn.Parameter(torch.randn(5).bfloat16())
    p.grad = torch.randn_like(p)
    opt = AnyPrecisionAdamW([p], use_kahan_summation=True)
    opt.step()
    state = opt.state_dict()
    state["param_groups"][0]["momentum_dtype"] = torch.float16
    fresh = AnyPrecisionAdamW([p], use_kahan_summation=True)
    fresh.load_state_dict(state)
    assert fresh.state[p]["exp_avg"].dtype == torch.float16
    fresh.step()


def test_state_dict_round_trip_keeps_state_dtypes_and_compensation(device):
    params = make_params(device, torch.bfloat16, [(64,), (7, 5)])
    twin = [torch.nn.Parameter(p.detach().clone()) for p in params]
    kw = dict(lr=1e-3, use_kahan_summation=True, momentum_dtype=torch.float32,
              variance_dtype=torch.float16, compensation_buffer_dtype=torch.float32)
    a, b = AnyPrecisionAdamW(params, **kw), AnyPrecisionAdamW(twin, **kw)
    gen = torch.Generator().manual_seed(0)
    grads = [[torch.randn(p.shape, generator=gen).bfloat16().to(device) for p in params]
             for _ in range(10)]
    for step in range(10):
        for p, q, g in zip(params, twin, grads[step]):
            p.grad, q.grad = g.clone(), g.clone()
        a.step()
        if step == 4:
            buf = io.BytesIO()
            torch.save(b.state_dict(), buf)
            buf.seek(0)
            b = AnyPrecisionAdamW(twin, lr=0.5)  # settings come back from the state dict
            b.load_state_dict(torch.load(buf, weights_only=True, map_location="cpu"))
            for q in twin:
                st = b.state[q]
                assert (st["exp_avg"].dtype, st["exp_avg_sq"].dtype, st["compensation"].dtype) \
                    == (torch.float32, torch.float16, torch.float32)
                assert st["step"].device == q.device
            assert b.param_groups[0]["lr"] == 1e-3
        b.step()
    for p, q in zip(params, twin):
        assert torch.equal(p.detach(), q.detach())
        assert torch.equal(a.state[p]["compensation"], b.state[q]["compensation"])


def test_float32_states_match_torchdistx_loop():
    params = make_params(torch.device("cpu"), torch.float32, [(100,), (10, 10)])
    twin = [torch.nn.Parameter(p.detach().clone()) for p in params]
    kw = dict(lr=1e-2, weight_decay=0.1, momentum_dtype=torch.float32,
              variance_dtype=torch.float32)
    a, b = AnyPrecisionAdamW(params, **kw), TorchdistxAnyPrecisionAdamW(twin, **kw)
    for _ in range(30):
        for p, q in zip(params, twin):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        a.step()
        b.step()
    for p, q in zip(params, twin):
        torch.testing.assert_close(p, q)


# ------------------------------------------------------------------ bad input


def test_unknown_state_dtype_lists_the_valid_ones():
    with pytest.raises(ValueError, match="float32, bfloat16, float16"):
        AnyPrecisionAdamW([torch.nn.Parameter(torch.randn(3))], momentum_dtype="float8")
    with pytest.raises(ValueError, match="variance_dtype"):
        AnyPrecisionAdamW([torch.nn.Parameter(torch.randn(3))], variance_dtype=torch.int8)


def test_kahan_and_stochastic_together_is_an_error():
    with pytest.raises(ValueError, match="choose one"):
        AnyPrecisionAdamW([torch.nn.Parameter(torch.randn(3))], use_kahan_summation=True,
                          rounding="stochastic")


def test_unknown_rounding_is_an_error():
    with pytest.raises(ValueError, match="nearest, stochastic"):
        AnyPrecisionAdamW([torch.nn.Parameter(torch.randn(3))], rounding="stochastik")


def test_float64_params_rejected():
    with pytest.raises(ValueError, match="float64"):
        AnyPrecisionAdamW([torch.nn.Parameter(torch.randn(3, dtype=torch.float64))])


# ------------------------------------------------------------------ registry


def _build(optim_args):
    p = torch.nn.Parameter(torch.randn(3))
    return build_optimizer("adamw_anyprecision", [{"params": [p]}],
                           OptimizerConfig(lr=1e-3, optim_args=optim_args))


def test_registry_uses_hugging_face_defaults():
    group = _build({}).param_groups[0]
    assert group["use_kahan_summation"] is False
    assert (group["momentum_dtype"], group["variance_dtype"], group["compensation_buffer_dtype"]) \
        == ("float32", "float32", "bfloat16")


def test_registry_reads_hugging_face_optim_args():
    from pytrainer.optim.registry import parse_optim_args
    args = parse_optim_args("use_kahan_summation=True, momentum_dtype=bfloat16,"
                            "variance_dtype = bfloat16,compensation_buffer_dtype=float16")
    group = _build(args).param_groups[0]
    assert group["use_kahan_summation"] is True
    assert (group["momentum_dtype"], group["variance_dtype"], group["compensation_buffer_dtype"]) \
        == ("bfloat16", "bfloat16", "float16")


@pytest.mark.parametrize("optim_args, match", [
    ({"momentum_dtype": "float8"}, "valid values: float32, bfloat16, float16"),
    ({"use_kahan": "true"}, "valid keys: use_kahan_summation"),
    ({"use_kahan_summation": "maybe"}, "not a boolean"),
])
def test_registry_rejects_bad_optim_args(optim_args, match):
    with pytest.raises(ValueError, match=match):
        _build(optim_args)
