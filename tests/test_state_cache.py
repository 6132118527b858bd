"""The per-group lists kept between steps never outlive a change of the state."""
from __future__ import annotations

import collections
import copy
import io
import pickle

import pytest
import torch

from pytrainer import ops
from pytrainer.optim import AnyPrecisionAdamW
from tests.optim_db import KERNEL_OPTIMS

pytestmark = pytest.mark.skipif(not ops.available(), reason="compiled kernels not built")
every_optimizer = pytest.mark.parametrize("info", KERNEL_OPTIMS, ids=repr)


def setup(info, n=3):
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(5)) for _ in range(n)]
    for p in params:
        p.grad = torch.ones_like(p)
    opt = info.make(params)
    opt.step()
    opt.step()  # the second step runs from the cached lists
    return params, opt


@every_optimizer
def test_replacing_a_state_tensor_is_seen(info):
    params, opt = setup(info)
    key = next(iter(info.states(params[1], info.kwargs)))
    fresh = torch.full_like(opt.state[params[1]][key], 7.0)
    opt.state[params[1]][key] = fresh
    opt.step()
    assert not torch.equal(fresh, torch.full_like(fresh, 7.0))  # updated in place by the kernel


@every_optimizer
def test_replacing_a_whole_parameter_state_is_seen(info):
    params, opt = setup(info)
    opt.state[params[0]] = {"step": torch.tensor(0.0), **{
        key: torch.zeros(shape, dtype=dtype)
        for key, (shape, dtype) in info.states(params[0], info.kwargs).items()}}
    opt.step()
    assert opt.state[params[0]]["step"].item() == 1
    assert opt.state[params[1]]["step"].item() == 3


@every_optimizer
@pytest.mark.parametrize("change", ["clear", "del", "pop", "reassign"])
def test_dropping_states_recreates_them(info, change):
    params, opt = setup(info)
    if change == "clear":
        opt.state.clear()
    elif change == "del":
        del opt.state[params[2]]
    elif change == "pop":
        opt.state.pop(params[2])
    else:
        opt.state = collections.defaultdict(dict)
    opt.step()
    assert opt.state[params[2]]["step"].item() == 1


@every_optimizer
def test_a_parameter_without_grad_is_skipped_then_stepped_again(info):
    params, opt = setup(info)
    saved = params[1].grad
    params[1].grad = None
    opt.step()
    assert opt.state[params[1]]["step"].item() == 2
    assert opt.state[params[0]]["step"].item() == 3
    params[1].grad = saved
    opt.step()
    assert opt.state[params[1]]["step"].item() == 3


@every_optimizer
def test_new_param_group_and_loaded_state_are_seen(info):
    params, opt = setup(info)
    extra = torch.nn.Parameter(torch.randn(4))
    extra.grad = torch.ones_like(extra)
    opt.add_param_group({"params": [extra]})
    opt.step()
    assert opt.state[extra]["step"].item() == 1
    state = copy.deepcopy(opt.state_dict())
    opt.step()
    opt.load_state_dict(state)
    opt.step()
    assert opt.state[params[0]]["step"].item() == 4
    assert opt.state[extra]["step"].item() == 2


@every_optimizer
def test_state_dicts_and_copies_hold_plain_dicts(info):
    params, opt = setup(info)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    assert all(type(v) is dict for v in loaded["state"].values())
    assert type(pickle.loads(pickle.dumps(opt.state[params[0]]))) is dict
    clone = copy.deepcopy(opt)  # its own copies of the params and states
    own = clone.param_groups[0]["params"][0]
    own.grad = torch.ones_like(own)
    clone.step()
    assert clone.state[own]["step"].item() == 3
    assert opt.state[params[0]]["step"].item() == 2


def test_anyprecision_uses_the_cache_too():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(6).bfloat16()) for _ in range(2)]
    for p in params:
        p.grad = torch.ones_like(p)
    opt = AnyPrecisionAdamW(params, use_kahan_summation=True)
    for _ in range(3):
        opt.step()
    opt.state[params[0]]["compensation"] = torch.zeros(6, dtype=torch.bfloat16)
    opt.step()
    assert opt.state[params[0]]["step"].item() == 4
