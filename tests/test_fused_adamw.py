"""FusedAdamW against torch.optim.AdamW and the plain-PyTorch reference."""
from __future__ import annotations

import io
import itertools

import pytest
import torch

from pytrainer import ops
from pytrainer.optim import FusedAdamW
from tests.helpers import SHAPES, random_like_param, rounding_tolerance
from tests.reference.adamw import adamw_step

pytestmark = pytest.mark.skipif(not ops.available(), reason="compiled kernels not built")

CONFIGS = [
    dict(amsgrad=False, maximize=False, weight_decay=0.0),
    dict(amsgrad=True, maximize=False, weight_decay=0.1),
    dict(amsgrad=False, maximize=True, weight_decay=0.05),
    dict(amsgrad=True, maximize=True, weight_decay=0.0),
]


def make_params(device, dtype, shapes=SHAPES):
    return [torch.nn.Parameter(random_like_param(s, dtype, device)) for s in shapes]


def run_both(params_a, params_b, opt_a, opt_b, steps, grad_scale=1.0):
    for _ in range(steps):
        for pa, pb in zip(params_a, params_b):
            g = torch.randn_like(pa, dtype=torch.float32).to(pa.dtype) * grad_scale
            pa.grad = g.clone()
            pb.grad = g.clone()
        opt_a.step()
        opt_b.step()


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_torch_adamw_over_50_steps(device, cpu_isa, dtype, config):
    ours = make_params(device, dtype)
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    kw = dict(lr=3e-3, betas=(0.9, 0.99), eps=1e-7, **config)
    opt = FusedAdamW(ours, **kw)
    ref = torch.optim.AdamW(theirs, foreach=False, **kw)
    run_both(ours, theirs, opt, ref, steps=50)
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p, q)
        for key in ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if config["amsgrad"] else ()):
            torch.testing.assert_close(opt.state[p][key], ref.state[q][key])
        assert opt.state[p]["step"].item() == 50


@pytest.mark.parametrize("config", CONFIGS[:3], ids=["plain", "amsgrad-wd", "maximize-wd"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16bit_within_one_rounding_per_step(device, cpu_isa, dtype, config):
    """16-bit params and states, float32 math, one rounding per stored value: each
    step is compared with the reference from the same starting state."""
    params = make_params(device, dtype)
    hyper = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, **config)
    opt = FusedAdamW(params, lr=hyper["lr"], betas=(0.9, 0.999), eps=1e-8, **config)
    tol = rounding_tolerance(dtype)
    for step in range(1, 51):
        expected = []
        for p in params:
            p.grad = random_like_param(p.shape, dtype, device)
            st = opt.state[p]
            if not st:
                m = torch.zeros_like(p)
                v = torch.zeros_like(p)
                x = torch.zeros_like(p)
            else:
                m, v = st["exp_avg"].clone(), st["exp_avg_sq"].clone()
                x = st["max_exp_avg_sq"].clone() if config["amsgrad"] else None
            expected.append(adamw_step(p.detach().clone(), p.grad, m, v, x, step, **hyper))
        opt.step()
        for p, (ep, em, ev, ex) in zip(params, expected):
            st = opt.state[p]
            torch.testing.assert_close(p.detach(), ep, **tol)
            torch.testing.assert_close(st["exp_avg"], em, **tol)
            torch.testing.assert_close(st["exp_avg_sq"], ev, **tol)
            if config["amsgrad"]:
                torch.testing.assert_close(st["max_exp_avg_sq"], ex, **tol)
            assert st["exp_avg"].dtype == dtype


def test_param_groups_have_their_own_hyperparameters(device):
    a = make_params(device, torch.float32, [(31,), (4, 9)])
    b = make_params(device, torch.float32, [(300,), ()])
    qa = [torch.nn.Parameter(p.detach().clone()) for p in a]
    qb = [torch.nn.Parameter(p.detach().clone()) for p in b]
    groups = lambda x, y: [dict(params=x, lr=1e-2, weight_decay=0.1),
                           dict(params=y, lr=3e-3, betas=(0.8, 0.95), amsgrad=True, maximize=True)]
    opt = FusedAdamW(groups(a, b), lr=1.0)
    ref = torch.optim.AdamW(groups(qa, qb), lr=1.0, foreach=False)
    run_both(a + b, qa + qb, opt, ref, steps=50)
    for p, q in zip(a + b, qa + qb):
        torch.testing.assert_close(p, q)


def test_lr_as_tensor(device):
    ours = make_params(device, torch.float32, [(129,), (7, 3)])
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    lr = torch.tensor(2e-3, device=device)
    opt = FusedAdamW(ours, lr=lr)
    ref = torch.optim.AdamW(theirs, lr=2e-3, foreach=False)
    run_both(ours, theirs, opt, ref, steps=10)
    lr.fill_(5e-4)  # a scheduler updates the tensor in place
    for g in ref.param_groups:
        g["lr"] = 5e-4
    run_both(ours, theirs, opt, ref, steps=10)
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p, q)


@pytest.mark.cuda
def test_cpu_lr_tensor_with_cuda_params():
    if not (torch.cuda.is_available() and ops.has_kernels("cuda")):
        pytest.skip("needs CUDA")
    p = torch.nn.Parameter(torch.randn(100, device="cuda"))
    q = torch.nn.Parameter(p.detach().clone())
    opt = FusedAdamW([p], lr=torch.tensor(1e-3))
    ref = torch.optim.AdamW([q], lr=1e-3, foreach=False)
    run_both([p], [q], opt, ref, steps=5)
    torch.testing.assert_close(p, q)


def test_params_without_grad_are_skipped(device):
    params = make_params(device, torch.float32, [(10,), (11,), (12,)])
    before = [p.detach().clone() for p in params]
    opt = FusedAdamW(params, lr=1e-2)
    params[0].grad = torch.randn_like(params[0])
    params[2].grad = torch.randn_like(params[2])
    opt.step()
    assert params[1] not in opt.state or not opt.state[params[1]]
    assert torch.equal(params[1].detach(), before[1])
    assert not torch.equal(params[0].detach(), before[0])
    assert opt.state[params[2]]["step"].item() == 1


def test_many_small_tensors_match_one_call_each(device):
    """The chunking across tensors: 300 tensors of odd sizes in one call."""
    shapes = [(1 + (i * 37) % 300,) for i in range(300)]
    ours = make_params(device, torch.float32, shapes)
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    opt = FusedAdamW(ours, lr=1e-3, weight_decay=0.01)
    ref = torch.optim.AdamW(theirs, lr=1e-3, weight_decay=0.01, foreach=False)
    run_both(ours, theirs, opt, ref, steps=5)
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p, q)


def test_dense_non_contiguous_param(device):
    base = torch.randn(40, 30, device=device)
    p = torch.nn.Parameter(base.t())  # dense but transposed
    q = torch.nn.Parameter(base.t().contiguous())
    opt = FusedAdamW([p], lr=1e-2)
    ref = torch.optim.AdamW([q], lr=1e-2, foreach=False)
    for _ in range(5):
        g = torch.randn(30, 40, device=device)
        p.grad = torch.empty_like(p).copy_(g)  # same layout as p
        q.grad = g.clone()
        opt.step()
        ref.step()
    torch.testing.assert_close(p.detach(), q.detach())


# ------------------------------------------------------------------ GradScaler


def _scaler_setup(device, dtype=torch.float32):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    model.to(device=device, dtype=dtype)
    x = torch.randn(32, 8, device=device, dtype=dtype)
    y = torch.randn(32, 3, device=device, dtype=dtype)
    return model, x, y


def test_grad_scaler_skips_a_step_with_inf_without_touching_anything(device):
    model, x, y = _scaler_setup(device)
    opt = FusedAdamW(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler(device.type, init_scale=1024.0)
    # one good step first, so there is state to protect
    scaler.scale(torch.nn.functional.mse_loss(model(x), y)).backward()
    scaler.step(opt)
    scaler.update()
    opt.zero_grad()
    params = [p.detach().clone() for p in model.parameters()]
    states = [{k: v.clone() for k, v in opt.state[p].items()} for p in model.parameters()]
    scaler.scale(torch.nn.functional.mse_loss(model(x), y)).backward()
    next(model.parameters()).grad[0, 0] = float("inf")
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == 512.0
    for p, before, st in zip(model.parameters(), params, states):
        assert torch.equal(p.detach(), before)
        for key, value in st.items():
            assert torch.equal(opt.state[p][key], value), key
        assert opt.state[p]["step"].item() == 1


def test_grad_scaler_step_equals_unscaled_adamw(device):
    model, x, y = _scaler_setup(device)
    twin = [torch.nn.Parameter(p.detach().clone()) for p in model.parameters()]
    opt = FusedAdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    ref = torch.optim.AdamW(twin, lr=1e-2, weight_decay=0.1, foreach=False)
    scaler = torch.amp.GradScaler(device.type, init_scale=2.0 ** 12)
    for _ in range(5):
        opt.zero_grad()
        scaler.scale(torch.nn.functional.mse_loss(model(x), y)).backward()
        grads = [p.grad / scaler.get_scale() for p in model.parameters()]
        for q, g in zip(twin, grads):
            q.grad = g.clone()
        scaler.step(opt)
        scaler.update()
        ref.step()
        # like torch's fused AdamW, the grads are left unscaled
        for p, g in zip(model.parameters(), grads):
            torch.testing.assert_close(p.grad, g)
    for p, q in zip(model.parameters(), twin):
        torch.testing.assert_close(p.detach(), q.detach())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_step_scaled_equals_the_step_on_divided_grads(device, cpu_isa, dtype):
    """The Trainer's clipping divisor (step_scaled, grads left as they are) gives the
    step of grads divided by it: a divisor of 4 divides every grad exactly, so the
    two steps agree to the bit."""
    scaled, plain = make_params(device, dtype), make_params(device, dtype)
    for p, q in zip(scaled, plain):
        q.data.copy_(p)
    opt_scaled, opt_plain = FusedAdamW(scaled, lr=1e-2), FusedAdamW(plain, lr=1e-2)
    for _ in range(3):
        for p, q in zip(scaled, plain):
            g = random_like_param(p.shape, dtype, device)
            p.grad, q.grad = g.clone(), g / 4
        opt_scaled.step_scaled(torch.tensor([4.0], device=device))
        opt_plain.step()
        for p, q in zip(scaled, plain):
            assert torch.equal(p, q)
    for p, q in zip(scaled, plain):
        for key, value in opt_plain.state[q].items():
            assert torch.equal(opt_scaled.state[p][key], value), key


def test_explicit_unscale_then_step(device):
    """scaler.unscale_ (e.g. for clipping) then scaler.step: grads are not unscaled twice."""
    model, x, y = _scaler_setup(device)
    twin = [torch.nn.Parameter(p.detach().clone()) for p in model.parameters()]
    opt = FusedAdamW(model.parameters(), lr=1e-2)
    ref = torch.optim.AdamW(twin, lr=1e-2, foreach=False)
    scaler = torch.amp.GradScaler(device.type, init_scale=256.0)
    scaler.scale(torch.nn.functional.mse_loss(model(x), y)).backward()
    scaler.unscale_(opt)
    for p, q in zip(model.parameters(), twin):
        q.grad = p.grad.clone()
    scaler.step(opt)
    ref.step()
    for p, q in zip(model.parameters(), twin):
        torch.testing.assert_close(p.detach(), q.detach())


# ------------------------------------------------------------------ state_dict


def _train(params, opt, steps, seed):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen).to(p.device, p.dtype)
        opt.step()


@pytest.mark.parametrize("direction", ["torch_to_fused", "fused_to_torch"])
@pytest.mark.parametrize("amsgrad", [False, True])
def test_state_dict_moves_both_ways(device, direction, amsgrad):
    shapes = [(13,), (5, 6), ()]
    start = make_params(device, torch.float32, shapes)
    kw = dict(lr=2e-3, weight_decay=0.02, amsgrad=amsgrad)
    first_cls, second_cls = ((torch.optim.AdamW, FusedAdamW) if direction == "torch_to_fused"
                             else (FusedAdamW, torch.optim.AdamW))
    extra = lambda cls: dict(foreach=False) if cls is torch.optim.AdamW else {}
    # uninterrupted run with the first class
    a = [torch.nn.Parameter(p.detach().clone()) for p in start]
    opt_a = first_cls(a, **kw, **extra(first_cls))
    _train(a, opt_a, 10, seed=1)
    saved = io.BytesIO()
    torch.save(opt_a.state_dict(), saved)
    _train(a, opt_a, 10, seed=2)
    # the same run switching class at step 10, through a weights_only checkpoint
    b = [torch.nn.Parameter(p.detach().clone()) for p in start]
    opt_b = first_cls(b, **kw, **extra(first_cls))
    _train(b, opt_b, 10, seed=1)
    opt_c = second_cls(b, **kw, **extra(second_cls))
    saved.seek(0)
    opt_c.load_state_dict(torch.load(saved, weights_only=True, map_location="cpu"))
    assert set(opt_c.state[b[0]]) == set(opt_a.state[a[0]])
    _train(b, opt_c, 10, seed=2)
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q)
    assert opt_c.state[b[1]]["step"].item() == 20


def test_state_dict_keys_and_layout_match_torch(device):
    p = make_params(device, torch.float32, [(4, 4)])
    q = [torch.nn.Parameter(p[0].detach().clone())]
    ours, theirs = FusedAdamW(p, amsgrad=True), torch.optim.AdamW(q, amsgrad=True, fused=True)
    p[0].grad = torch.randn_like(p[0])
    q[0].grad = p[0].grad.clone()
    ours.step()
    theirs.step()
    a, b = ours.state_dict(), theirs.state_dict()
    assert set(a["param_groups"][0]) == set(b["param_groups"][0])
    assert set(a["state"][0]) == set(b["state"][0]) == {"step", "exp_avg", "exp_avg_sq",
                                                          "max_exp_avg_sq"}
    assert a["state"][0]["step"].dtype == torch.float32


@pytest.mark.cuda
def test_state_loaded_on_cpu_into_cuda_model():
    if not (torch.cuda.is_available() and ops.has_kernels("cuda")):
        pytest.skip("needs CUDA")
    p = [torch.nn.Parameter(torch.randn(1000, device="cuda"))]
    opt = FusedAdamW(p)
    _train(p, opt, 3, seed=0)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    cpu_state = torch.load(buf, map_location="cpu", weights_only=True)
    opt2 = FusedAdamW(p)
    opt2.load_state_dict(cpu_state)
    assert opt2.state[p[0]]["step"].device.type == "cuda"
    _train(p, opt2, 2, seed=1)
    assert opt2.state[p[0]]["step"].item() == 5


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("kwargs, match", [
    (dict(lr=-1e-3), "learning rate"),
    (dict(eps=0.0), "eps"),
    (dict(betas=(1.0, 0.999)), "beta1"),
    (dict(betas=(0.9, -0.1)), "beta2"),
    (dict(weight_decay=-0.1), "weight_decay"),
])
def test_invalid_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FusedAdamW([torch.nn.Parameter(torch.randn(3))], **kwargs)


def test_complex_params_rejected():
    with pytest.raises(ValueError, match="complex"):
        FusedAdamW([torch.nn.Parameter(torch.randn(3, dtype=torch.complex64))])


def test_integer_params_rejected():
    with pytest.raises(ValueError, match="float32"):
        FusedAdamW([torch.zeros(3, dtype=torch.int64)])


def test_grad_dtype_mismatch_rejected(device):
    p = torch.nn.Parameter(torch.randn(5, device=device))
    grad = torch.randn(5, device=device, dtype=torch.bfloat16)
    if hasattr(p, "grad_dtype"):  # torch >= 2.10 refuses such grads unless asked
        p.grad_dtype = None
        p.grad = grad
    else:  # older releases refuse them always, but not through .data
        p.grad = torch.randn(5, device=device)
        p.grad.data = grad
    with pytest.raises(RuntimeError, match=r"grads\[0\] has dtype BFloat16"):
        FusedAdamW([p]).step()


def test_grad_layout_mismatch_rejected(device):
    p = torch.nn.Parameter(torch.randn(6, 4, device=device).t())
    p.grad = torch.randn(4, 6, device=device)
    with pytest.raises(RuntimeError, match="strides"):
        FusedAdamW([p]).step()


def test_non_dense_param_rejected(device):
    base = torch.randn(10, 10, device=device)
    p = torch.nn.Parameter(base[:, ::2])  # a strided view with gaps
    p.grad = torch.randn_like(p)
    with pytest.raises(RuntimeError, match="not dense"):
        FusedAdamW([p]).step()


def test_direct_op_call_with_mixed_lengths_rejected():
    p = torch.randn(3)
    with pytest.raises(RuntimeError, match="grads has 0 tensors"):
        torch.ops.pytrainer.adamw_([p], [], [p], [p], [], [torch.zeros(())], lr=1e-3,
                                   lr_tensor=None, beta1=0.9, beta2=0.999, weight_decay=0.0,
                                   eps=1e-8, amsgrad=False, maximize=False)


@pytest.mark.cuda
def test_64bit_indexing_on_a_tensor_of_2_pow_31_plus_5_elements():
    if not (torch.cuda.is_available() and ops.has_kernels("cuda")):
        pytest.skip("needs CUDA")
    free, _ = torch.cuda.mem_get_info()
    n = 2 ** 31 + 5
    if free < 5 * n * 2 + (1 << 30):
        pytest.skip("needs about 22 GB of free GPU memory")
    p = torch.nn.Parameter(torch.ones(n, device="cuda", dtype=torch.bfloat16))
    p.grad = torch.ones_like(p)
    p.grad[-7:] = -1.0
    opt = FusedAdamW([p], lr=0.25, weight_decay=0.0)
    opt.step()
    # first Adam step: p -= lr * sign(g)
    tail = p.detach()[-8:].float().cpu()
    assert torch.equal(tail, torch.tensor([0.75] + [1.25] * 7))
    assert p.detach()[0].item() == 0.75
