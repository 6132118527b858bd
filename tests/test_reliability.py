"""No lost work, no unsafe loading, clear errors: checkpoints under SIGKILL,
damaged checkpoints, pickles that would run code, NaN/inf updates."""
from __future__ import annotations

import math
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pytrainer import Trainer
from pytrainer.trainer import CheckpointError, NonFiniteLossError, TrainerCallback
from pytrainer.trainer.checkpoint import latest_checkpoint, load_model_weights, sorted_checkpoints
from pytrainer.trainer.nonfinite import NonFiniteWatch, Reading
from tests.trainer_fixtures import RegressionDataset, RegressionModel, args as make_args

ROOT = Path(__file__).resolve().parents[1]


def params_of(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def run_args(tmp_path, **kwargs):
    base = dict(per_device_train_batch_size=4, gradient_accumulation_steps=2, save_strategy="steps",
                save_steps=4, max_steps=12, optim="adamw_custom_fused", learning_rate=0.05)
    base.update(kwargs)
    return make_args(tmp_path, **base)


# ------------------------------------------------------------------ SIGKILL while saving
KILLED_RUN = """
import sys, time
from pathlib import Path
import pytrainer.trainer.checkpoint as ckpt
from pytrainer import Trainer
from tests.trainer_fixtures import RegressionDataset, RegressionModel, args

out = Path(sys.argv[1])
real_write = ckpt._write

def slow_write(path, write):
    real_write(path, write)
    if path.parent.name == ".tmp-checkpoint-8" and path.name == "model.safetensors":
        (out / "paused").write_text("x")
        time.sleep(120)  # the test kills us here, mid-checkpoint

ckpt._write = slow_write
a = args(out, per_device_train_batch_size=4, gradient_accumulation_steps=2,
         save_strategy="steps", save_steps=4, max_steps=12, optim="adamw_custom_fused",
         learning_rate=0.05)
Trainer(RegressionModel(random=True), a, train_dataset=RegressionDataset(64)).train()
"""


def test_sigkill_while_writing_a_checkpoint_loses_nothing(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    process = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(out)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (out / "paused").exists():
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        assert time.time() < deadline, "the run never reached checkpoint 8"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)

    # the previous checkpoint is intact, the half-written one is no checkpoint
    assert [Path(p).name for p in sorted_checkpoints(str(out))] == ["checkpoint-4"]
    assert (out / ".tmp-checkpoint-8").is_dir()
    assert latest_checkpoint(str(out)).endswith("checkpoint-4")

    resumed = Trainer(RegressionModel(random=True), run_args(out),
                      train_dataset=RegressionDataset(64))
    resumed.train(resume_from_checkpoint=True)
    assert not (out / ".tmp-checkpoint-8").exists()  # the next save cleaned it up

    full = Trainer(RegressionModel(random=True), run_args(tmp_path / "full"),
                   train_dataset=RegressionDataset(64))
    full.train()
    a, b = params_of(full.model), params_of(resumed.model)
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_rotation_never_deletes_the_checkpoint_being_resumed_from(tmp_path):
    Trainer(RegressionModel(), run_args(tmp_path, max_steps=8),
            train_dataset=RegressionDataset(64)).train()
    again = Trainer(RegressionModel(), run_args(tmp_path, max_steps=16, save_total_limit=1),
                    train_dataset=RegressionDataset(64))
    again.train(resume_from_checkpoint=str(tmp_path / "checkpoint-4"))
    kept = [Path(p).name for p in sorted_checkpoints(str(tmp_path))]
    assert kept == ["checkpoint-4", "checkpoint-16"]


# ------------------------------------------------------------------ damaged checkpoints
@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("good")
    Trainer(RegressionModel(), run_args(out, max_steps=4),
            train_dataset=RegressionDataset(64)).train()
    return out / "checkpoint-4"


def damaged(good, tmp_path, damage):
    copy = tmp_path / "checkpoint-4"
    shutil.copytree(good, copy)
    damage(copy)
    return copy


def resume_from(path, tmp_path, model=None):
    trainer = Trainer(model or RegressionModel(), run_args(tmp_path / "resume"),
                      train_dataset=RegressionDataset(64))
    trainer.train(resume_from_checkpoint=str(path))


def _truncate(name, fraction=0.5):
    def damage(folder):
        path = folder / name
        data = path.read_bytes()
        path.write_bytes(data[:int(len(data) * fraction)])
    return damage


@pytest.mark.parametrize("damage, message", [
    (_truncate("model.safetensors"), r"model\.safetensors is corrupted"),
    (lambda f: (f / "optimizer.pt").unlink(), r"optimizer\.pt is missing"),
    (_truncate("optimizer.pt"), r"optimizer\.pt is corrupted"),
    (lambda f: (f / "trainer_state.json").write_text("{not json"),
     r"trainer_state\.json is not valid JSON"),
    (lambda f: (f / "trainer_state.json").write_text('{"global_step": "many"}'),
     r"trainer_state\.json: global_step must be a non-negative integer"),
    (lambda f: (f / "trainer_state.json").write_text('{"bogus_field": 1}'),
     r"trainer_state\.json has unknown trainer state fields: bogus_field"),
    (lambda f: (f / "model.safetensors").unlink(), r"it has no model weights"),
], ids=["truncated-weights", "no-optimizer", "truncated-optimizer", "garbage-state",
        "wrong-type-state", "unknown-state-field", "no-weights"])
def test_damaged_checkpoints_give_clear_errors(good_checkpoint, tmp_path, damage, message):
    path = damaged(good_checkpoint, tmp_path, damage)
    with pytest.raises(CheckpointError, match=message):
        resume_from(path, tmp_path)


class _RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {_RunsCode.marker}",))


# torch warns that the hostile file uses a newer pickle protocol before refusing it.
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_pickle_that_would_run_code_is_refused(good_checkpoint, tmp_path):
    _RunsCode.marker = str(tmp_path / "pwned")
    path = damaged(good_checkpoint, tmp_path, lambda f: (f / "optimizer.pt").write_bytes(
        pickle.dumps({"state": {}, "param_groups": [], "payload": _RunsCode()})))
    with pytest.raises(CheckpointError, match="refuses to load"):
        resume_from(path, tmp_path)
    assert not (tmp_path / "pwned").exists()


def test_a_checkpoint_of_another_model_lists_the_differences(good_checkpoint, tmp_path):
    class Other(RegressionModel):
        def __init__(self):
            super().__init__()
            self.b = torch.nn.Parameter(torch.zeros(3))
            self.c = torch.nn.Parameter(torch.zeros(2))

    with pytest.raises(CheckpointError) as error:
        resume_from(good_checkpoint, tmp_path, model=Other())
    text = str(error.value)
    assert "shape of b: checkpoint (), model (3,)" in text
    assert "missing in the checkpoint: c (2,)" in text


# ------------------------------------------------------------------ NaN and inf
class NanAt(RegressionModel):
    """The loss is NaN at the given forward calls (one micro-batch per step)."""

    def __init__(self, bad_calls):
        super().__init__()
        self.bad_calls = set(bad_calls)
        self.calls = 0

    def forward(self, input_x, labels=None):
        self.calls += 1
        out = super().forward(input_x, labels)
        if self.calls in self.bad_calls:
            out["loss"] = out["loss"] * float("nan")
        return out


class Snapshots(TrainerCallback):
    def __init__(self):
        self.params = {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.params[state.global_step] = params_of(model)


@pytest.mark.parametrize("optim", ["adamw_custom_fused", "adamw_torch_fused", "adamw_torch"])
def test_a_nan_step_is_skipped_logged_and_training_goes_on(tmp_path, optim):
    snapshots = Snapshots()
    trainer = Trainer(NanAt({5}), make_args(tmp_path, optim=optim, max_steps=8,
                                           per_device_train_batch_size=8),
                      train_dataset=RegressionDataset(64), callbacks=[snapshots])
    out = trainer.train()
    assert out.global_step == 8
    p = snapshots.params
    assert all(torch.equal(p[4][n], p[5][n]) for n in p[4])  # step 5 changed nothing
    assert not all(torch.equal(p[5][n], p[6][n]) for n in p[5])  # step 6 trained again
    assert {"nonfinite_update_skipped": 5, "step": 5} in [
        {k: v for k, v in e.items() if k != "epoch"} for e in trainer.state.log_history]
    assert all(torch.isfinite(t).all() for t in p[8].values())


def test_repeated_nans_stop_the_run_with_the_last_good_state_saved(tmp_path):
    snapshots = Snapshots()
    trainer = Trainer(NanAt(range(4, 100)), make_args(tmp_path, optim="adamw_custom_fused",
                                                      max_steps=20, nonfinite_steps_limit=3,
                                                      per_device_train_batch_size=8),
                      train_dataset=RegressionDataset(64), callbacks=[snapshots])
    with pytest.raises(NonFiniteLossError, match="3 consecutive updates") as error:
        trainer.train()
    assert "checkpoint-6" in str(error.value)
    saved = Trainer(RegressionModel(), make_args(tmp_path / "x"))
    from pytrainer.trainer.checkpoint import load_model_weights
    load_model_weights(saved.model, str(tmp_path / "checkpoint-6"))
    good = snapshots.params[3]
    assert all(torch.equal(good[n], p) for n, p in params_of(saved.model).items())


STEPPINGS = {  # how the update reaches the optimizer (pytrainer/trainer/stepping.py)
    "step_scaled": dict(optim="adamw_custom_fused"),
    "fused-protocol": dict(optim="adamw_torch_fused"),
    "plain": dict(optim="adamw_torch"),
    "fp16-grad-scaler": dict(optim="adamw_custom_fused", fp16=True),
}


@pytest.mark.parametrize("stepping", STEPPINGS)
def test_nan_at_an_inner_and_at_the_last_step(tmp_path, device, stepping):
    """Each skipped update is logged, also the last one (on CUDA the flags are read
    a few updates late, and the rest at the end); with fp16 a NaN loss counts as a
    skipped update; nonfinite_steps_limit stops the run also when it is reached
    at the last step."""
    def trainer(out, bad, **kwargs):
        snapshots = Snapshots()
        a = make_args(out, max_steps=8, per_device_train_batch_size=8,
                      use_cpu=device.type == "cpu", **STEPPINGS[stepping], **kwargs)
        return Trainer(NanAt(bad), a, train_dataset=RegressionDataset(64),
                       callbacks=[snapshots]), snapshots

    run, snapshots = trainer(tmp_path / "inner", {3, 8}, nonfinite_steps_limit=2)
    assert run.device.type == device.type
    assert run.train().global_step == 8
    p = snapshots.params
    assert all(torch.equal(p[2][n], p[3][n]) for n in p[2])
    assert not all(torch.equal(p[3][n], p[4][n]) for n in p[3])
    assert all(torch.equal(p[7][n], p[8][n]) for n in p[7])
    skips = [(e["nonfinite_update_skipped"], e["step"]) for e in run.state.log_history
             if "nonfinite_update_skipped" in e]
    assert skips == [(3, 3), (8, 8)]
    losses = [e["loss"] for e in run.state.log_history if "loss" in e]
    assert losses and all(math.isfinite(x) for x in losses)

    run, snapshots = trainer(tmp_path / "last", {7, 8}, nonfinite_steps_limit=2)
    with pytest.raises(NonFiniteLossError, match=r"2 consecutive updates \(through step 8\)"):
        run.train()
    assert [e["nonfinite_update_skipped"] for e in run.state.log_history
            if "nonfinite_update_skipped" in e] == [7, 8]
    saved = RegressionModel()
    load_model_weights(saved, str(tmp_path / "last" / "checkpoint-8"))
    good = snapshots.params[6]
    assert all(torch.equal(good[n], p.to(good[n].device)) for n, p in params_of(saved).items())


def test_the_watch_reads_every_flag_in_order_and_late():
    """The bookkeeping of CUDA's lagged reads, on CPU tensors: every update's flag
    is read once, in order, ``lag`` updates after it; drain reads the rest."""
    watch = NonFiniteWatch(torch.device("cpu"), streak=1, lag=2)
    flags = [True, True, False, True, True, True]
    readings = []
    for step, flag in enumerate(flags, start=1):
        due = watch.record(step, torch.tensor(flag))
        assert [r.step for r in due] == ([step - 2] if step > 2 else [])
        readings += due
    assert watch.streak == 1  # read through step 4
    readings += watch.drain()
    assert watch.drain() == []
    assert readings == [Reading(1, True, 2), Reading(2, True, 3), Reading(3, False, 0),
                        Reading(4, True, 1), Reading(5, True, 2), Reading(6, True, 3)]
    assert watch.streak == 3
    immediate = NonFiniteWatch(torch.device("cpu"))
    assert immediate.lag == 0 and immediate.record(1, torch.tensor(True)) == [Reading(1, True, 1)]
