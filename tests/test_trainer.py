"""Trainer behaviour: step accounting, accumulation, reproducibility, resume,
checkpoints, evaluation and prediction (CPU)."""
from __future__ import annotations

import json
import math
import os
import types

import pytest
import torch

from pytrainer import Trainer, TrainingArguments
from pytrainer.trainer import CheckpointError, EvalPrediction, PaddingCollator, TrainerCallback
from pytrainer.trainer.checkpoint import rotate_checkpoints, sorted_checkpoints
from tests.trainer_fixtures import (RegressionDataset, RegressionModel, TokenDataset, TokenModel,
                                    args as make_args)


def params_of(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def assert_params_close(a, b, rel=1e-6):
    scale = max(max(t.abs().max().item() for t in a.values()), 1e-12)
    for name in a:
        assert (a[name] - b[name]).abs().max().item() <= rel * scale, name


def sgd_trainer(tmp_path, dataset, model, collator=None, **kwargs):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    a = make_args(tmp_path, lr_scheduler_type="constant", max_grad_norm=0.0, **kwargs)
    return Trainer(model, a, train_dataset=dataset, optimizers=(optimizer, None),
                   data_collator=collator)


# ------------------------------------------------------------------ step accounting
@pytest.mark.parametrize("kwargs, steps", [
    (dict(), 24),
    (dict(num_train_epochs=1.5), 12),
    (dict(max_steps=10), 10),
])
def test_number_of_steps(tmp_path, kwargs, steps):
    trainer = Trainer(RegressionModel(), make_args(tmp_path, **kwargs),
                      train_dataset=RegressionDataset(64))
    assert trainer.train().global_step == steps


def test_accumulation_longer_than_an_epoch_makes_one_step_per_epoch(tmp_path):
    # 32 samples / batch 8 = 4 batches per epoch, accumulation 5: a partial window each epoch
    trainer = Trainer(RegressionModel(), make_args(tmp_path, gradient_accumulation_steps=5),
                      train_dataset=RegressionDataset(32))
    assert trainer.train().global_step == 3
    trainer = Trainer(RegressionModel(), make_args(tmp_path, gradient_accumulation_steps=5,
                                                   max_steps=3),
                      train_dataset=RegressionDataset(32))
    assert trainer.train().global_step == 3


def test_epoch_counter_and_fractional_last_epoch(tmp_path):
    trainer = Trainer(RegressionModel(), make_args(tmp_path, num_train_epochs=1.5, logging_steps=1),
                      train_dataset=RegressionDataset(64))
    trainer.train()
    epochs = [e["epoch"] for e in trainer.state.log_history if "loss" in e]
    assert epochs[0] == pytest.approx(1 / 8) and epochs[-1] == pytest.approx(1.5)


# ------------------------------------------------------------------ accumulation
@pytest.mark.parametrize("samples", [64, 40])  # 40: a partial last window each epoch
def test_batch_8x1_equals_2x4(tmp_path, samples):
    big = sgd_trainer(tmp_path / "a", RegressionDataset(samples), RegressionModel(),
                      per_device_train_batch_size=8)
    small = sgd_trainer(tmp_path / "b", RegressionDataset(samples), RegressionModel(),
                        per_device_train_batch_size=2, gradient_accumulation_steps=4)
    assert big.train().global_step == small.train().global_step
    assert_params_close(params_of(big.model), params_of(small.model))


def test_padded_token_labels_8x1_equals_2x4(tmp_path):
    """A token-level loss over 4 micro-batches of 2 equals the loss over 8, whatever
    the padding: the window's target count reaches the model (num_items_in_batch)."""
    runs = []
    for name, bs, ga in (("a", 8, 1), ("b", 2, 4)):
        trainer = sgd_trainer(tmp_path / name, TokenDataset(32), TokenModel(),
                              per_device_train_batch_size=bs, gradient_accumulation_steps=ga,
                              collator=PaddingCollator(), logging_steps=1)
        trainer.train()
        runs.append(trainer)
    assert_params_close(params_of(runs[0].model), params_of(runs[1].model))
    losses = [[e["loss"] for e in t.state.log_history if "loss" in e] for t in runs]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_mean_of_micro_batch_means_is_what_the_count_fixes(tmp_path):
    """Without the count (a model that takes no num_items_in_batch) padded windows
    differ: the check above is not vacuous."""
    runs = []
    for name, bs, ga in (("a", 8, 1), ("b", 2, 4)):
        trainer = sgd_trainer(tmp_path / name, TokenDataset(32), TokenModel(accept_count=False),
                              per_device_train_batch_size=bs, gradient_accumulation_steps=ga,
                              collator=PaddingCollator())
        trainer.train()
        runs.append(params_of(trainer.model))
    diff = max((runs[0][n] - runs[1][n]).abs().max().item() for n in runs[0])
    assert diff > 1e-4


def test_compute_loss_func_gets_the_window_count(tmp_path):
    seen = []

    def loss_func(outputs, labels, num_items_in_batch=None):
        seen.append(int(num_items_in_batch))
        logits = outputs["logits"]
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(),
                                                 ignore_index=-100, reduction="sum") / num_items_in_batch

    data = TokenDataset(16)
    model = TokenModel(accept_count=False)
    a = make_args(tmp_path, per_device_train_batch_size=2, gradient_accumulation_steps=4,
                  max_steps=1)
    Trainer(model, a, train_dataset=data, data_collator=PaddingCollator(),
            compute_loss_func=loss_func).train()
    order = torch.randperm(16, generator=torch.Generator().manual_seed(42)).tolist()[:8]
    assert seen == [sum(len(data[i]["labels"]) for i in order)] * 4


def test_model_output_forms(tmp_path):
    class Wrapped(RegressionModel):
        def __init__(self, form):
            super().__init__()
            self.form = form

        def forward(self, input_x, labels=None):
            out = super().forward(input_x, labels)
            if self.form == "tuple":
                return out["loss"], out["logits"]
            if self.form == "object":
                return types.SimpleNamespace(loss=out["loss"], logits=out["logits"])
            return out

    results = []
    for form in ("dict", "tuple", "object"):
        trainer = Trainer(Wrapped(form), make_args(tmp_path / form, max_steps=5),
                          train_dataset=RegressionDataset(64))
        trainer.train()
        results.append(params_of(trainer.model))
    assert all(torch.equal(results[0][n], r[n]) for r in results[1:] for n in results[0])


# ------------------------------------------------------------------ reproducibility
def test_same_seed_same_parameters_other_seed_other_parameters(tmp_path):
    def run(seed, name):
        trainer = Trainer(RegressionModel(random=True), make_args(tmp_path / name, seed=seed),
                          train_dataset=RegressionDataset(64))
        trainer.train()
        return params_of(trainer.model)

    a, b, c = run(42, "a"), run(42, "b"), run(314, "c")
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert any(not torch.equal(a[n], c[n]) for n in a)


def test_data_order_depends_on_data_seed_not_batching(tmp_path):
    seen = {}

    class Record(RegressionModel):
        def forward(self, input_x, labels=None):
            seen.setdefault(self.tag, []).extend(input_x.tolist())
            return super().forward(input_x, labels)

    for tag, bs, ga in (("a", 8, 1), ("b", 2, 4)):
        model = Record()
        model.tag = tag
        Trainer(model, make_args(tmp_path / tag, per_device_train_batch_size=bs,
                                 gradient_accumulation_steps=ga, data_seed=5),
                train_dataset=RegressionDataset(64)).train()
    assert seen["a"] == seen["b"]


# ------------------------------------------------------------------ resume
def resume_args(tmp_path, **kwargs):
    base = dict(per_device_train_batch_size=4, gradient_accumulation_steps=2, save_strategy="steps",
                save_steps=4, logging_steps=3, optim="adamw_custom_fused", learning_rate=0.05,
                warmup_steps=2, max_grad_norm=0.5)
    base.update(kwargs)
    return make_args(tmp_path, **base)


VOLATILE = ("train_runtime", "train_samples_per_second", "train_steps_per_second")


def history(trainer):
    return [{k: v for k, v in e.items() if k not in VOLATILE} for e in trainer.state.log_history]


@pytest.mark.parametrize("checkpoint", ["checkpoint-12", "checkpoint-8"],
                         ids=["mid-epoch", "epoch-boundary"])
def test_resume_equals_the_uninterrupted_run(tmp_path, checkpoint):
    full = Trainer(RegressionModel(random=True), resume_args(tmp_path / "full"),
                   train_dataset=RegressionDataset(64))
    full.train()
    assert full.state.global_step == 24  # 16 micro-batches of 4 per epoch, windows of 2

    resumed = Trainer(RegressionModel(random=True), resume_args(tmp_path / "full"),
                      train_dataset=RegressionDataset(64))
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / checkpoint))
    a, b = params_of(full.model), params_of(resumed.model)
    assert all(torch.equal(a[n], b[n]) for n in a), (a, b)
    assert history(full) == history(resumed)


def test_resume_true_picks_the_latest_checkpoint(tmp_path):
    a = resume_args(tmp_path, max_steps=10)
    first = Trainer(RegressionModel(), a, train_dataset=RegressionDataset(64))
    first.train()
    assert [os.path.basename(p) for p in sorted_checkpoints(str(tmp_path))] == \
        ["checkpoint-4", "checkpoint-8", "checkpoint-10"]
    # a longer run resumed from the latest: starts at step 10
    again = Trainer(RegressionModel(), resume_args(tmp_path, max_steps=12),
                    train_dataset=RegressionDataset(64))
    seen = []

    class Steps(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            seen.append(state.global_step)

    again.add_callback(Steps())
    again.train(resume_from_checkpoint=True)
    assert seen == [11, 12]


def test_resume_errors(tmp_path):
    trainer = Trainer(RegressionModel(), make_args(tmp_path), train_dataset=RegressionDataset(64))
    with pytest.raises(CheckpointError, match="No valid checkpoint found in output directory"):
        trainer.train(resume_from_checkpoint=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="Can't find a valid checkpoint at"):
        trainer.train(resume_from_checkpoint=str(empty))


# ------------------------------------------------------------------ checkpoints
def test_checkpoint_layout(tmp_path):
    a = resume_args(tmp_path, max_steps=4)
    Trainer(RegressionModel(), a, train_dataset=RegressionDataset(64)).train()
    folder = tmp_path / "checkpoint-4"
    assert sorted(os.listdir(folder)) == sorted([
        "model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth",
        "trainer_state.json", "training_args.json"])
    restored = TrainingArguments.from_json_file(folder / "training_args.json")
    assert restored.to_dict() == a.to_dict()
    state = json.loads((folder / "trainer_state.json").read_text())
    assert state["global_step"] == 4 and state["max_steps"] == 4


def test_checkpoint_without_safetensors_and_with_tied_weights(tmp_path):
    class Tied(TokenModel):
        def __init__(self):
            super().__init__(dim=11)
            self.head.weight = self.embed.weight  # tied

    a = make_args(tmp_path, max_steps=3, save_strategy="steps", save_steps=3, save_safetensors=False,
                  per_device_train_batch_size=4)
    trainer = Trainer(Tied(), a, train_dataset=TokenDataset(16), data_collator=PaddingCollator())
    trainer.train()
    assert (tmp_path / "checkpoint-3" / "pytorch_model.bin").is_file()
    b = make_args(tmp_path, max_steps=3, save_strategy="steps", save_steps=3,
                  per_device_train_batch_size=4)
    trainer = Trainer(Tied(), b, train_dataset=TokenDataset(16), data_collator=PaddingCollator())
    trainer.train()  # safetensors with the tied weight stored once
    fresh = Tied()
    from pytrainer.trainer.checkpoint import load_model_weights
    load_model_weights(fresh, str(tmp_path / "checkpoint-3"))
    assert fresh.head.weight is fresh.embed.weight
    assert torch.equal(fresh.embed.weight, trainer.model.embed.weight)


@pytest.mark.parametrize("limit, best, kept", [
    (2, None, [20, 25]),
    (2, 5, [5, 25]),
    (1, 25, [25]),
    (1, 5, [5, 25]),
])
def test_checkpoint_rotation(tmp_path, limit, best, kept):
    for step in (5, 10, 15, 20, 25):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "trainer_state.json").write_text("{}")
    best_path = str(tmp_path / f"checkpoint-{best}") if best else None
    rotate_checkpoints(str(tmp_path), limit, keep={best_path})
    assert [int(p.rsplit("-", 1)[1]) for p in sorted_checkpoints(str(tmp_path))] == kept


def test_load_best_model_at_end(tmp_path):
    a = make_args(tmp_path, eval_strategy="steps", eval_steps=5, save_strategy="steps",
                  save_steps=5, max_steps=11, load_best_model_at_end=True, save_total_limit=2,
                  learning_rate=0.5)  # a large lr: the loss bounces, the best is not the last
    trainer = Trainer(RegressionModel(), a, train_dataset=RegressionDataset(64),
                      eval_dataset=RegressionDataset(32, seed=1))
    trainer.train()
    evals = {e["step"]: e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e}
    best_step = min(evals, key=evals.get)
    assert trainer.state.best_model_checkpoint.endswith(f"checkpoint-{best_step}")
    assert trainer.state.best_metric == evals[best_step]
    assert trainer.evaluate()["eval_loss"] == pytest.approx(evals[best_step])
    kept = {int(p.rsplit("-", 1)[1]) for p in sorted_checkpoints(str(tmp_path))}
    assert kept == {best_step, 11}


# ------------------------------------------------------------------ evaluation
@pytest.mark.parametrize("strategy, expected", [("steps", 4), ("epoch", 3), ("no", 0)])
def test_evaluations_per_strategy(tmp_path, strategy, expected):
    a = make_args(tmp_path, eval_strategy=strategy, eval_steps=5)
    trainer = Trainer(RegressionModel(), a, train_dataset=RegressionDataset(64),
                      eval_dataset=RegressionDataset(16, seed=1) if strategy != "no" else None)
    trainer.train()
    assert sum("eval_loss" in e for e in trainer.state.log_history) == expected


def test_eval_strategy_without_eval_dataset_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="needs an eval_dataset"):
        Trainer(RegressionModel(), make_args(tmp_path, eval_strategy="steps", eval_steps=5))


def test_evaluate_and_compute_metrics(tmp_path):
    def metrics(pred: EvalPrediction):
        return {"mae": float(abs(pred.predictions - pred.label_ids).mean())}

    data = RegressionDataset(20, seed=3)
    trainer = Trainer(RegressionModel(), make_args(tmp_path, per_device_eval_batch_size=6),
                      train_dataset=RegressionDataset(64), eval_dataset=data,
                      compute_metrics=metrics)
    trainer.train()
    result = trainer.evaluate()
    with torch.no_grad():
        y = data.x * trainer.model.a + trainer.model.b
    assert result["eval_loss"] == pytest.approx(torch.nn.functional.mse_loss(y, data.y).item(),
                                                rel=1e-5)
    assert result["eval_mae"] == pytest.approx((y - data.y).abs().mean().item(), rel=1e-5)
    assert {"eval_runtime", "eval_samples_per_second", "eval_steps_per_second", "epoch"} <= set(result)


def test_predict(tmp_path):
    data = RegressionDataset(13, seed=4)
    trainer = Trainer(RegressionModel(), make_args(tmp_path, per_device_eval_batch_size=5),
                      train_dataset=RegressionDataset(64))
    trainer.train()
    out = trainer.predict(data)
    with torch.no_grad():
        y = (data.x * trainer.model.a + trainer.model.b).numpy()
    assert out.predictions.shape == (13,)
    assert out.predictions == pytest.approx(y, rel=1e-6)
    assert out.label_ids == pytest.approx(data.y.numpy())
    assert "test_loss" in out.metrics and "test_runtime" in out.metrics
    assert not any("test_loss" in e for e in trainer.state.log_history)


def test_predictions_of_different_lengths_are_padded(tmp_path):
    trainer = Trainer(TokenModel(), make_args(tmp_path, per_device_eval_batch_size=3),
                      data_collator=PaddingCollator())
    out = trainer.predict(TokenDataset(7))
    assert out.predictions.shape[0] == 7 and out.label_ids.shape[0] == 7
    assert (out.label_ids == -100).any()


# ------------------------------------------------------------------ the loop's host reads
def test_no_host_reads_per_micro_batch(tmp_path, monkeypatch):
    """The number of .item() calls does not grow with the accumulation steps."""
    counts = {}
    real_item = torch.Tensor.item

    def counting_item(self):
        counts[key] = counts.get(key, 0) + 1
        return real_item(self)

    monkeypatch.setattr(torch.Tensor, "item", counting_item)
    for key, (bs, ga) in {"1": (8, 1), "4": (2, 4)}.items():
        Trainer(RegressionModel(), make_args(tmp_path / key, per_device_train_batch_size=bs,
                                             gradient_accumulation_steps=ga, logging_steps=100,
                                             optim="adamw_custom_fused"),
                train_dataset=RegressionDataset(64)).train()
    assert counts["1"] == counts["4"]


# ------------------------------------------------------------------ mixed precision
@pytest.fixture
def deterministic(device):
    """On CUDA, nn.Embedding's backward adds with atomics (an order that varies from
    run to run) unless torch is asked for its deterministic algorithms."""
    if device.type == "cuda":
        torch.use_deterministic_algorithms(True, warn_only=True)
    yield
    torch.use_deterministic_algorithms(False)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_and_resumes(tmp_path, precision, device, deterministic):
    """Autocast (on the CPU and on CUDA); fp16 adds a GradScaler whose state is
    checkpointed. The resumed run ends bit for bit where the uninterrupted one does."""
    def trainer(out, **kwargs):
        return Trainer(TokenModel(), make_args(out, **{precision: True}, max_steps=8,
                                               optim="adamw_custom_fused", learning_rate=1e-2,
                                               save_strategy="steps", save_steps=4,
                                               per_device_train_batch_size=4,
                                               use_cpu=device.type == "cpu", **kwargs),
                       train_dataset=TokenDataset(32), data_collator=PaddingCollator())

    full = trainer(tmp_path / "full")
    assert full.device.type == device.type
    start = params_of(full.model)
    full.train()
    losses = [e["loss"] for e in full.state.log_history if "loss" in e]
    assert losses and all(math.isfinite(x) for x in losses)
    assert any(not torch.equal(start[n], p) for n, p in params_of(full.model).items())
    assert (tmp_path / "full" / "checkpoint-4" / "scaler.pt").is_file() == (precision == "fp16")
    resumed = trainer(tmp_path / "full")
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-4"))
    a, b = params_of(full.model), params_of(resumed.model)
    assert all(torch.equal(a[n], b[n]) for n in a)


# ------------------------------------------------------------------ integrations
def tensorboard_scalars(log_dir):
    accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator").EventAccumulator(str(log_dir))
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]}


@pytest.mark.parametrize("env_dir", [False, True])
def test_report_to_tensorboard_writes_the_logged_scalars(tmp_path, monkeypatch, env_dir):
    pytest.importorskip("tensorboard")
    if env_dir:
        monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    else:
        monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    a = make_args(tmp_path / "out", report_to="tensorboard", max_steps=10, logging_steps=5,
                  eval_strategy="steps", eval_steps=10)
    trainer = Trainer(RegressionModel(), a, train_dataset=RegressionDataset(),
                      eval_dataset=RegressionDataset(length=16, seed=1))
    trainer.train()
    if env_dir:
        log_dir = tmp_path / "tb"
    else:
        (log_dir,) = (tmp_path / "out" / "runs").iterdir()  # one folder per run
    scalars = tensorboard_scalars(log_dir)
    logged = [r for r in trainer.state.log_history if "loss" in r]
    assert [s for s, _ in scalars["train/loss"]] == [r["step"] for r in logged] == [5, 10]
    assert [v for _, v in scalars["train/loss"]] == pytest.approx([r["loss"] for r in logged])
    (evaluation,) = [r for r in trainer.state.log_history if "eval_loss" in r]
    assert scalars["eval/loss"] == [(10, pytest.approx(evaluation["eval_loss"]))]
    assert "train/learning_rate" in scalars
