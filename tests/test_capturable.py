"""capturable=True: a step captured in a CUDA graph and replayed equals eager
steps (CUDA, marked), and the host side of it: the flag, the table slots that
carry it to the kernels, the same CPU step, state dicts with the step on the
parameters' device."""
from __future__ import annotations

import gc
import math

import pytest
import torch

from pytrainer import ops
from pytrainer.optim import FusedAdamW
from tests.optim_db import KERNEL_OPTIMS, one_per_class, optims, optims_with

pytestmark = pytest.mark.skipif(not ops.available(), reason="compiled kernels not built")

CAPTURABLE = optims_with(KERNEL_OPTIMS, capturable=True)
SHAPES = [(33, 65), (17,), (3, 5, 7), (1,), (2, 40_000)]


def _params(info, device, dtypes=None):
    dtypes = dtypes or [d for d in (torch.float32, torch.bfloat16) if d in info.dtypes]
    return [torch.nn.Parameter(torch.randn(shape, device=device).to(dtypes[i % len(dtypes)]))
            for i, shape in enumerate(SHAPES)]


def _copy(params):
    return [torch.nn.Parameter(p.detach().clone()) for p in params]


def _lr(info, device, dtype=torch.float64):
    """The info's lr as a tensor (None where the optimizer computes its own)."""
    lr = info.kwargs.get("lr")
    return None if lr is None else torch.tensor(lr, dtype=dtype, device=device)


def _grads(params, steps, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(p.shape, generator=gen).to(p.device, p.dtype) for p in params]
            for _ in range(steps)]


def _assert_same_state(ours, theirs, params, other_params):
    for p, q in zip(params, other_params):
        assert torch.equal(p, q)
        mine, its = ours.state[p], theirs.state[q]
        assert mine.keys() == its.keys()
        for key in mine:
            assert torch.equal(mine[key], its[key]), key


# ----------------------------------------------------------------- the host side


@pytest.mark.parametrize("info", one_per_class(CAPTURABLE), ids=repr)
def test_capturable_must_be_a_bool(info):
    p = [torch.nn.Parameter(torch.randn(3))]
    with pytest.raises(ValueError, match=r"capturable must be True or False, got 'yes'"):
        info.make(p, capturable="yes")
    assert info.make(p).param_groups[0]["capturable"] is False
    assert info.make(p, capturable=True).param_groups[0]["capturable"] is True


@pytest.mark.parametrize("info", one_per_class(CAPTURABLE), ids=repr)
def test_groups_saved_without_the_flag_load_as_not_capturable(info):
    """State dicts and pickles from before the flag (or from torch optimizers
    without it) load with capturable=False, as torch.optim's __setstate__ does."""
    import pickle
    params = [torch.nn.Parameter(torch.randn(4, 3))]
    params[0].grad = torch.randn(4, 3)
    opt = info.make(params, capturable=True)
    opt.step()
    saved = opt.state_dict()
    del saved["param_groups"][0]["capturable"]
    again = info.make(params, capturable=True)
    again.load_state_dict(saved)
    assert again.param_groups[0]["capturable"] is False
    del opt.param_groups[0]["capturable"]
    assert pickle.loads(pickle.dumps(opt)).param_groups[0]["capturable"] is False
    again.step()


@optims(CAPTURABLE)
def test_a_capturable_cpu_step_is_the_same_step(info):
    """On the CPU capturable=True runs the same kernels on the same scalars: bit
    for bit the step of capturable=False, a float64 lr tensor (changed in place
    between steps) standing for the float lr."""
    plain = _params(info, "cpu")
    capt = _copy(plain)
    lr = _lr(info, "cpu")
    a = info.make(plain)
    b = info.make(capt, capturable=True, **({} if lr is None else {"lr": lr}))
    for k, grads in enumerate(_grads(plain, 4)):
        if k == 2 and lr is not None:
            lr.fill_(lr.item() / 3)
            a.param_groups[0]["lr"] = lr.item()
        for p, q, g in zip(plain, capt, grads):
            p.grad, q.grad = g.clone(), g.clone()
        a.step()
        b.step()
    _assert_same_state(a, b, plain, capt)
    assert b.state[capt[0]]["step"].item() == 4


@pytest.mark.parametrize("info", one_per_class(CAPTURABLE), ids=repr)
def test_each_group_slot_carries_its_capturable_flag(info):
    """The kernels learn a group's flag from its table slot (they refuse the
    capture of a slot that is not capturable): set on the group's first step,
    following the group's flag when it changes, on the same slot."""
    C = ops.require()
    gc.collect()
    before = C.live_table_slots()
    params = [torch.nn.Parameter(torch.randn(4, 3)) for _ in range(2)]
    for p in params:
        p.grad = torch.randn(4, 3)
    opt = info.make([{"params": [params[0]]}, {"params": [params[1]], "capturable": True}])
    opt.step()
    slots = [opt._table_slot(group) for group in opt.param_groups]
    assert [C.table_slot_capturable(s) for s in slots] == [False, True]
    opt.param_groups[0]["capturable"] = True
    opt.param_groups[1]["capturable"] = False
    opt.step()
    assert [opt._table_slot(group) for group in opt.param_groups] == slots
    assert [C.table_slot_capturable(s) for s in slots] == [True, False]
    assert C.live_table_slots() == before + 2
    del opt
    gc.collect()
    assert C.live_table_slots() == before
    with pytest.raises(RuntimeError, match=rf"table slot {slots[0]} was released"):
        C.set_table_slot_capturable(slots[0], True)


def test_state_dict_round_trip_with_torch_capturable_adamw(device):
    """torch.optim.AdamW(capturable=True) keeps ``step`` on the parameters'
    device, as FusedAdamW always does: its state dict loads into ours and back,
    flag included; a CPU step loaded into a capturable optimizer moves to the
    parameters' device."""
    params = [torch.nn.Parameter(torch.randn(7, 5, device=device))]
    ours = FusedAdamW(params, lr=1e-2, capturable=True)
    for grads in _grads(params, 2):
        params[0].grad = grads[0]
        ours.step()
    saved = ours.state_dict()
    assert saved["param_groups"][0]["capturable"] is True
    step = saved["state"][0]["step"]
    assert step.device == params[0].device and step.dtype == torch.float32 and step.item() == 2
    theirs = torch.optim.AdamW(_copy(params), lr=1e-2, capturable=True)
    theirs.load_state_dict(saved)
    back = theirs.state_dict()
    assert back["param_groups"][0]["capturable"] is True
    for key, value in saved["state"][0].items():
        assert torch.equal(back["state"][0][key], value), key
    cpu_steps = {**back, "state": {0: {**back["state"][0], "step": torch.tensor(2.0)}}}
    again = FusedAdamW(_copy(params), lr=1e-2, capturable=True)
    again.load_state_dict(cpu_steps)
    (q,) = again.param_groups[0]["params"]
    assert again.param_groups[0]["capturable"] is True
    loaded = again.state[q]["step"]
    assert loaded.device == q.device and loaded.dtype == torch.float32 and loaded.item() == 2


# ------------------------------------------------------------------------- CUDA


def _needs_cuda():
    if not (torch.cuda.is_available() and ops.has_kernels("cuda")):
        pytest.skip("needs an NVIDIA GPU and pytrainer's CUDA kernels")


def _capture(step):
    """``step`` run once eagerly on a side stream (the warm-up torch.cuda.graph
    asks for), then captured; the graph's replays run it again."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph


def _messages(error: BaseException) -> str:
    """The messages of an exception and of those it replaced (a failed capture
    may raise again when torch.cuda.graph ends it)."""
    seen = []
    while error is not None and error not in seen:
        seen.append(error)
        error = error.__context__ or error.__cause__
    return "\n".join(str(e) for e in seen)


@pytest.mark.cuda
@optims(CAPTURABLE)
def test_replaying_a_captured_step_equals_eager_steps(info):
    """One eager warm-up step, then N replays of the captured step with new
    grads copied into the same grad tensors: the params, states and step counts
    of N+1 eager steps, bit for bit (the same kernels on the same scalars); an lr
    changed in place between replays takes effect."""
    _needs_cuda()
    replays = 4
    eager_params = _params(info, "cuda")
    graph_params = _copy(eager_params)
    eager_lr, graph_lr = _lr(info, "cuda", torch.float32), _lr(info, "cuda", torch.float32)
    extra = {} if eager_lr is None else {"lr": eager_lr}
    eager = info.make(eager_params, capturable=True, **extra)
    captured = info.make(graph_params, capturable=True,
                         **({} if graph_lr is None else {"lr": graph_lr}))
    grads = _grads(eager_params, replays + 1, seed=3)
    for p, g in zip(graph_params, grads[0]):
        p.grad = g.clone()
    graph = _capture(captured.step)
    # the capture ran nothing: the warm-up's step only
    assert captured.state[graph_params[0]]["step"].item() == 1
    for p, g in zip(eager_params, grads[0]):
        p.grad = g.clone()
    eager.step()
    for k in range(1, replays + 1):
        if k == 3 and eager_lr is not None:
            eager_lr.mul_(0.25)
            graph_lr.mul_(0.25)
        for p, q, g in zip(eager_params, graph_params, grads[k]):
            p.grad = g.clone()
            q.grad.copy_(g)
        eager.step()
        graph.replay()
    torch.cuda.synchronize()
    _assert_same_state(eager, captured, eager_params, graph_params)
    assert captured.state[graph_params[0]]["step"].item() == replays + 1


@pytest.mark.cuda
@pytest.mark.parametrize("info", one_per_class(CAPTURABLE), ids=repr)
def test_a_captured_step_skips_on_found_inf(info):
    """GradScaler's skip inside a captured step: with found_inf set at replay the
    params, states and step counts stay as they were; cleared, the replay is the
    eager step_scaled of the same scale."""
    _needs_cuda()
    params = _params(info, "cuda")
    twin = _copy(params)
    scale = torch.full((1,), 4.0, device="cuda")
    found_inf = torch.zeros(1, device="cuda")
    captured = info.make(params, capturable=True)
    eager = info.make(twin, capturable=True)
    grads = _grads(params, 2, seed=5)
    for p, q, g in zip(params, twin, grads[0]):
        p.grad, q.grad = g * 4, g * 4
    graph = _capture(lambda: captured.step_scaled(scale, found_inf))
    eager.step_scaled(scale, torch.zeros(1, device="cuda"))
    before = {id(p): {k: v.clone() for k, v in captured.state[p].items()} for p in params}
    weights = [p.detach().clone() for p in params]
    for p, g in zip(params, grads[1]):
        p.grad.copy_(g * 4)
    found_inf.fill_(1.0)
    graph.replay()
    torch.cuda.synchronize()
    for p, w in zip(params, weights):
        assert torch.equal(p, w)
        for key, value in captured.state[p].items():
            assert torch.equal(value, before[id(p)][key]), key
    found_inf.fill_(0.0)
    graph.replay()
    for q, g in zip(twin, grads[1]):
        q.grad = g * 4
    eager.step_scaled(scale, torch.zeros(1, device="cuda"))
    torch.cuda.synchronize()
    _assert_same_state(eager, captured, twin, params)
    assert captured.state[params[0]]["step"].item() == 2


@pytest.mark.parametrize("info", one_per_class(CAPTURABLE), ids=repr)
def test_a_grad_scaler_scaling_stepping_and_updating_in_a_captured_step(info, device):
    """torch's GradScaler whole inside the captured function (grads scaled,
    ``scaler.step``, ``scaler.update``), replayed over six steps, one with an
    inf grad: the params and states of plain steps on the unscaled grads with
    that step left out (a power-of-two scale divides exactly), one step count
    fewer, and the scale halved by the skip and doubled by growth, all on the
    device. On the CPU the function is called instead of replayed."""
    if device.type == "cuda":
        _needs_cuda()
    params = _params(info, device, [torch.float32])
    plain_params = _copy(params)
    opt = info.make(params, capturable=True)
    plain = info.make(plain_params, capturable=True)
    scaler = torch.amp.GradScaler(device.type, init_scale=2.0 ** 10, growth_interval=2)
    sources = [torch.zeros_like(p) for p in params]  # what the graph reads each replay
    for p in params:
        p.grad = torch.zeros_like(p)

    def scaled_step():
        for p, g in zip(params, sources):
            p.grad.copy_(scaler.scale(g))
        scaler.step(opt)
        scaler.update()

    grads = _grads(params, 6, seed=9)
    grads[3][0][0, 0] = math.inf
    for k, step_grads in enumerate(grads):
        for source, g in zip(sources, step_grads):
            source.copy_(g)
        if device.type == "cpu":
            scaled_step()
        elif k == 0:
            graph = _capture(scaled_step)  # runs step 0 eagerly, then captures
        else:
            graph.replay()
        if k != 3:
            for q, g in zip(plain_params, step_grads):
                q.grad = g.clone()
            plain.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    _assert_same_state(opt, plain, params, plain_params)
    assert opt.state[params[0]]["step"].item() == 5
    # 2^10, grown to 2^11 after steps 0-1, halved by step 3, grown again after 4-5
    assert scaler.get_scale() == 2.0 ** 11


@pytest.mark.cuda
def test_capturing_a_step_needs_capturable_true():
    _needs_cuda()
    params = [torch.nn.Parameter(torch.randn(100, device="cuda"))]
    params[0].grad = torch.randn(100, device="cuda")
    opt = FusedAdamW(params)
    with pytest.raises(RuntimeError) as error:
        _capture(opt.step)
    assert "made with capturable=False" in _messages(error.value)


@pytest.mark.cuda
def test_a_capture_needs_the_tables_of_a_warm_up_step():
    """Without a warm-up step, and after the grads were replaced since it, the
    capture is refused with the cause, before anything is queued."""
    _needs_cuda()
    params = [torch.nn.Parameter(torch.randn(100, device="cuda"))]
    params[0].grad = torch.randn(100, device="cuda")
    opt = FusedAdamW(params, capturable=True)
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError) as error:
        with torch.cuda.graph(graph):
            opt.step()
    assert "has not stepped yet: run one eager step" in _messages(error.value)

    opt = FusedAdamW(params, capturable=True)
    opt.step()
    params[0].grad = torch.randn(100, device="cuda")  # what zero_grad(set_to_none=True) leads to
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError) as error:
        with torch.cuda.graph(graph):
            opt.step()
    assert "changed since its last eager step" in _messages(error.value)
    assert "zero_grad(set_to_none=False)" in _messages(error.value)


@pytest.mark.cuda
def test_a_cpu_lr_tensor_is_refused_under_capture():
    """A captured graph would freeze a CPU lr's value: refused, naming what works."""
    _needs_cuda()
    params = [torch.nn.Parameter(torch.randn(100, device="cuda"))]
    params[0].grad = torch.randn(100, device="cuda")
    opt = FusedAdamW(params, lr=torch.tensor(1e-3), capturable=True)
    with pytest.raises(RuntimeError) as error:
        _capture(opt.step)
    assert "lr is a CPU tensor" in _messages(error.value)


@pytest.mark.cuda
def test_eager_steps_on_another_stream_after_a_capture():
    """A table built on one stream and read on others (the warm-up's side
    stream, the capture stream, eager steps on the default stream): every read
    waits for its upload, so eager steps after the graph's replays continue the
    same sequence as eager steps alone."""
    _needs_cuda()
    params = [torch.nn.Parameter(torch.randn(shape, device="cuda")) for shape in SHAPES]
    twin = _copy(params)
    captured = FusedAdamW(params, lr=1e-2, capturable=True)
    eager = FusedAdamW(twin, lr=1e-2)
    grads = _grads(params, 1, seed=7)[0]
    for p, q, g in zip(params, twin, grads):
        p.grad, q.grad = g.clone(), g.clone()
    graph = _capture(captured.step)
    graph.replay()
    graph.replay()
    captured.step()
    for _ in range(4):
        eager.step()
    torch.cuda.synchronize()
    _assert_same_state(eager, captured, twin, params)
    assert math.isclose(captured.state[params[0]]["step"].item(), 4.0)


@pytest.mark.cuda
def test_a_direct_op_call_is_refused_under_capture():
    """Without a table slot (direct calls of the op) the table lives in a
    shared cache a graph would outlive: its capture is an error that says so."""
    _needs_cuda()
    p = torch.randn(100, device="cuda")
    args = dict(params=[p], grads=[torch.randn_like(p)], exp_avgs=[torch.zeros_like(p)],
                exp_avg_sqs=[torch.zeros_like(p)], max_exp_avg_sqs=[],
                state_steps=[torch.zeros((), device="cuda")], lr=1e-3, lr_tensor=None,
                beta1=0.9, beta2=0.999, weight_decay=0.0, eps=1e-8, amsgrad=False,
                maximize=False)
    torch.ops.pytrainer.adamw_(**args)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError) as error:
        with torch.cuda.graph(graph):
            torch.ops.pytrainer.adamw_(**args)
    assert "without a table slot (table_slot=-1" in _messages(error.value)
