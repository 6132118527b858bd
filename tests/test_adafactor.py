"""Adafactor against transformers' math (in float64) and torch.optim.Adafactor."""
from __future__ import annotations

import contextlib
import io

import pytest
import torch

from pytrainer import ops
from pytrainer.optim import Adafactor
from pytrainer.optim.registry import OptimizerConfig, build_optimizer
from tests.conftest import kernel_devices
from tests.helpers import random_like_param, rounding_tolerance
from tests.reference.adafactor import adafactor_step, new_state

pytestmark = pytest.mark.skipif(not ops.available(), reason="compiled kernels not built")

# 1-D, 2-D, 3-D, 1 x n, n x 1, 0-d, empty, and matrices wider and taller than a tile
SHAPES = [(37,), (33, 65), (3, 5, 7), (1, 50), (50, 1), (), (0,), (4, 0), (70, 2100), (1100, 3)]

CONFIGS = {
    "relative": dict(),
    "relative-beta1-wd": dict(beta1=0.9, weight_decay=0.01),
    "warmup": dict(warmup_init=True),
    "lr-no-scale": dict(lr=1e-2, relative_step=False, scale_parameter=False),
    "lr-scale-beta1": dict(lr=3e-3, relative_step=False, scale_parameter=True, beta1=0.8),
    "clip-decay": dict(clip_threshold=0.5, decay_rate=-0.5, weight_decay=0.1),
}


@contextlib.contextmanager
def torch_threads(n):
    """torch's intra-op thread count set to n, and restored."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def grads_for(params, gen):
    return [torch.randn(p.shape, generator=gen).to(p.device, p.dtype) for p in params]


def assert_steps_match(a, ours, b, theirs, seed, steps):
    """Steps optimizer a over ours and b over theirs with the same grads; the
    params end within float32 tolerance of each other."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p, q, g in zip(ours, theirs, grads_for(ours, gen)):
            p.grad, q.grad = g.clone(), g.clone()
        a.step()
        b.step()
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_float32_matches_transformers_math_over_60_steps(device, cpu_isa, config):
    params = [torch.nn.Parameter(random_like_param(s, torch.float32, device)) for s in SHAPES]
    reference = [p.detach().cpu().double() for p in params]
    states = [new_state(p, config.get("beta1")) for p in reference]
    opt = Adafactor(params, **config)
    gen = torch.Generator().manual_seed(3)
    for _ in range(60):
        grads = grads_for(params, gen)
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
        for i, g in enumerate(grads):
            reference[i] = adafactor_step(reference[i], g.cpu(), states[i], **config)
    for p, want, st in zip(params, reference, states):
        scale = max(want.abs().max().item(), 1.0) if want.numel() else 1.0
        torch.testing.assert_close(p.detach().cpu().double(), want, rtol=1e-5, atol=1e-6 * scale)
        got = opt.state[p]
        for key in ("exp_avg_sq_row", "exp_avg_sq_col", "exp_avg_sq", "exp_avg"):
            assert (key in got) == (key in st), key
            # (the reference's means over an empty dim are NaN; ours stay 0)
            if key in st and p.numel():
                size = st[key].abs().max().item()
                torch.testing.assert_close(got[key].cpu().double(), st[key], rtol=1e-5,
                                           atol=1e-6 * size)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
def test_16bit_params_float32_state_one_rounding_per_step(device, dtype):
    """Each step from the same starting point as the reference: the new 16-bit
    weight is the float64 result rounded once (one unit in the last place)."""
    shapes = [(37,), (33, 65), (2, 3, 40), ()]
    params = [torch.nn.Parameter(random_like_param(s, dtype, device)) for s in shapes]
    states = [new_state(p, 0.9) for p in params]
    opt = Adafactor(params, lr=1e-2, relative_step=False, beta1=0.9, weight_decay=0.01)
    gen = torch.Generator().manual_seed(4)
    for _ in range(20):
        grads = grads_for(params, gen)
        expected = []
        for p, g, st in zip(params, grads, states):
            p.grad = g
            expected.append(adafactor_step(p.detach().cpu(), g.cpu(), st, lr=1e-2,
                                           relative_step=False, beta1=0.9, weight_decay=0.01))
        opt.step()
        for p, want in zip(params, expected):
            assert opt.state[p]["step"].dtype == torch.float32
            torch.testing.assert_close(p.detach().cpu().float(), want.to(dtype).float(),
                                       **rounding_tolerance(dtype))
        # keep the reference on the kernel's trajectory (its own rounding)
        for p, st in zip(params, states):
            for key, value in opt.state[p].items():
                if key != "step":
                    st[key] = value.cpu().double()


def test_matches_torch_optim_adafactor_where_both_define_the_same_update(device):
    """relative_step, scale_parameter, no warmup, no beta1, no weight decay: the two
    differ only in where eps1 enters, invisible for gradients that are not tiny."""
    shapes = [(40,), (30, 50), (2, 9, 17)]
    ours = [torch.nn.Parameter(random_like_param(s, torch.float32, device)) for s in shapes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    a = Adafactor(ours, clip_threshold=1.0)
    b = torch.optim.Adafactor(theirs, lr=1e-2, d=1.0, foreach=False)
    assert_steps_match(a, ours, b, theirs, seed=5, steps=30)


def test_matches_transformers_adafactor_class():
    transformers = pytest.importorskip("transformers.optimization")
    shapes = [(37,), (33, 65), (3, 5, 7), ()]
    ours = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    a = Adafactor(ours, beta1=0.9, weight_decay=0.01)
    b = transformers.Adafactor(theirs, beta1=0.9, weight_decay=0.01)
    assert_steps_match(a, ours, b, theirs, seed=6, steps=20)


def test_state_memory_is_rows_plus_cols_for_a_matrix(device):
    p = torch.nn.Parameter(torch.randn(300, 70, device=device))
    v = torch.nn.Parameter(torch.randn(90, device=device))
    for beta1, extra in ((None, 0), (0.9, 300 * 70)):
        opt = Adafactor([p, v], beta1=beta1)
        p.grad, v.grad = torch.randn_like(p), torch.randn_like(v)
        opt.step()
        state = opt.state[p]
        floats = sum(t.numel() for k, t in state.items() if k != "step")
        assert floats == 300 + 70 + extra
        assert state["exp_avg_sq_row"].shape == (300,) and state["exp_avg_sq_col"].shape == (70,)
        assert sum(t.numel() for k, t in opt.state[v].items() if k != "step") == \
            90 + (90 if beta1 else 0)
        assert all(t.dtype == torch.float32 for t in state.values())


def test_batched_state_shapes_for_a_3d_parameter():
    p = torch.nn.Parameter(torch.randn(4, 6, 9))
    opt = Adafactor([p])
    p.grad = torch.randn_like(p)
    opt.step()
    assert opt.state[p]["exp_avg_sq_row"].shape == (4, 6)
    assert opt.state[p]["exp_avg_sq_col"].shape == (4, 9)


def test_grad_scaler_skip_and_unscale(device):
    model = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(), torch.nn.Linear(12, 2))
    model.to(device)
    twin = [torch.nn.Parameter(p.detach().clone()) for p in model.parameters()]
    opt = Adafactor(model.parameters(), beta1=0.9)
    ref = Adafactor(twin, beta1=0.9)
    scaler = torch.amp.GradScaler(device.type, init_scale=512.0)
    x = torch.randn(16, 6, device=device)
    for step in range(4):
        opt.zero_grad()
        scaler.scale(model(x).pow(2).mean()).backward()
        if step == 2:
            model[0].weight.grad[0, 0] = float("inf")
        grads = [p.grad / scaler.get_scale() for p in model.parameters()]
        scaler.step(opt)
        scaler.update()
        if step != 2:
            for q, g in zip(twin, grads):
                q.grad = g.clone()
            ref.step()
    for p, q in zip(model.parameters(), twin):
        torch.testing.assert_close(p.detach(), q.detach())
        assert opt.state[p]["step"].item() == 3


def test_state_dict_round_trip(device):
    shapes = [(20, 30), (11,)]
    a_params = [torch.nn.Parameter(random_like_param(s, torch.float32, device)) for s in shapes]
    b_params = [torch.nn.Parameter(p.detach().clone()) for p in a_params]
    a, b = Adafactor(a_params, beta1=0.9), Adafactor(b_params, beta1=0.9)
    gen = torch.Generator().manual_seed(7)
    for step in range(8):
        for p, q, g in zip(a_params, b_params, grads_for(a_params, gen)):
            p.grad, q.grad = g.clone(), g.clone()
        a.step()
        if step == 3:
            buf = io.BytesIO()
            torch.save(b.state_dict(), buf)
            buf.seek(0)
            b = Adafactor(b_params)
            b.load_state_dict(torch.load(buf, weights_only=True, map_location="cpu"))
            assert b.param_groups[0]["beta1"] == 0.9
        b.step()
    for p, q in zip(a_params, b_params):
        assert torch.equal(p, q)


def test_results_do_not_depend_on_the_thread_count():
    torch.manual_seed(0)
    results = []
    for threads in (1, 2):
        with torch_threads(threads):
            p = torch.nn.Parameter(torch.arange(150 * 2100, dtype=torch.float32).reshape(150, 2100)
                                   .sin())
            opt = Adafactor([p])
            gen = torch.Generator().manual_seed(1)
            for _ in range(3):
                p.grad = torch.randn(p.shape, generator=gen)
                opt.step()
            results.append(p.detach().clone())
    assert torch.equal(results[0], results[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_one_call_over_cache_groups_equals_each_tensor_alone(dtype):
    # The CPU step takes the tensors a group (4 MB of params and grads per thread,
    # 8 MB with 2 threads) at a time. With 2 threads these shapes make 4 groups in
    # float32 ({0, 1}, {2, 3}, {4}, {5}) and 3 in bfloat16 ({0-3}, {4}, {5}), tensor 4
    # larger than a group in both.
    shapes = [(700, 1100), (333,), (1500, 600), (5, 7, 9), (1500, 1500), (2000,)]
    gen = torch.Generator().manual_seed(3)
    start = [torch.randn(s, generator=gen).to(dtype) for s in shapes]
    together = [torch.nn.Parameter(t.clone()) for t in start]
    alone = [torch.nn.Parameter(t.clone()) for t in start]
    config = dict(beta1=0.9, weight_decay=0.01)
    opt = Adafactor(together, **config)
    opts = [Adafactor([p], **config) for p in alone]
    with torch_threads(2):
        for _ in range(2):
            grads = grads_for(together, gen)
            for p, q, g in zip(together, alone, grads):
                p.grad, q.grad = g.clone(), g.clone()
            opt.step()
            for o in opts:
                o.step()
    for p, q, o in zip(together, alone, opts):
        assert torch.equal(p, q)
        for key, value in o.state[q].items():
            assert torch.equal(opt.state[p][key], value), key


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("kwargs, match", [
    (dict(lr=1e-3), "Cannot combine manual `lr` and `relative_step=True`"),
    (dict(relative_step=False), "lr=None needs `relative_step=True`"),
    (dict(lr=1e-3, relative_step=False, warmup_init=True), "`warmup_init=True` requires"),
    (dict(lr=-1.0, relative_step=False), "learning rate"),
    (dict(beta1=1.0), "beta1"),
    (dict(decay_rate=0.5), "decay_rate"),
    (dict(clip_threshold=0.0), "clip_threshold"),
    (dict(eps=(1e-30,)), "eps"),
    (dict(weight_decay=-1.0), "weight_decay"),
])
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Adafactor([torch.nn.Parameter(torch.randn(3))], **kwargs)


def test_non_contiguous_matrix_rejected(device):
    p = torch.nn.Parameter(torch.randn(8, 5, device=device).t())
    p.grad = torch.randn(8, 5, device=device).t()
    with pytest.raises(RuntimeError, match="not contiguous"):
        Adafactor([p]).step()


def test_float64_params_rejected():
    with pytest.raises(ValueError, match="float64"):
        Adafactor([torch.nn.Parameter(torch.randn(3, dtype=torch.float64))])


# ------------------------------------------------------------------ registry


def test_registry_builds_it_as_hugging_face_does():
    p = torch.nn.Parameter(torch.randn(3))
    opt = build_optimizer("adafactor", [{"params": [p], "weight_decay": 0.0}],
                          OptimizerConfig(lr=2e-3))
    group = opt.param_groups[0]
    assert isinstance(opt, Adafactor)
    assert (group["lr"], group["scale_parameter"], group["relative_step"]) == (2e-3, False, False)


# The CUDA tiling's cases (common/adafactor_cuda_layout.h): a GPT-2 embedding
# (many row tiles: column partials folded on a grid), a wide matrix (row and
# column partials), conv weights and 3 x 3, 1 x n, n x 1, batched 3-D.
CUDA_TILING_SHAPES = [(50257, 768), (600, 9000), (64, 64, 3, 3), (3, 3), (1, 4099), (4099, 1),
                      (6, 500, 96)]


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_cuda_tiling_matches_the_reference_on_model_shapes(dtype):
    """Each step from the reference's own state: float32 within float32
    rounding of the float64 math, bfloat16 within one rounding."""
    if "cuda" not in kernel_devices():
        pytest.skip("needs an NVIDIA GPU and pytrainer's CUDA kernels")
    config = dict(beta1=0.9, weight_decay=0.01)
    params = [torch.nn.Parameter(random_like_param(s, dtype, "cuda")) for s in CUDA_TILING_SHAPES]
    states = [new_state(p, 0.9) for p in params]
    opt = Adafactor(params, **config)
    gen = torch.Generator().manual_seed(6)
    tolerance = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else rounding_tolerance(dtype)
    for _ in range(3):
        grads = grads_for(params, gen)
        expected = []
        for p, g, st in zip(params, grads, states):
            p.grad = g
            expected.append(adafactor_step(p.detach().cpu(), g.cpu(), st, **config))
        opt.step()
        for p, want, st in zip(params, expected, states):
            torch.testing.assert_close(p.detach().cpu().double(), want.to(dtype).double(),
                                       **tolerance)
            for key in ("exp_avg_sq_row", "exp_avg_sq_col"):
                torch.testing.assert_close(opt.state[p][key].cpu().double(), st[key], rtol=1e-5,
                                           atol=1e-30)
            # the reference follows the kernel's trajectory (its own rounding)
            for key, value in opt.state[p].items():
                if key != "step":
                    st[key] = value.cpu().double()
