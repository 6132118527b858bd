"""Hugging Face training scripts run unchanged on pytrainer (issue 14): two example
scripts (tests/hf_scripts.py) run once with transformers' Trainer and
TrainingArguments and once with pytrainer's, only the import changed; the runs
are compared number for number. Also: the saved model and checkpoints load with
from_pretrained, checkpoints resume across the two Trainers, transformers'
callbacks see the same events."""
from __future__ import annotations

import json
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("datasets")
pytest.importorskip("tokenizers")

import pytrainer  # noqa: E402
from tests import hf_scripts  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

#: what a user compares between two runs' logs (the rest is timing)
CURVES = ("loss", "grad_norm", "learning_rate", "eval_loss", "eval_accuracy", "train_loss")


def params_of(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def assert_same_weights(a, b, rel):
    a, b = params_of(a), params_of(b)
    assert a.keys() == b.keys()
    scale = max(t.abs().max().item() for t in a.values())
    worst = max((a[n] - b[n]).abs().max().item() for n in a) / scale
    assert worst <= rel, f"weights differ by {worst:.3g} of their largest magnitude"


def curves(trainer):
    """(step, epoch, {quantity: value}) of each log line that carries a curve."""
    out = []
    for entry in trainer.state.log_history:
        values = {k: entry[k] for k in CURVES if k in entry}
        if values:
            out.append((entry["step"], entry.get("epoch"), values))
    return out


def assert_same_curves(theirs, ours, rel):
    a, b = curves(theirs), curves(ours)
    assert [(s, e, sorted(v)) for s, e, v in a] == [(s, e, sorted(v)) for s, e, v in b]
    for (step, _, mine), (_, _, other) in zip(a, b):
        for key, value in mine.items():
            tolerance = 1e-12 if key == "learning_rate" else rel
            assert other[key] == pytest.approx(value, rel=tolerance), (step, key)


def quiet(run, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run(*args, **kwargs)


@pytest.fixture(scope="module")
def clm(tmp_path_factory):
    """run_clm under each Trainer (adamw_torch), and pytrainer's with its fused AdamW."""
    out = tmp_path_factory.mktemp("clm")
    return {"hf": quiet(hf_scripts.run_clm, transformers, out / "hf"),
            "pt": quiet(hf_scripts.run_clm, pytrainer, out / "pt"),
            "fused": quiet(hf_scripts.run_clm, pytrainer, out / "fused",
                           optim="adamw_custom_fused"),
            "dir": out}


@pytest.fixture(scope="module")
def glue(tmp_path_factory):
    out = tmp_path_factory.mktemp("glue")
    return {"hf": quiet(hf_scripts.run_glue, transformers, out / "hf"),
            "pt": quiet(hf_scripts.run_glue, pytrainer, out / "pt")}


# ------------------------------------------------------------------ the same run
def test_causal_lm_script_trains_as_under_transformers(clm):
    hf, pt = clm["hf"], clm["pt"]
    assert isinstance(pt, pytrainer.Trainer) and isinstance(hf, transformers.Trainer)
    assert pt.state.global_step == hf.state.global_step == 10
    assert_same_weights(hf.model, pt.model, rel=1e-5)
    assert_same_curves(hf, pt, rel=1e-5)
    assert [s for s, _, v in curves(pt) if "eval_loss" in v] == [4, 8, 10, 10]
    assert pt.state.total_flos == hf.state.total_flos > 0


def test_fused_adamw_trains_as_transformers_adamw_torch(clm):
    """pytrainer's fused AdamW against torch's AdamW under transformers: the same
    run within float32 rounding of the update."""
    assert_same_weights(clm["hf"].model, clm["fused"].model, rel=2e-5)
    assert_same_curves(clm["hf"], clm["fused"], rel=1e-5)


def test_sequence_classification_script_trains_as_under_transformers(glue):
    hf, pt = glue["hf"], glue["pt"]
    assert type(pt.data_collator) is transformers.DataCollatorWithPadding  # HF's default choice
    assert_same_weights(hf.model, pt.model, rel=1e-5)
    assert_same_curves(hf, pt, rel=1e-5)
    theirs = [e for e in hf.state.log_history if "eval_accuracy" in e]
    ours = [e for e in pt.state.log_history if "eval_accuracy" in e]
    assert [e["eval_accuracy"] for e in ours] == [e["eval_accuracy"] for e in theirs]
    assert [list(e)[:2] for e in ours] == [["eval_loss", "eval_accuracy"]] * len(ours)


def test_compute_metrics_gets_transformers_eval_prediction(tmp_path):
    seen = []

    def metrics(prediction):
        seen.append(prediction)
        logits, labels = prediction.predictions, prediction.label_ids
        return {"accuracy": float((logits.argmax(-1) == labels).mean())}

    trainer = quiet(hf_scripts.run_glue, pytrainer, tmp_path, num_train_epochs=1,
                    eval_strategy="no")
    trainer.compute_metrics = metrics
    trainer.args.include_for_metrics = ["inputs", "loss"]
    result = trainer.evaluate()
    prediction = seen[-1]
    assert isinstance(prediction, transformers.EvalPrediction)
    assert isinstance(prediction, pytrainer.trainer.EvalPrediction)  # pytrainer's name holds too
    assert len(tuple(prediction)) == 4  # predictions, labels, inputs, losses
    assert prediction.predictions.shape == (11, 2) and prediction.label_ids.shape == (11,)
    assert prediction.inputs.shape[0] == 11 and prediction.losses.shape == (11,)
    assert result["eval_accuracy"] == metrics(prediction)["accuracy"]


# ------------------------------------------------------------------ saved models
def test_saved_model_and_checkpoints_load_with_from_pretrained(clm):
    pt = clm["pt"]
    out = clm["dir"] / "pt"
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json"} <= {p.name for p in out.iterdir()}
    from safetensors import safe_open
    with safe_open(str(out / "model.safetensors"), "pt") as file:
        assert file.metadata() == {"format": "pt"}
        assert "lm_head.weight" not in file.keys()  # tied to the embedding: stored once
    for folder in (out, out / "checkpoint-10"):
        loaded = transformers.AutoModelForCausalLM.from_pretrained(str(folder))
        assert loaded.lm_head.weight is loaded.transformer.wte.weight
        assert_same_weights(pt.model, loaded, rel=0.0)
    earlier = transformers.AutoModelForCausalLM.from_pretrained(str(out / "checkpoint-5"))
    with pytest.raises(AssertionError):
        assert_same_weights(pt.model, earlier, rel=1e-6)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
    assert tokenizer("the cat sat")["input_ids"] == hf_scripts.tokenizer()("the cat sat")[
        "input_ids"]


def test_saved_folders_hold_what_transformers_writes(clm):
    """The model, tokenizer, results, state and model card of the script."""
    def names(folder):
        return {p.name for p in folder.iterdir()
                if not p.name.startswith(("checkpoint-", "training_args", "log_history"))}

    assert names(clm["dir"] / "pt") == names(clm["dir"] / "hf")
    assert {"all_results.json", "train_results.json", "eval_results.json", "README.md",
            "trainer_state.json"} <= names(clm["dir"] / "pt")
    ours = json.loads((clm["dir"] / "pt" / "all_results.json").read_text())
    theirs = json.loads((clm["dir"] / "hf" / "all_results.json").read_text())
    assert ours.keys() == theirs.keys()
    assert ours["perplexity"] == pytest.approx(theirs["perplexity"], rel=1e-5)
    theirs = names(clm["dir"] / "hf" / "checkpoint-5") - {"pytrainer_state.json"}
    assert names(clm["dir"] / "pt" / "checkpoint-5") - {"pytrainer_state.json"} == theirs
    assert "rng_state.pth" in theirs and "scheduler.pt" in theirs


# ------------------------------------------------------------------ interchange
def test_pytrainer_resumes_a_transformers_checkpoint(clm, tmp_path):
    """No pickle read: transformers' training_args.bin is ignored; the state,
    tensors and random states carry the run."""
    checkpoint = clm["dir"] / "hf" / "checkpoint-5"
    assert (checkpoint / "training_args.bin").is_file()
    resumed = quiet(hf_scripts.run_clm, pytrainer, tmp_path, resume=str(checkpoint))
    assert resumed.state.global_step == 10
    assert_same_weights(clm["hf"].model, resumed.model, rel=1e-5)
    assert_same_weights(clm["pt"].model, resumed.model, rel=1e-5)


def test_transformers_resumes_a_pytrainer_checkpoint(clm, tmp_path):
    checkpoint = clm["dir"] / "pt" / "checkpoint-5"
    assert not (checkpoint / "training_args.bin").exists()
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert set(state) == {f.name for f in __import__("dataclasses").fields(
        transformers.TrainerState)}
    rng = torch.load(checkpoint / "rng_state.pth", weights_only=True)  # no class allowed
    assert set(rng) >= {"python", "numpy", "cpu"}
    resumed = quiet(hf_scripts.run_clm, transformers, tmp_path, resume=str(checkpoint))
    assert resumed.state.global_step == 10
    assert_same_weights(clm["pt"].model, resumed.model, rel=1e-5)
    assert_same_weights(clm["hf"].model, resumed.model, rel=1e-5)


# ------------------------------------------------------------------ callbacks
class Recorder(transformers.TrainerCallback):
    """A transformers callback noting each event, the step and what it was given."""

    def __init__(self):
        self.events = []

    def __getattribute__(self, name):
        if name.startswith("on_"):
            def record(args, state, control, **kwargs):
                self.events.append((name, state.global_step))
                if name == "on_log":
                    assert isinstance(kwargs["logs"], dict)
                if name == "on_evaluate":
                    assert "eval_loss" in kwargs["metrics"]
                assert {"model", "processing_class", "optimizer", "lr_scheduler",
                        "train_dataloader", "eval_dataloader"} <= set(kwargs)
            return record
        return super().__getattribute__(name)


def test_transformers_callbacks_see_the_same_events(tmp_path):
    """A custom transformers callback records the events in the order transformers'
    Trainer calls them; EarlyStoppingCallback stops both runs at the same step."""
    runs = {}
    for name, module in (("hf", transformers), ("pt", pytrainer)):
        recorder = Recorder()
        stopper = transformers.EarlyStoppingCallback(early_stopping_patience=1,
                                                     early_stopping_threshold=1.0)
        trainer = quiet(hf_scripts.run_clm, module, tmp_path / name, callbacks=[recorder, stopper],
                        metric_for_best_model="loss", save_strategy="no")
        runs[name] = (trainer.state.global_step, recorder.events, stopper.state())
    assert runs["pt"][0] == runs["hf"][0] == 8  # stopped at the second evaluation
    assert runs["pt"][1] == runs["hf"][1]
    assert runs["pt"][2] == runs["hf"][2]


# ------------------------------------------------------------------ what scripts call
def test_the_constructor_takes_transformers_arguments_in_its_order():
    import inspect
    theirs = inspect.signature(transformers.Trainer.__init__).parameters
    ours = inspect.signature(pytrainer.Trainer.__init__).parameters
    assert [(n, p.default) for n, p in ours.items()] == [(n, p.default) for n, p in theirs.items()]


def test_script_methods_answer_as_transformers(clm, capsys):
    """The helpers scripts and subclasses call, on the two trained run_clm
    trainers: the same answers."""
    hf, pt = clm["hf"], clm["pt"]
    batch = next(iter(pt.get_train_dataloader()))
    bias, weight = "transformer.h.0.attn.c_attn.bias", "transformer.h.0.attn.c_attn.weight"

    def answers(trainer):
        params = dict(trainer.model.named_parameters())
        return {"trainable": trainer.get_num_trainable_parameters(),
                "lrs": trainer.get_learning_rates(),
                # transformers' list also names a tied weight's alias (lm_head.weight),
                # which named_parameters() never yields: the groups are the same
                "decayed": [n for n in params
                            if n in trainer.get_decay_parameter_names(trainer.model)],
                "train examples": trainer.num_examples(trainer.get_train_dataloader()),
                "eval examples": trainer.num_examples(trainer.get_eval_dataloader()),
                "flops": trainer.floating_point_ops(batch),
                "total batch": trainer.get_total_train_batch_size(trainer.args),
                "groups": [len(g) for g in trainer.get_optimizer_group()],
                "group of": [group_of(trainer, params[n]) for n in (bias, weight)]}

    def group_of(trainer, param):
        return next(i for i, group in enumerate(trainer.optimizer.param_groups)
                    if any(p is param for p in group["params"]))

    ours = answers(pt)
    assert ours == answers(hf)
    assert ours["flops"] > 0 and ours["total batch"] == 8
    # transformers' get_optimizer_group(param) compares tensors with == and fails on
    # any parameter shaped unlike the group's first; pytrainer's finds it (or its name)
    for name, decay in ((bias, 0.0), (weight, 0.01)):
        group = pt.get_optimizer_group(pt.model.get_parameter(name))
        assert group is pt.optimizer.param_groups[ours["group of"][name == weight]]
        assert group["weight_decay"] == decay and pt.get_optimizer_group(name) is group
    metrics = {"train_runtime": 83.4567, "train_mem_cpu_alloc_delta": 3 << 20,
               "total_flos": 5 << 30, "train_loss": 1.234567, "epoch": 2.0, "train_samples": 40}
    from transformers.trainer_pt_utils import metrics_format
    assert pt.metrics_format(metrics) == metrics_format(metrics)
    capsys.readouterr()
    hf.log_metrics("train", metrics)
    theirs = capsys.readouterr().out
    pt.log_metrics("train", metrics)
    assert capsys.readouterr().out == theirs and "0:01:23.45" in theirs
    with pytest.raises(ValueError, match="hyperparameter search is not available"):
        pt.hyperparameter_search(n_trials=2)


def test_a_subclass_with_its_own_evaluate_runs_as_under_transformers(tmp_path):
    """run_qa's pattern: evaluate() overridden over evaluation_loop, the callback
    handler's on_evaluate called by the subclass; the best model is chosen on it."""
    runs = {}
    for name, module in (("hf", transformers), ("pt", pytrainer)):
        recorder = Recorder()
        trainer = quiet(hf_scripts.run_glue, module, tmp_path / name,
                        trainer_class=hf_scripts.qa_style_trainer(module), num_train_epochs=3,
                        callbacks=[recorder], save_strategy="epoch",
                        load_best_model_at_end=True, metric_for_best_model="accuracy")
        runs[name] = trainer, recorder
    (hf, hf_events), (pt, pt_events) = runs["hf"], runs["pt"]
    assert [e for e in pt_events.events if e[0] == "on_evaluate"] == \
        [e for e in hf_events.events if e[0] == "on_evaluate"]
    assert_same_curves(hf, pt, rel=1e-5)
    ours = [e for e in pt.state.log_history if "eval_accuracy" in e]
    assert [e["eval_samples"] for e in ours] == [11] * 4
    assert pt.state.best_model_checkpoint.endswith(hf.state.best_model_checkpoint[-12:])
    assert pt.state.best_metric == hf.state.best_metric


def test_default_data_collator_without_a_tokenizer_batches_as_transformers(tmp_path):
    """No processing_class: transformers picks its default_data_collator; ours
    batches the same rows into the same tensors, and transformers' own works too."""
    train, _ = hf_scripts.text_datasets()
    padded = train.map(lambda rows: hf_scripts.tokenizer()(
        rows["text"], padding="max_length", max_length=16, truncation=True), batched=True)
    batches = []
    for name, collator in (("default", None), ("theirs", transformers.default_data_collator)):
        args = pytrainer.TrainingArguments(output_dir=str(tmp_path / name),
                                           **{**hf_scripts.GLUE_ARGS, "eval_strategy": "no"})
        trainer = pytrainer.Trainer(hf_scripts.initial_classifier(), args, train_dataset=padded,
                                    data_collator=collator)
        batches.append(next(iter(trainer.get_train_dataloader())))
    assert trainer.data_collator is transformers.default_data_collator
    ours, theirs = batches
    assert ours.keys() == theirs.keys() == {"input_ids", "attention_mask", "labels"}
    for key in ours:
        assert torch.equal(ours[key], theirs[key]) and ours[key].dtype == theirs[key].dtype, key
