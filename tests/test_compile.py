"""The ops and the optimizers under torch.compile (issue 16).

- ``torch.library.opcheck`` of each op (schema, fake tensor, autograd
  registration, AOT dispatch) with the arguments a real step passes it;
- a compiled function calling ``optimizer.step()`` gives the results of eager
  steps, for every optimizer of the database, with no more graph breaks than
  ``torch.optim.AdamW(foreach=True)`` in the same function and the kernel in the
  graph;
- a compiled training step (forward, backward, step) of a small transformer;
- the Trainer's ``torch_compile`` with pytrainer's AdamW.

torch.compile takes seconds per function on 2 cores: the tensors and the model
are tiny, and dynamo's caches are reset around every test that compiles.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pytrainer import ops
from pytrainer.field_kinds import pending_fields
from pytrainer.optim import FusedAdamW
from tests.conftest import kernel_devices
from tests.optim_db import KERNEL_OPTIMS, OPTIMS, one_per_class

pytestmark = pytest.mark.skipif(not ops.available(), reason="compiled kernels not available")

# ------------------------------------------------------------------------------ opcheck

#: shapes of the parameters of an opcheck call: empty and 0-d tensors among them
_OPCHECK_SHAPES = [(5, 7), (0,), (), (3,), (2, 0, 3), (2, 3, 4)]


class _Recorder:
    """Stands in for ``pytrainer._C``: records the keyword arguments of the calls
    of the op ``op_name`` instead of running it, and passes everything else (the
    table slots that optimizers collected meanwhile release) to the real module."""

    def __init__(self, kernels, op_name: str):
        self.kernels, self.op_name, self.calls = kernels, op_name, []

    def __getattr__(self, name):
        if name != self.op_name:
            return getattr(self.kernels, name)
        return lambda **kwargs: self.calls.append(kwargs)


def _recorded_call(info, device, monkeypatch, *, lr_tensor=False, scaler=None):
    """The op and the arguments the third step of ``info``'s optimizer passes it:
    parameters of every dtype it takes (one call), two real steps before; and the
    optimizer, which owns the table slot the arguments name."""
    dtypes = [d for d in (torch.float32, torch.bfloat16, torch.float16, torch.float64)
              if d in info.dtypes]
    params = [nn.Parameter(torch.randn(shape, device=device).to(dtypes[i % len(dtypes)]))
              for i, shape in enumerate(_OPCHECK_SHAPES)]
    overrides = {"lr": torch.tensor(1e-2, device=device)} if lr_tensor else {}
    opt = info.make(params, **overrides)
    for _ in range(3):
        for p in params:
            p.grad = torch.randn_like(p)
        if _ == 2:
            recorder = _Recorder(ops.kernels, opt._op_name)
            monkeypatch.setattr(ops, "kernels", recorder)
        if scaler == "skip":  # folded clipping and inf check: found_inf set, grads kept
            opt.step_scaled(torch.tensor([0.5], device=device), torch.ones(1, device=device))
        elif scaler == "scale":  # what GradScaler sets around step()
            opt.grad_scale = torch.full((1,), 4.0, device=device)
            opt.found_inf = torch.zeros(1, device=device)
            opt.step()
        else:
            opt.step()
    kwargs, = recorder.calls
    return getattr(torch.ops.pytrainer, opt._op_name).default, kwargs, opt


#: (configuration, what the step gets): per op a plain step, the GradScaler's
#: tensors, and a tensor lr with a skipped step; the configurations whose
#: arguments differ in kind (stochastic rounding's ids, no lr) with the scaler's
_VARIANTS = {"plain": {}, "grad_scale": dict(scaler="scale"),
             "lr_tensor-skip": dict(lr_tensor=True, scaler="skip")}
_OPCHECK_CASES = (
    [(info, variant) for info in one_per_class(KERNEL_OPTIMS) for variant in _VARIANTS]
    + [(info, "grad_scale") for info in KERNEL_OPTIMS
       if info.name in ("anyprecision-stochastic", "adafactor-relative")])


@pytest.mark.parametrize("info, variant", _OPCHECK_CASES,
                         ids=[f"{info.name}-{variant}" for info, variant in _OPCHECK_CASES])
def test_opcheck(info, variant, device, monkeypatch):
    case = _VARIANTS[variant]
    op, kwargs, _owner_of_the_slot = _recorded_call(info, device, monkeypatch, **case)
    assert {torch.float32, torch.bfloat16} <= {p.dtype for p in kwargs["params"]}
    assert any(p.numel() == 0 for p in kwargs["params"])
    assert (kwargs["found_inf"] is not None) == ("scaler" in case)
    assert (kwargs["lr_tensor"] is not None) == case.get("lr_tensor", False)
    results = torch.library.opcheck(op, (), kwargs)
    assert set(results.values()) == {"SUCCESS"}, results


# ----------------------------------------------------------------- the compiled step


@pytest.fixture
def fresh_dynamo():
    """Empty compile caches and counters (reset() keeps the counters)."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield
    torch._dynamo.reset()


def _step(opt):
    opt.step()


def _explain(fn, *args):
    """dynamo's explanation of ``fn(*args)`` (it runs it), in fresh caches."""
    torch._dynamo.reset()
    try:
        return torch._dynamo.explain(fn)(*args)
    finally:
        torch._dynamo.reset()


#: shapes of the parameters of a compiled step, each in every dtype
_STEP_SHAPES = [(5, 7), (3,), (2, 3, 4)]


def _step_dtypes(info) -> list[torch.dtype]:
    """float32 and the 16-bit dtypes whose results the optimizer defines to a
    rounding (its math may be fused differently when compiled)."""
    return [d for d in (torch.float32, torch.bfloat16, torch.float16) if d in info.dtypes
            and (info.kernels or info.reference_dtypes is None or d in info.reference_dtypes)]


def _step_params(dtypes, device="cpu") -> list[nn.Parameter]:
    return [nn.Parameter(torch.randn(shape, device=device).to(dtype)) for dtype in dtypes
            for shape in _STEP_SHAPES]


@pytest.fixture(scope="module")
def torch_adamw_step_breaks() -> int:
    """Graph breaks of ``_step`` over torch.optim.AdamW(foreach=True)."""
    params = _step_params([torch.float32])
    for p in params:
        p.grad = torch.randn_like(p)
    return _explain(_step, torch.optim.AdamW(params, foreach=True)).graph_break_count


#: every optimizer on the CPU; one configuration per kernel on CUDA
_STEP_CASES = ([pytest.param(info, "cpu", id=f"cpu-{info.name}") for info in OPTIMS]
               + [pytest.param(info, "cuda", id=f"cuda-{info.name}", marks=pytest.mark.cuda)
                  for info in one_per_class(KERNEL_OPTIMS)])


@pytest.mark.parametrize("info, device", _STEP_CASES)
def test_compiled_step_equals_eager(info, device, torch_adamw_step_breaks, fresh_dynamo):
    if device not in kernel_devices():
        pytest.skip("needs an NVIDIA GPU and pytrainer's CUDA kernels")
    dtypes = _step_dtypes(info)
    eager_params = _step_params(dtypes, device)
    compiled_params = [nn.Parameter(p.detach().clone()) for p in eager_params]
    eager, compiled = info.make(eager_params), info.make(compiled_params)
    compiled_step = torch.compile(_step)
    for i in range(3):
        for p, q in zip(eager_params, compiled_params):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        eager.step()
        compiled_step(compiled)
        if i == 0:
            frames = torch._dynamo.utils.counters["frames"]["ok"]
    if info.kernels:  # the step's tensors are fixed: one compilation
        assert torch._dynamo.utils.counters["frames"]["ok"] == frames
    for p, q in zip(eager_params, compiled_params):
        if info.kernels:  # the same kernel in and out of the graph: the same bits
            torch.testing.assert_close(q, p, rtol=0, atol=0)
            for key, value in eager.state[p].items():
                torch.testing.assert_close(compiled.state[q][key], value, rtol=0, atol=0)
        else:
            torch.testing.assert_close(q, p, **info.tolerance(p.dtype))

    explanation = _explain(_step, compiled)
    assert explanation.graph_break_count <= torch_adamw_step_breaks, explanation.break_reasons
    if info.kernels:  # the op is in the graph, not run by a fallback to eager
        graph_code = "".join(graph.code for graph in explanation.graphs)
        assert f"torch.ops.pytrainer.{compiled._op_name}" in graph_code
        # with the group's own table slot, where its eager steps keep their tables
        assert f"table_slot = {compiled._table_slot(compiled.param_groups[0])}," in graph_code


@pytest.mark.cuda
@pytest.mark.parametrize("info", one_per_class(KERNEL_OPTIMS), ids=repr)
def test_a_step_compiled_into_a_cuda_graph_equals_eager_steps(info, fresh_dynamo):
    """torch.compile(mode="reduce-overhead") of a function calling step() of an
    optimizer made with capturable=True: inductor records the compiled step in a
    CUDA graph after its warm-up runs (no cudagraph skip) and replays it; its
    steps, new grads copied into the same grad tensors, equal eager steps bit for
    bit. The grads are marked static, as torch asks of compiled optimizers
    under CUDA graphs (the op mutates its grads: a grad not static makes inductor
    skip the graph). One eager step first, as before any capture: the group's
    tables are then built outside the memory pool of inductor's graphs."""
    if "cuda" not in kernel_devices():
        pytest.skip("needs an NVIDIA GPU and pytrainer's CUDA kernels")
    dtypes = _step_dtypes(info)
    params = _step_params(dtypes, "cuda")
    twin = [nn.Parameter(p.detach().clone()) for p in params]
    compiled, eager = info.make(params, capturable=True), info.make(twin, capturable=True)
    compiled_step = torch.compile(lambda: compiled.step(), mode="reduce-overhead")
    for p in params:
        p.grad = torch.zeros_like(p)
        torch._dynamo.mark_static_address(p.grad)
    for k in range(6):
        for p, q in zip(params, twin):
            q.grad = torch.randn_like(q)
            p.grad.copy_(q.grad)
        if k == 0:
            compiled.step()
        else:
            compiled_step()
        eager.step()
    torch.cuda.synchronize()
    assert torch._dynamo.utils.counters["inductor"]["cudagraph_skips"] == 0
    for p, q in zip(params, twin):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
        for key, value in eager.state[q].items():
            torch.testing.assert_close(compiled.state[p][key], value, rtol=0, atol=0)


def test_compiled_step_uses_separate_states(fresh_dynamo):
    """Packed states (views of one buffer, made by eager steps) are copied out by
    the compiled step: aliased inputs that the op mutates would be copied in and
    out of the graph on every step."""
    params = _step_params([torch.float32])
    opt = FusedAdamW(params, lr=1e-2)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    assert all(opt.state[p]["exp_avg"]._base is not None for p in params)
    before = {id(p): opt.state[p]["exp_avg"].clone() for p in params}
    compiled_step = torch.compile(_step, backend="eager")
    compiled_step(opt)
    opt.step()  # eager again, after the states changed
    for p in params:
        assert opt.state[p]["exp_avg"]._base is None
        assert not torch.equal(opt.state[p]["exp_avg"], before[id(p)])
        assert opt.state[p]["step"].item() == 3


def _scaled_step(opt, grad_scale, found_inf):
    opt.step_scaled(grad_scale, found_inf)


def test_compiled_step_scaled(fresh_dynamo):
    """step_scaled (the Trainer's clipping factor and inf/NaN flag, as tensors)
    traces into the graph too: a taken step and a skipped one as in eager mode."""
    eager_params = _step_params([torch.float32, torch.bfloat16])
    compiled_params = [nn.Parameter(p.detach().clone()) for p in eager_params]
    eager, compiled = FusedAdamW(eager_params, lr=1e-2), FusedAdamW(compiled_params, lr=1e-2)
    compiled_step = torch.compile(_scaled_step, backend="aot_eager")
    for found_inf in (0.0, 1.0, 0.0):
        for p, q in zip(eager_params, compiled_params):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        scale, flag = torch.tensor([2.0]), torch.tensor([found_inf])
        eager.step_scaled(scale, flag)
        compiled_step(compiled, scale, flag)
    for p, q in zip(eager_params, compiled_params):
        torch.testing.assert_close(q, p, rtol=0, atol=0)
        assert compiled.state[q]["step"].item() == 2
    explanation = _explain(_scaled_step, compiled, scale, flag)
    assert (explanation.graph_count, explanation.graph_break_count) == (1, 0)


# ---------------------------------------------------------- a compiled training step


class TinyLM(nn.Module):
    """A one-block causal transformer language model. No biases: the key
    projection's gets gradients of rounding noise only (softmax ignores it),
    which Adam scales up to full steps, so eager and compiled runs would part."""

    def __init__(self, vocab=32, width=16, heads=2, context=8):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.position = nn.Parameter(torch.randn(context, width) * 0.02)
        self.block = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=0.0,
                                                batch_first=True, norm_first=True, bias=False)
        self.norm = nn.LayerNorm(width, bias=False)
        self.head = nn.Linear(width, vocab, bias=False)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(context))

    def forward(self, tokens):
        h = self.embed(tokens) + self.position[: tokens.shape[1]]
        h = self.block(h, src_mask=self.mask, is_causal=True)
        return self.head(self.norm(h))


def _train_step(model, opt, tokens, targets):
    loss = F.cross_entropy(model(tokens).flatten(0, 1), targets.flatten())
    loss.backward()
    opt.step()
    opt.zero_grad()
    return loss.detach()


def test_compiled_training_step(fresh_dynamo):
    torch.manual_seed(0)
    eager_model = TinyLM()
    compiled_model = TinyLM()
    compiled_model.load_state_dict(eager_model.state_dict())
    batches = [torch.randint(0, 32, (2, 9)) for _ in range(3)]

    # graph breaks: none more than the same step with torch's AdamW
    probe = TinyLM()
    tokens, targets = batches[0][:, :-1], batches[0][:, 1:]
    torch_breaks = _explain(_train_step, probe, torch.optim.AdamW(probe.parameters(),
                                                                 foreach=True),
                            tokens, targets).graph_break_count
    ours = _explain(_train_step, probe, FusedAdamW(probe.parameters()), tokens, targets)
    assert ours.graph_break_count <= torch_breaks, ours.break_reasons
    assert "torch.ops.pytrainer.adamw_" in "".join(graph.code for graph in ours.graphs)

    # the compiled step trains as the eager one
    eager_opt = FusedAdamW(eager_model.parameters(), lr=1e-2, weight_decay=0.1)
    compiled_opt = FusedAdamW(compiled_model.parameters(), lr=1e-2, weight_decay=0.1)
    step = torch.compile(_train_step)
    for batch in batches:
        tokens, targets = batch[:, :-1], batch[:, 1:]
        eager_loss = _train_step(eager_model, eager_opt, tokens, targets)
        compiled_loss = step(compiled_model, compiled_opt, tokens, targets)
        torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-5, atol=1e-5)
    for (name, p), q in zip(eager_model.named_parameters(), compiled_model.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5, msg=name)
        assert compiled_opt.state[q]["step"].item() == len(batches)


# ------------------------------------------------------- the Trainer's torch_compile


@pytest.mark.skipif("torch_compile" in pending_fields(),
                    reason="the Trainer's torch_compile is not implemented in this version")
def test_trainer_torch_compile(tmp_path, fresh_dynamo):
    """``TrainingArguments(torch_compile=True)`` with pytrainer's AdamW trains as
    the eager run, with no graph break (the Trainer compiles the model; the step
    stays on the eager path, around it)."""
    from pytrainer import Trainer
    from pytrainer.trainer import PaddingCollator
    from tests.trainer_fixtures import TokenDataset, TokenModel, args

    runs = {}
    for compiled in (False, True):
        model = TokenModel()
        trainer = Trainer(model, args(tmp_path / str(compiled), optim="adamw_custom_fused",
                                      torch_compile=compiled, per_device_train_batch_size=4,
                                      max_steps=3, logging_steps=1),
                          train_dataset=TokenDataset(12), data_collator=PaddingCollator())
        trainer.train()
        assert isinstance(trainer.optimizer, FusedAdamW)
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        runs[compiled] = losses, [p.detach().clone() for p in model.parameters()]
    assert not torch._dynamo.utils.counters["graph_break"]
    assert torch._dynamo.utils.counters["frames"]["ok"] > 0  # the model was compiled
    (eager_losses, eager_params), (losses, params) = runs[False], runs[True]
    assert len(losses) == 3
    torch.testing.assert_close(losses, eager_losses, rtol=1e-5, atol=1e-6)
    for p, q in zip(eager_params, params):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5)
