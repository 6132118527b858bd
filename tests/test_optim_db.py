"""What every optimizer of the database (tests/optim_db.py) must do: match its
reference step for every dtype it accepts, on random values and on parameters
of every kind of shape (0-d, empty, one element, odd sizes, matrices, batched);
refuse sparse gradients and parameters on two devices with a clear message."""
from __future__ import annotations

import pytest
import torch

from pytrainer import ops
from tests.helpers import random_like_param
from tests.optim_db import KERNEL_OPTIMS, OPTIMS, one_per_class, optims

pytestmark = pytest.mark.skipif(not ops.available(), reason="compiled kernels not built")

SHAPES = [(), (0,), (1,), (37,), (33, 65), (3, 5, 7), (1, 50)]


def _reference_state(info, opt, p) -> dict:
    """The optimizer's state of ``p`` as the reference takes it (zeros before the first step)."""
    state = opt.state.get(p)
    if not state:
        return {"step": 0, **{key: torch.zeros(shape, dtype=dtype, device=p.device)
                              for key, (shape, dtype) in info.states(p, info.kwargs).items()}}
    return {key: int(value) if key == "step" else value.clone() for key, value in state.items()}


def _assert_agrees(info, got, want, what):
    assert got.dtype == want.dtype, (what, got.dtype, want.dtype)
    got, want = got.detach(), want.to(got.device)
    if info.exact_on_cpu and got.device.type == "cpu":
        torch.testing.assert_close(got, want, rtol=0, atol=0, msg=what)
    else:
        torch.testing.assert_close(got, want, **info.tolerance(got.dtype), msg=what)


@optims()
def test_matches_its_reference_for_every_dtype_and_shape(device, info):
    gen = torch.Generator().manual_seed(5)
    for dtype in info.reference_dtypes or info.dtypes:
        params = [torch.nn.Parameter(random_like_param(s, dtype, device)) for s in SHAPES]
        opt = info.make(params)
        for step in range(1, 4):
            expected = []
            for index, p in enumerate(params):
                p.grad = torch.randn(p.shape, generator=gen).to(device, dtype)
                state = _reference_state(info, opt, p)
                new_p = info.reference(p.detach().clone(), p.grad, state, index, **info.kwargs)
                expected.append((new_p, state))
            opt.step()
            for p, (new_p, state) in zip(params, expected):
                what = f"{info.name}, {dtype}, shape {tuple(p.shape)}, step {step}"
                _assert_agrees(info, p, new_p, f"{what}: param")
                got = opt.state[p]
                assert int(got["step"]) == step == state["step"], what
                assert set(got) == set(state), what
                if info.factored and p.numel() == 0:
                    continue  # (the reference's means over an empty dim are NaN; ours stay 0)
                for key in set(state) - {"step"}:
                    _assert_agrees(info, got[key], state[key], f"{what}: {key}")


@optims(one_per_class(KERNEL_OPTIMS))
def test_sparse_grads_are_refused_with_a_clear_message(device, info):
    emb = torch.nn.Embedding(10, 4, sparse=True).to(device)
    opt = info.make(emb.parameters())
    emb(torch.tensor([1, 2], device=device)).sum().backward()
    with pytest.raises(RuntimeError, match=r"pytrainer::\w+: grads\[0\] is sparse; this optimizer "
                                           r"needs dense gradients \(torch.optim.SparseAdam"):
        opt.step()


@optims(one_per_class(KERNEL_OPTIMS))
def test_a_param_repeated_in_a_group_is_refused_naming_group_and_indices(device, info):
    """torch.optim only warns; the kernels would update the tensor twice at once."""
    a, b = (torch.nn.Parameter(torch.randn(5, 3, device=device)) for _ in range(2))
    with pytest.raises(ValueError, match=r"param group 0 lists the same tensor twice, at "
                                         r"params\[1\] and params\[3\] \(shape \(5, 3\)\)"):
        info.make([a, b, torch.nn.Parameter(torch.randn(2, device=device)), b])
    opt = info.make([a])
    with pytest.raises(ValueError, match=r"param group 1 lists the same tensor twice, at "
                                         r"params\[0\] and params\[1\]"):
        opt.add_param_group({"params": [b, b]})
    assert len(opt.param_groups) == 1


@optims(one_per_class(KERNEL_OPTIMS))
def test_the_op_refuses_params_that_share_memory(device, info):
    """The op's own check (direct calls, and aliasing views an optimizer cannot see)."""
    base = torch.randn(40, device=device)
    p, same, view = base[:20], base[:20], base[10:30]
    for a, b, what in ((p, p, "are the same tensor"), (p, view, "share memory"),
                       (p, same, "share memory")):
        ps = [torch.randn(4, device=device), a, b]
        opt2 = info.make([torch.nn.Parameter(t.clone()) for t in ps])
        for q in opt2.param_groups[0]["params"]:
            q.grad = torch.randn_like(q)
        _, _, lists, steps = opt2._group_tensors(opt2.param_groups[0])
        op = getattr(ops.kernels, opt2._op_name)
        with pytest.raises(RuntimeError, match=rf"params\[1\] and params\[2\] {what}; each "
                                               r"parameter must appear once"):
            op(params=ps, grads=[torch.randn_like(t) for t in ps],
               **{name: list(states) for name, states in lists.items()}, state_steps=steps,
               lr=1e-3, lr_tensor=None, grad_scale=None, found_inf=None,
               write_back_grads=False, table_slot=-1,
               **opt2._kernel_args(opt2.param_groups[0], 0))


@pytest.mark.cuda
@optims(one_per_class(KERNEL_OPTIMS))
def test_params_on_two_devices_in_one_group_are_refused(info):
    if not (torch.cuda.is_available() and ops.has_kernels("cuda")):
        pytest.skip("needs CUDA")
    a = torch.nn.Parameter(torch.randn(3))
    b = torch.nn.Parameter(torch.randn(3, device="cuda"))
    a.grad, b.grad = torch.randn_like(a), torch.randn_like(b)
    with pytest.raises(RuntimeError, match="one device"):
        info.make([a, b]).step()


def test_every_optimizer_is_in_the_database():
    import pytrainer.optim as optim
    ours = {getattr(optim, name) for name in optim.__all__
            if isinstance(getattr(optim, name), type)
            and issubclass(getattr(optim, name), torch.optim.Optimizer)}
    assert ours == {info.cls for info in OPTIMS}
