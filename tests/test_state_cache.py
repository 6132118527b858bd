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


# ------------------------------------------------------------------ table slots


def _one_per_class():
    seen, chosen = set(), []
    for info in KERNEL_OPTIMS:
        if info.cls not in seen:
            seen.add(info.cls)
            chosen.append(info)
    return chosen


@pytest.mark.parametrize("info", _one_per_class(), ids=repr)
def test_each_group_keeps_one_table_slot_freed_with_the_optimizer(info):
    """A group's device tables live in its own slot (csrc/table_slots.h), taken
    on its first step and kept across steps, so no number of groups makes steps
    rebuild tables; the slots are freed with the optimizer and never saved."""
    import gc
    C = ops.require()
    gc.collect()
    before = C.live_table_slots()
    groups = [{"params": [torch.nn.Parameter(torch.randn(4, 3))]} for _ in range(48)]
    for group in groups:
        group["params"][0].grad = torch.randn(4, 3)
    opt = info.make(groups)
    assert C.live_table_slots() == before  # nothing before the first step
    opt.step()
    slots = [opt._table_slot(group) for group in opt.param_groups]
    assert len(set(slots)) == 48 and C.live_table_slots() == before + 48
    opt.step()
    assert [opt._table_slot(group) for group in opt.param_groups] == slots
    assert C.live_table_slots() == before + 48
    again = pickle.loads(pickle.dumps(opt))  # a copy takes slots of its own
    assert "_table_slots" not in again.__dict__
    del again
    del opt
    gc.collect()
    assert C.live_table_slots() == before


def test_a_released_or_unknown_table_slot_is_refused():
    C = ops.require()
    slot = C.new_table_slot()
    C.release_table_slot(slot)
    p = torch.randn(3)
    args = dict(params=[p], grads=[torch.randn(3)], exp_avgs=[torch.zeros(3)],
                exp_avg_sqs=[torch.zeros(3)], max_exp_avg_sqs=[], state_steps=[torch.zeros(())],
                lr=1e-3, lr_tensor=None, beta1=0.9, beta2=0.999, weight_decay=0.0, eps=1e-8,
                amsgrad=False, maximize=False, grad_scale=None, found_inf=None,
                write_back_grads=False)
    for bad in (slot, 10**12):
        with pytest.raises(RuntimeError, match=rf"pytrainer::adamw_: table_slot={bad} is not a "
                                               r"live slot; pass -1 \(no slot\)"):
            C.adamw_(**args, table_slot=bad)
    before = p.clone()
    C.adamw_(**args, table_slot=-1)  # no slot
    assert not torch.equal(p, before)
