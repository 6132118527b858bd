"""The ops and the optimizers under torch.compile (issue 16).

- ``torch.library.opcheck`` of each op (schema, fake tensor, autograd
  registration, AOT dispatch) with the arguments a real step passes it.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from pytrainer import ops
from tests.optim_db import KERNEL_OPTIMS, one_per_class

pytestmark = pytest.mark.skipif(not ops.available(), reason="compiled kernels not available")

# ------------------------------------------------------------------------------ opcheck

#: shapes of the parameters of an opcheck call: empty and 0-d tensors among them
_OPCHECK_SHAPES = [(5, 7), (0,), (), (3,), (2, 0, 3), (2, 3, 4)]


class _Recorder:
    """Stands in for ``pytrainer._C``: records the op and the keyword arguments
    of the step's kernel call instead of running it."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda **kwargs: self.calls.append((name, kwargs))


def _recorded_call(info, device, monkeypatch, *, lr_tensor=False, scaler=None):
    """The op and the arguments the third step of ``info``'s optimizer passes it:
    parameters of every dtype it takes (one call), two real steps before."""
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
            recorder = _Recorder()
            monkeypatch.setattr(ops, "kernels", recorder)
        if scaler == "skip":  # folded clipping and inf check: found_inf set, grads kept
            opt.step_scaled(torch.tensor([0.5], device=device), torch.ones(1, device=device))
        elif scaler == "scale":  # what GradScaler sets around step()
            opt.grad_scale = torch.full((1,), 4.0, device=device)
            opt.found_inf = torch.zeros(1, device=device)
            opt.step()
        else:
            opt.step()
    (name, kwargs), = recorder.calls
    return getattr(torch.ops.pytrainer, name).default, kwargs


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
    op, kwargs = _recorded_call(info, device, monkeypatch, **case)
    assert {torch.float32, torch.bfloat16} <= {p.dtype for p in kwargs["params"]}
    assert any(p.numel() == 0 for p in kwargs["params"])
    assert (kwargs["found_inf"] is not None) == ("scaler" in case)
    assert (kwargs["lr_tensor"] is not None) == case.get("lr_tensor", False)
    results = torch.library.opcheck(op, (), kwargs)
    assert set(results.values()) == {"SUCCESS"}, results
