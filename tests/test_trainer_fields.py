"""Each TrainingArguments field the Trainer implements has a test showing its
effect (EFFECT_TESTS maps the fields issue 14 listed to theirs), and the Trainer's
errors on bad input: the column a collator cannot batch, a model without
activation checkpointing, setup errors before the first step."""
from __future__ import annotations

import logging
import math
import os
import sys

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from pytrainer import Trainer, TrainingArguments
from pytrainer.field_kinds import FIELD_KINDS, Implemented, pending_fields
from pytrainer.trainer import EarlyStoppingCallback, PaddingCollator, TrainerCallback
from tests.trainer_fixtures import (NanAt, RegressionDataset, RegressionModel, TokenDataset,
                                    TokenModel, args as make_args)

THIS = sys.modules[__name__]
DISTRIBUTED = "tests/test_distributed.py::"
NODES = DISTRIBUTED + "test_ddp_node_and_token_fields_reach_each_process"

#: field -> the test of its effect (in this module unless a path is given)
EFFECT_TESTS = {
    "remove_unused_columns": "test_remove_unused_columns",
    "train_sampling_strategy": "test_train_sampling_strategies",
    "length_column_name": "test_group_by_length_reads_length_column_name",
    "dataloader_pin_memory": "test_dataloader_settings",
    "dataloader_prefetch_factor": "test_dataloader_settings",
    "dataloader_multiprocessing_context": "test_dataloader_settings",
    "dataloader_persistent_workers": "test_persistent_workers_live_across_epochs",
    "activation_checkpointing": "test_activation_checkpointing",
    "activation_checkpointing_kwargs": "test_activation_checkpointing",
    "torch_compile": "test_torch_compile",
    "torch_compile_backend": "test_torch_compile",
    "torch_compile_mode": "test_torch_compile",
    "tf32": "test_tf32",
    "neftune_noise_alpha": "test_neftune_noise",
    "use_cache": "test_use_cache",
    "label_smoothing_factor": "test_label_smoothing",
    "average_tokens_across_devices": NODES,
    "prediction_loss_only": "test_prediction_loss_only",
    "eval_accumulation_steps": "test_eval_accumulation_steps",
    "batch_eval_metrics": "test_batch_eval_metrics",
    "include_for_metrics": "test_include_for_metrics",
    "eval_on_start": "test_eval_on_start_and_eval_delay",
    "eval_delay": "test_eval_on_start_and_eval_delay",
    "include_num_input_tokens_seen": "test_include_num_input_tokens_seen",
    "save_only_model": "test_save_only_model",
    "save_on_each_node": NODES,
    "restore_callback_states_from_checkpoint": "test_restore_callback_states",
    "full_determinism": "test_full_determinism",
    "auto_find_batch_size": "test_auto_find_batch_size",
    "torch_empty_cache_steps": "test_torch_empty_cache_steps",
    "run_name": "test_run_name_names_the_tensorboard_run",
    "log_level": "test_log_level",
    "log_level_replica": DISTRIBUTED + "test_log_level_replica_without_log_on_each_node",
    "log_on_each_node": NODES,
    "logging_nan_inf_filter": "test_logging_nan_inf_filter",
    "skip_memory_metrics": "test_skip_memory_metrics",
    "ddp_bucket_cap_mb": NODES,
    "ddp_broadcast_buffers": NODES,
    "ddp_static_graph": NODES,
    "ddp_find_unused_parameters": NODES,
    "ddp_backend": NODES,
}


def test_no_field_is_pending():
    assert pending_fields() == []


def test_every_trainer_field_of_the_issue_has_an_effect_test():
    for name, test in EFFECT_TESTS.items():
        assert isinstance(FIELD_KINDS[name], Implemented), name
        path, _, function = test.rpartition("::")
        if path:
            with open(os.path.join(os.path.dirname(__file__), os.path.basename(path))) as file:
                assert f"def {function}(" in file.read(), test
        else:
            assert callable(getattr(THIS, function, None)), test


def params_of(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def quiet_args(tmp_path, **kwargs):
    return make_args(tmp_path, **{"logging_steps": 100, **kwargs})


class DictRows(Dataset):
    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


class Recording(RegressionModel):
    """Notes the inputs of each training forward."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, input_x, labels=None):
        if self.training:
            self.seen.append(input_x.tolist())
        return super().forward(input_x, labels)


# ------------------------------------------------------------------ data
def test_remove_unused_columns(tmp_path):
    datasets = pytest.importorskip("datasets")
    data = RegressionDataset(16)
    rows = [{"input_x": float(data.x[i]), "labels": float(data.y[i]), "note": f"row {i}",
             "weight": 1.0} for i in range(16)]
    hf_set = datasets.Dataset.from_list(rows)
    seen = []

    def collator(samples):
        seen.append(sorted(samples[0]))
        return {k: torch.tensor([s[k] for s in samples]) for k in samples[0] if k != "note"}

    # a datasets.Dataset loses the columns; labels named in label_names are kept
    trainer = Trainer(RegressionModel(), quiet_args(tmp_path, max_steps=1,
                                                    label_names=["labels", "weight"]),
                      train_dataset=hf_set, data_collator=collator)
    assert trainer.get_train_dataloader().dataset.column_names == ["input_x", "labels", "weight"]
    # plain dict rows are filtered before the collator
    trainer = Trainer(RegressionModel(), quiet_args(tmp_path, max_steps=2),
                      train_dataset=DictRows(rows), data_collator=collator)
    trainer.train()
    assert seen[-1] == ["input_x", "labels"]
    # without it the collator gets every column (and the model the extra one)
    trainer = Trainer(RegressionModel(), quiet_args(tmp_path, max_steps=1,
                                                    remove_unused_columns=False),
                      train_dataset=DictRows(rows), data_collator=collator)
    with pytest.raises(TypeError, match="weight"):
        trainer.train()
    assert seen[-1] == ["input_x", "labels", "note", "weight"]


def _order(tmp_path, **kwargs):
    model = Recording()
    Trainer(model, quiet_args(tmp_path, per_device_train_batch_size=4, num_train_epochs=1,
                              **kwargs), train_dataset=RegressionDataset(16)).train()
    return [x for batch in model.seen for x in batch]


def test_train_sampling_strategies(tmp_path):
    data = RegressionDataset(16).x.tolist()
    sequential = _order(tmp_path, train_sampling_strategy="sequential")
    assert sequential == pytest.approx(data)
    random_order = _order(tmp_path, train_sampling_strategy="random")
    assert sorted(random_order) == pytest.approx(sorted(data)) and random_order != sequential
    # group_by_length: batches of similar lengths, the longest sample first
    lengths = []

    class Lengths(TokenModel):
        def forward(self, input_ids, labels=None, num_items_in_batch=None):
            if self.training:
                lengths.append((labels != -100).sum(1).tolist())
            return super().forward(input_ids, labels, num_items_in_batch)

    data = TokenDataset(64)
    spread = {}
    for strategy in ("random", "group_by_length"):
        lengths.clear()
        Trainer(Lengths(), quiet_args(tmp_path, per_device_train_batch_size=4,
                                      train_sampling_strategy=strategy, num_train_epochs=1),
                train_dataset=data, data_collator=PaddingCollator()).train()
        spread[strategy] = sum(max(b) - min(b) for b in lengths)
        if strategy == "group_by_length":
            assert max(lengths[0]) == max(len(s["labels"]) for s in data)
    assert spread["group_by_length"] < spread["random"] / 2


def test_group_by_length_reads_length_column_name(tmp_path):
    datasets = pytest.importorskip("datasets")
    data = RegressionDataset(40)
    # the length column says the samples grow longer with their index
    hf_set = datasets.Dataset.from_dict({"input_x": data.x.tolist(), "labels": data.y.tolist(),
                                         "size": list(range(40))})
    model = Recording()
    Trainer(model, quiet_args(tmp_path, per_device_train_batch_size=4, num_train_epochs=1,
                              train_sampling_strategy="group_by_length",
                              length_column_name="size"), train_dataset=hf_set).train()
    assert model.seen[0][0] == pytest.approx(data.x[39].item())  # the "longest" first
    sizes = [[int(torch.argmin((data.x - x).abs())) for x in batch] for batch in model.seen]
    # sorted within their mega-batches, but for the two batches the longest was swapped between
    assert sum(batch != sorted(batch, reverse=True) for batch in sizes) <= 2


def test_dataloader_settings(tmp_path):
    from pytrainer.trainer.data import loader_options
    cuda = torch.device("cuda")
    assert loader_options(TrainingArguments(), cuda)["pin_memory"] is True
    assert loader_options(TrainingArguments(dataloader_pin_memory=False), cuda)[
        "pin_memory"] is False
    assert loader_options(TrainingArguments(), torch.device("cpu"))["pin_memory"] is False
    trainer = Trainer(RegressionModel(), quiet_args(
        tmp_path, dataloader_num_workers=2, dataloader_prefetch_factor=3,
        dataloader_multiprocessing_context="forkserver"), train_dataset=RegressionDataset(16),
        eval_dataset=RegressionDataset(8))
    for loader in (trainer.get_train_dataloader(), trainer.get_eval_dataloader()):
        assert (loader.num_workers, loader.prefetch_factor) == (2, 3)
        assert loader.multiprocessing_context.get_start_method() == "forkserver"
        assert loader.pin_memory is False  # the CPU: nothing to pin for


def _worker_pids(tmp_path, persistent):
    pids = []

    def collate(samples):
        batch = {k: torch.stack([s[k] for s in samples]) for k in samples[0]}
        batch["worker"] = torch.tensor([os.getpid()] * len(samples))
        return batch

    class Model(RegressionModel):
        def forward(self, input_x, labels=None, worker=None):
            pids.append(int(worker[0]))
            return super().forward(input_x, labels)

    Trainer(Model(), quiet_args(tmp_path, num_train_epochs=2, dataloader_num_workers=1,
                                dataloader_persistent_workers=persistent,
                                dataloader_multiprocessing_context="fork"),
            train_dataset=RegressionDataset(16), data_collator=collate).train()
    return pids


def test_persistent_workers_live_across_epochs(tmp_path):
    assert len(set(_worker_pids(tmp_path, persistent=True))) == 1
    assert len(set(_worker_pids(tmp_path, persistent=False))) == 2  # one per epoch


# ------------------------------------------------------------------ the model
def tiny_gpt2():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=32, n_positions=16, n_embd=16, n_layer=2, n_head=2, resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0))


def checkpointing(model) -> bool:
    """Whether a transformers model has activation checkpointing on (the
    property's name before transformers 5.23: is_gradient_checkpointing)."""
    if hasattr(model, "is_activation_checkpointing"):
        return model.is_activation_checkpointing
    return model.is_gradient_checkpointing


@pytest.mark.filterwarnings("ignore:gradient_checkpointing is deprecated:FutureWarning")
def test_activation_checkpointing(tmp_path):
    for name in ("activation_checkpointing", "gradient_checkpointing"):  # 5.x and 4.x names
        model = tiny_gpt2()
        trainer = Trainer(model, quiet_args(tmp_path, max_steps=2, **{
            name: True, f"{name}_kwargs": {"use_reentrant": False, "preserve_rng_state": False}}),
            train_dataset=TokenDataset(8, vocab=32), data_collator=PaddingCollator())
        assert not checkpointing(model)  # turned on when training starts
        trainer.train()
        assert checkpointing(model)
        assert model.transformer.h[0]._gradient_checkpointing_func.keywords == {
            "use_reentrant": False, "preserve_rng_state": False}


def test_torch_compile(tmp_path, monkeypatch):
    runs = {}
    for compiled in (False, True):
        trainer = Trainer(RegressionModel(), quiet_args(
            tmp_path, max_steps=4, torch_compile=compiled,
            torch_compile_backend="eager" if compiled else None),
            train_dataset=RegressionDataset(32))
        trainer.train()
        runs[compiled] = (trainer, params_of(trainer.model))
    assert isinstance(runs[True][0].model_wrapped, torch._dynamo.eval_frame.OptimizedModule)
    assert runs[True][0].model_wrapped._orig_mod is runs[True][0].model
    assert all(torch.equal(runs[True][1][n], runs[False][1][n]) for n in runs[True][1])
    calls = []
    monkeypatch.setattr(torch, "compile", lambda model, **kw: calls.append(kw) or model)
    Trainer(RegressionModel(), quiet_args(tmp_path, max_steps=1,
                                          torch_compile_mode="max-autotune"),
            train_dataset=RegressionDataset(8)).train()
    assert calls == [{"backend": "inductor", "mode": "max-autotune"}]


@pytest.fixture
def restore_precision():
    if hasattr(torch.backends, "fp32_precision"):
        before = torch.backends.fp32_precision
        yield
        torch.backends.fp32_precision = before
    else:
        before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        yield
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


# torch 2.9 set TF32 by torch.backends.fp32_precision; before, by the allow_tf32 flags
def precision_tf32() -> bool:
    if hasattr(torch.backends, "fp32_precision"):
        return torch.backends.cuda.matmul.fp32_precision == "tf32"
    return torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32


def set_precision_tf32(on: bool) -> None:
    if hasattr(torch.backends, "fp32_precision"):
        torch.backends.fp32_precision = "tf32" if on else "ieee"
    else:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = on


def test_tf32(tmp_path, restore_precision):
    set_precision_tf32(True)
    Trainer(RegressionModel(), quiet_args(tmp_path, tf32=False))
    assert not precision_tf32()
    if torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8:
        Trainer(RegressionModel(), make_args(tmp_path, tf32=True, use_cpu=False))
        assert precision_tf32()
    else:
        with pytest.raises(ValueError, match="tf32=True needs an NVIDIA GPU of the Ampere"):
            Trainer(RegressionModel(), quiet_args(tmp_path, tf32=True))


def test_neftune_noise(tmp_path):
    model = tiny_gpt2()
    embeddings = model.get_input_embeddings()
    noise = []

    def watch(module, inputs, output):  # runs after the Trainer's hook, on its output
        noise.append((output - nn.functional.embedding(inputs[0], module.weight)).abs())

    class Attach(TrainerCallback):
        def on_epoch_begin(self, args, state, control, **kwargs):
            embeddings.register_forward_hook(watch)

    Trainer(model, quiet_args(tmp_path, max_steps=1, neftune_noise_alpha=5.0,
                              per_device_train_batch_size=2),
            train_dataset=TokenDataset(8, vocab=32), data_collator=PaddingCollator(),
            callbacks=[Attach()]).train()
    (batch_noise,) = noise
    length, width = batch_noise.shape[1], batch_noise.shape[2]
    assert 0 < batch_noise.max() <= 5.0 / math.sqrt(length * width) + 1e-6
    assert len(embeddings._forward_hooks) == 1  # the Trainer's removed when training ends
    model.eval()
    model(torch.tensor([[1, 2, 3]]))
    assert noise[-1].max() == 0


def test_use_cache(tmp_path):
    model = tiny_gpt2()
    model.config.use_cache = True
    Trainer(model, quiet_args(tmp_path))
    assert model.config.use_cache is False  # the argument's default
    Trainer(model, quiet_args(tmp_path, use_cache=True))
    assert model.config.use_cache is True


# ------------------------------------------------------------------ loss and metrics
def test_label_smoothing(tmp_path):
    trainer = Trainer(TokenModel(), quiet_args(tmp_path, label_smoothing_factor=0.2),
                      data_collator=PaddingCollator())
    batch = PaddingCollator()([TokenDataset(4)[i] for i in range(4)])
    loss = trainer.compute_loss(trainer.model, batch)
    logits = trainer.model(batch["input_ids"])["logits"]
    expected = nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(),
                                           ignore_index=-100, label_smoothing=0.2)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    plain = Trainer(TokenModel(), quiet_args(tmp_path)).compute_loss(trainer.model, batch)
    assert plain.item() != pytest.approx(loss.item(), rel=1e-3)


def test_prediction_loss_only(tmp_path):
    data = RegressionDataset(8)
    full = Trainer(RegressionModel(), quiet_args(tmp_path)).predict(data)
    loss_only = Trainer(RegressionModel(), quiet_args(tmp_path, prediction_loss_only=True)
                        ).predict(data)
    assert full.predictions is not None and loss_only.predictions is None
    assert loss_only.label_ids is None
    assert loss_only.metrics["test_loss"] == pytest.approx(full.metrics["test_loss"])


def test_eval_accumulation_steps(tmp_path, monkeypatch):
    from pytrainer.trainer import evaluation
    moves = []
    real = evaluation._Collected.to_host

    def to_host(self):
        if self.device:
            moves.append(len(self.device))
        real(self)

    monkeypatch.setattr(evaluation._Collected, "to_host", to_host)
    metrics = lambda p: {"n": len(p.predictions)}  # noqa: E731
    for steps, expected in ((None, [6, 6]), (2, [2, 2] * 3)):
        moves.clear()
        trainer = Trainer(RegressionModel(), quiet_args(tmp_path, per_device_eval_batch_size=2,
                                                        eval_accumulation_steps=steps),
                          compute_metrics=metrics)
        assert trainer.evaluate(RegressionDataset(12))["eval_n"] == 12
        assert moves == expected  # predictions and labels: all at the end, or every 2 batches


def test_batch_eval_metrics(tmp_path):
    calls = []

    def metrics(prediction, compute_result):
        calls.append((len(prediction.predictions), compute_result))
        assert isinstance(prediction.predictions, torch.Tensor)
        return {"batches": len(calls)} if compute_result else {}

    trainer = Trainer(RegressionModel(), quiet_args(tmp_path, per_device_eval_batch_size=4,
                                                    batch_eval_metrics=True),
                      compute_metrics=metrics)
    result = trainer.evaluate(RegressionDataset(10))
    assert calls == [(4, False), (4, False), (2, True)]
    assert result["eval_batches"] == 3
    with pytest.raises(ValueError, match="must take a compute_result argument"):
        Trainer(RegressionModel(), quiet_args(tmp_path, batch_eval_metrics=True),
                compute_metrics=lambda prediction: {})


def test_include_for_metrics(tmp_path):
    seen = []

    def metrics(prediction):
        seen.append(prediction)
        return {}

    class Model(RegressionModel):
        main_input_name = "input_x"  # what "inputs" are (transformers' models name theirs)

    data = RegressionDataset(7)
    for include in ([], ["inputs", "loss"]):
        Trainer(Model(), quiet_args(tmp_path, per_device_eval_batch_size=3,
                                              include_for_metrics=include),
                compute_metrics=metrics).evaluate(data)
    plain, full = seen
    assert plain.inputs is None and plain.losses is None and len(tuple(plain)) == 2
    assert full.inputs == pytest.approx(data.x.numpy())
    # each sample carries its batch's loss (MSE of a zero model: mean of y^2 per batch)
    y2 = (data.y ** 2).numpy()
    assert full.losses == pytest.approx([y2[:3].mean()] * 3 + [y2[3:6].mean()] * 3 + [y2[6]],
                                        rel=1e-5)


def test_eval_on_start_and_eval_delay(tmp_path):
    trainer = Trainer(RegressionModel(), quiet_args(
        tmp_path, max_steps=8, eval_strategy="steps", eval_steps=2, eval_delay=5,
        eval_on_start=True), train_dataset=RegressionDataset(64),
        eval_dataset=RegressionDataset(8))
    trainer.train()
    assert [e["step"] for e in trainer.state.log_history if "eval_loss" in e] == [0, 6, 8]


def test_include_num_input_tokens_seen(tmp_path):
    data = TokenDataset(16)

    class Masked(PaddingCollator):
        def __call__(self, samples):
            batch = super().__call__(samples)
            batch["attention_mask"] = (batch["labels"] != -100).long()
            return batch

    class Model(TokenModel):
        def forward(self, input_ids, labels=None, attention_mask=None, num_items_in_batch=None):
            return super().forward(input_ids, labels, num_items_in_batch)

    counts = {}
    for mode in ("all", "non_padding"):
        trainer = Trainer(Model(), quiet_args(tmp_path, per_device_train_batch_size=4,
                                              num_train_epochs=1, logging_steps=2,
                                              include_num_input_tokens_seen=mode),
                          train_dataset=data, data_collator=Masked())
        trainer.train()
        logged = [e for e in trainer.state.log_history if "loss" in e]
        assert all("num_input_tokens_seen" in e and "train_tokens_per_second" in e
                   for e in logged)
        counts[mode] = trainer.state.num_input_tokens_seen
    assert counts["non_padding"] == sum(len(s["input_ids"]) for s in data)
    assert counts["all"] > counts["non_padding"]  # the padding counted too


# ------------------------------------------------------------------ saving
def test_save_only_model(tmp_path):
    a = quiet_args(tmp_path, max_steps=2, save_strategy="steps", save_steps=2,
                   save_only_model=True)
    Trainer(RegressionModel(), a, train_dataset=RegressionDataset(32)).train()
    assert sorted(os.listdir(tmp_path / "checkpoint-2")) == [
        "model.safetensors", "pytrainer_state.json", "trainer_state.json", "training_args.json"]
    from pytrainer.trainer import CheckpointError
    again = Trainer(RegressionModel(), quiet_args(tmp_path, max_steps=4),
                    train_dataset=RegressionDataset(32))
    with pytest.raises(CheckpointError, match="save_only_model=True holds the model only"):
        again.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))


def test_restore_callback_states(tmp_path):
    base = dict(eval_strategy="steps", eval_steps=2, save_strategy="steps", save_steps=2,
                metric_for_best_model="loss", max_steps=6, learning_rate=1e-4)

    def run(restore, resume=None, patience=5):
        stopper = EarlyStoppingCallback(early_stopping_patience=patience,
                                        early_stopping_threshold=10.0)
        trainer = Trainer(RegressionModel(), quiet_args(
            tmp_path, restore_callback_states_from_checkpoint=restore, **base),
            train_dataset=RegressionDataset(32), eval_dataset=RegressionDataset(8),
            callbacks=[stopper])
        trainer.train(resume_from_checkpoint=resume)
        return trainer, stopper

    trainer, stopper = run(False)
    assert stopper.early_stopping_patience_counter == 2  # at 4 and 6 (step 2 set the best)
    assert trainer.state.stateful_callbacks["EarlyStoppingCallback"]["attributes"] == {
        "early_stopping_patience_counter": 2}
    checkpoint = str(tmp_path / "checkpoint-4")
    _, fresh = run(False, resume=checkpoint)
    restored_trainer, _ = run(True, resume=checkpoint, patience=99)
    (restored,) = [c for c in restored_trainer.callback_handler.callbacks
                   if isinstance(c, EarlyStoppingCallback)]
    assert fresh.early_stopping_patience_counter == 1  # counted from 0 again
    assert restored.early_stopping_patience_counter == 2  # 1 saved at step 4, then step 6
    assert restored.early_stopping_patience == 5  # the saved arguments, not the new ones


# ------------------------------------------------------------------ the rest
def test_full_determinism(tmp_path):
    try:
        Trainer(RegressionModel(), quiet_args(tmp_path, full_determinism=True))
        assert torch.are_deterministic_algorithms_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    finally:
        torch.use_deterministic_algorithms(False)


class OutOfMemoryAbove(RegressionModel):
    """Runs out of memory on batches larger than ``limit`` (from ``after`` calls on)."""

    def __init__(self, limit, after=0):
        super().__init__()
        self.limit, self.after, self.calls = limit, after, 0

    def forward(self, input_x, labels=None):
        self.calls += 1
        if self.training and self.calls > self.after and input_x.shape[0] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().forward(input_x, labels)


def test_auto_find_batch_size(tmp_path):
    def trainer(model, **kwargs):
        return Trainer(model, quiet_args(tmp_path, optim="adamw_torch", max_steps=6,
                                         per_device_train_batch_size=8, **kwargs),
                       train_dataset=RegressionDataset(64))

    found = trainer(OutOfMemoryAbove(2), auto_find_batch_size=True)
    found.train()
    assert found.state.train_batch_size == 2 and found.totals.gradient_accumulation_steps == 4
    direct = Trainer(RegressionModel(), quiet_args(tmp_path, optim="adamw_torch", max_steps=6,
                                                   per_device_train_batch_size=2,
                                                   gradient_accumulation_steps=4),
                     train_dataset=RegressionDataset(64))
    direct.train()
    a, b = params_of(found.model), params_of(direct.model)
    assert all(torch.allclose(a[n], b[n], rtol=1e-6) for n in a)  # the same global batch
    with pytest.raises(torch.OutOfMemoryError):  # without the field
        trainer(OutOfMemoryAbove(2)).train()
    with pytest.raises(torch.OutOfMemoryError):  # after an update: not retried
        trainer(OutOfMemoryAbove(2, after=3), auto_find_batch_size=True).train()


def test_torch_empty_cache_steps(tmp_path, monkeypatch):
    import pytrainer.trainer.trainer as trainer_module
    emptied = []
    monkeypatch.setattr(trainer_module, "empty_device_cache", lambda device: emptied.append(1))
    Trainer(RegressionModel(), quiet_args(tmp_path, max_steps=6, gradient_accumulation_steps=2,
                                          torch_empty_cache_steps=3),
            train_dataset=RegressionDataset(64)).train()
    assert len(emptied) == 2 * 2  # at steps 0 and 3 (each micro-batch of those updates)


def test_run_name_names_the_tensorboard_run(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    Trainer(RegressionModel(), quiet_args(tmp_path, max_steps=2, report_to="tensorboard",
                                          run_name="baseline-lr3"),
            train_dataset=RegressionDataset(16)).train()
    assert os.listdir(tmp_path / "runs") == ["baseline-lr3"]


def test_log_level(tmp_path):
    pytrainer_logger = logging.getLogger("pytrainer")
    hf_logging = pytest.importorskip("transformers.utils.logging")
    before = pytrainer_logger.level, hf_logging.get_verbosity()
    try:
        Trainer(RegressionModel(), quiet_args(tmp_path, log_level="error"))
        assert pytrainer_logger.level == hf_logging.get_verbosity() == logging.ERROR
        Trainer(RegressionModel(), quiet_args(tmp_path, log_level="passive"))
        assert pytrainer_logger.level == logging.ERROR  # left as it was
    finally:
        pytrainer_logger.setLevel(before[0])
        hf_logging.set_verbosity(before[1])


def test_logging_nan_inf_filter(tmp_path):
    logged = {}
    for flag in (True, False):
        trainer = Trainer(NanAt({3}), quiet_args(tmp_path, max_steps=4, logging_steps=2,
                                                 per_device_train_batch_size=8,
                                                 logging_nan_inf_filter=flag),
                          train_dataset=RegressionDataset(64))
        trainer.train()
        logged[flag] = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert all(math.isfinite(x) for x in logged[True])
    assert math.isfinite(logged[False][0]) and math.isnan(logged[False][1])


def test_skip_memory_metrics(tmp_path):
    keys = {}
    for skip in (True, False):
        trainer = Trainer(RegressionModel(), quiet_args(tmp_path, max_steps=2,
                                                        skip_memory_metrics=skip),
                          train_dataset=RegressionDataset(16), eval_dataset=RegressionDataset(8))
        keys[skip] = set(trainer.train().metrics) | set(trainer.evaluate())
    memory = {f"{stage}_mem_cpu_{kind}_delta" for stage in ("init", "train", "eval")
              for kind in ("alloc", "peaked")}
    assert memory <= keys[False] and not any("_mem_" in k for k in keys[True])


# ------------------------------------------------------------------ schedule-free
class ScheduleFreeStandIn(torch.optim.SGD):
    """An optimizer with schedule-free's protocol: eval() puts other weights into
    the model (here: all zeros), train() puts the training ones back."""

    def __init__(self, params):
        super().__init__(params, lr=0.05)
        self.modes, self.saved = [], None

    def train(self):
        self.modes.append("train")
        if self.saved is not None:
            with torch.no_grad():
                for p, saved in zip(self.param_groups[0]["params"], self.saved):
                    p.copy_(saved)
            self.saved = None

    def eval(self):
        self.modes.append("eval")
        if self.saved is None:
            self.saved = [p.detach().clone() for p in self.param_groups[0]["params"]]
            with torch.no_grad():
                for p in self.param_groups[0]["params"]:
                    p.zero_()


def test_schedule_free_optimizers_switch_modes(tmp_path):
    model = RegressionModel()
    optimizer = ScheduleFreeStandIn(model.parameters())
    data = RegressionDataset(8, seed=1)
    zero_model_loss = (data.y ** 2).mean().item()
    trainer = Trainer(model, quiet_args(tmp_path, max_steps=4, eval_strategy="steps",
                                        eval_steps=2, max_grad_norm=0.0),
                      train_dataset=RegressionDataset(32), eval_dataset=data,
                      optimizers=(optimizer, None))
    trainer.train()
    evals = [e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e]
    assert evals == pytest.approx([zero_model_loss] * 2)  # evaluated on eval()'s weights
    assert optimizer.modes == ["train", "eval", "train", "eval", "train", "eval"]
    # the training itself is SGD's, untouched by the evaluations in between
    optimizer.train()
    plain = RegressionModel()
    sgd = torch.optim.SGD(plain.parameters(), lr=0.05)
    Trainer(plain, quiet_args(tmp_path, max_steps=4, max_grad_norm=0.0),
            train_dataset=RegressionDataset(32), optimizers=(sgd, None)).train()
    a, b = params_of(model), params_of(plain)
    assert all(torch.equal(a[n], b[n]) for n in a)


# ------------------------------------------------------------------ bad input
def test_the_column_a_collator_cannot_batch_is_named(tmp_path):
    rows = [{"input_x": float(i), "labels": float(i), "ids": list(range(i % 3 + 1))}
            for i in range(8)]

    class Model(RegressionModel):
        def forward(self, input_x, labels=None, ids=None):
            return super().forward(input_x, labels)

    trainer = Trainer(Model(), quiet_args(tmp_path, max_steps=1), train_dataset=DictRows(rows))
    with pytest.raises(ValueError, match=r"cannot batch column 'ids': it has rows of different "
                                         r"lengths \(1, 2, 3\)"):
        trainer.train()
    text_rows = [{"input_x": 1.0, "labels": 1.0, "ids": "some text"}] * 4
    transformers = pytest.importorskip("transformers")
    from tests.hf_scripts import tokenizer
    trainer = Trainer(Model(), quiet_args(tmp_path, max_steps=1), train_dataset=DictRows(
        text_rows), data_collator=transformers.DataCollatorWithPadding(tokenizer()))
    with pytest.raises(ValueError, match=r"cannot batch column 'ids': it holds text"):
        trainer.train()


@pytest.mark.filterwarnings("ignore:gradient_checkpointing is deprecated:FutureWarning")
def test_activation_checkpointing_on_a_model_without_it_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="RegressionModel has none"):
        Trainer(RegressionModel(), quiet_args(tmp_path, gradient_checkpointing=True))


@pytest.mark.parametrize("kwargs, error, fragment", [
    (dict(model_init=lambda: RegressionModel()), ValueError, "not both"),
    (dict(optimizer_cls_and_kwargs=(torch.optim.SGD, {"lr": 0.1}),
          optimizers=("optimizer", None)), RuntimeError, "cannot be used together"),
    (dict(data_collator="pad"), TypeError, "data_collator must be callable"),
    (dict(eval_dataset=None, args_kwargs=dict(eval_strategy="steps")), ValueError,
     "needs an eval_dataset"),
    (dict(args_kwargs=dict(neftune_noise_alpha=5.0)), ValueError, "get_input_embeddings"),
])
def test_setup_errors_are_raised_when_the_trainer_is_built(tmp_path, kwargs, error, fragment):
    args_kwargs = kwargs.pop("args_kwargs", {})
    with pytest.raises(error, match=fragment):
        Trainer(RegressionModel(), quiet_args(tmp_path, **args_kwargs), **kwargs)


def test_model_init_with_an_optimizer_is_an_error(tmp_path):
    optimizer = torch.optim.SGD(RegressionModel().parameters(), lr=0.1)
    with pytest.raises(RuntimeError, match="pass optimizer_cls_and_kwargs instead"):
        Trainer(args=quiet_args(tmp_path), model_init=RegressionModel,
                optimizers=(optimizer, None))


def test_model_init_and_optimizer_cls_and_kwargs(tmp_path):
    built = []

    def model_init():
        built.append(RegressionModel())
        return built[-1]

    trainer = Trainer(args=quiet_args(tmp_path, max_steps=3, weight_decay=0.1),
                      model_init=model_init,
                      optimizer_cls_and_kwargs=(torch.optim.SGD, {"lr": 0.05}),
                      train_dataset=RegressionDataset(32))
    trainer.train()
    assert len(built) == 2 and trainer.model is built[1]  # a fresh model for train()
    assert type(trainer.optimizer) is torch.optim.SGD
    assert [g["weight_decay"] for g in trainer.optimizer.param_groups] == [0.1]  # a and b
    with pytest.raises(RuntimeError, match="pass optimizer_cls_and_kwargs instead"):
        Trainer(args=quiet_args(tmp_path), model_init=model_init,
                optimizers=(torch.optim.SGD(RegressionModel().parameters(), lr=0.1), None))


def test_evaluation_of_a_dict_of_sets(tmp_path):
    trainer = Trainer(RegressionModel(), quiet_args(tmp_path, max_steps=2, eval_strategy="steps",
                                                    eval_steps=2),
                      train_dataset=RegressionDataset(32),
                      eval_dataset={"near": RegressionDataset(8, seed=1),
                                    "far": RegressionDataset(8, seed=2)})
    trainer.train()
    logged = {k for e in trainer.state.log_history for k in e}
    assert {"eval_near_loss", "eval_far_loss", "eval_near_runtime"} <= logged
    metrics = trainer.evaluate()
    assert metrics["eval_near_loss"] != metrics["eval_far_loss"]


def test_an_iterable_dataset_trains_for_max_steps(tmp_path):
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            data = RegressionDataset(20)
            for i in range(20):
                yield data[i]

    with pytest.raises(ValueError, match="set max_steps"):
        Trainer(RegressionModel(), quiet_args(tmp_path), train_dataset=Stream())
    trainer = Trainer(RegressionModel(), quiet_args(tmp_path, max_steps=7,
                                                    per_device_train_batch_size=4,
                                                    logging_steps=1),
                      train_dataset=Stream())
    assert trainer.train().global_step == 7  # 5 batches a pass: the stream is read again
    epochs = [e["epoch"] for e in trainer.state.log_history if "loss" in e]
    assert epochs[:2] == pytest.approx([1 / 7, 2 / 7]) and epochs[5] == pytest.approx(1 + 1 / 7)


def test_a_datasets_iterable_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    data = RegressionDataset(24)
    stream = datasets.Dataset.from_dict({"input_x": data.x.tolist(), "labels": data.y.tolist(),
                                         "note": ["x"] * 24}).to_iterable_dataset()
    model = Recording()
    Trainer(model, quiet_args(tmp_path, max_steps=3, per_device_train_batch_size=8),
            train_dataset=stream).train()
    assert [x for batch in model.seen for x in batch] == pytest.approx(data.x.tolist())
