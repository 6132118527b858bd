"""Data-parallel training with torchrun on the CPU (gloo, 2 processes): N ranks
with batch b train like one process with batch N*b."""
from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pytrainer import ops
from pytrainer.trainer.distributed import fsdp2_unsupported

ROOT = Path(__file__).resolve().parents[1]
_NO_FSDP2 = fsdp2_unsupported("cpu")
needs_fsdp2 = pytest.mark.skipif(bool(_NO_FSDP2), reason=str(_NO_FSDP2))
pytestmark = [pytest.mark.skipif(not ops.available(), reason="compiled kernels not built"),
              pytest.mark.skipif(not torch.distributed.is_available(),
                                 reason="torch.distributed is not available")]


def torchrun(*args, nproc=2):
    """The command line of a torchrun launch on this machine."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={nproc}", *args]


def clean_env():
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def run_worker(tmp_path, name, config, nproc=2, timeout=600):
    """Runs the worker (under torchrun when nproc > 1); returns the finished process
    and the path of its result."""
    config = dict(config, output_dir=str(tmp_path / config.get("dir", name)))
    config_path, out_path = tmp_path / f"{name}.json", tmp_path / f"{name}.out.json"
    config_path.write_text(json.dumps(config))
    worker = [str(ROOT / "tests" / "dist_worker.py"), str(config_path), str(out_path)]
    command = torchrun(*worker, nproc=nproc) if nproc > 1 else [sys.executable, *worker]
    done = subprocess.run(command, env=clean_env(), capture_output=True, text=True,
                          timeout=timeout)
    return done, out_path


def launch(tmp_path, name, config, nproc=2):
    """Runs the worker (under torchrun when nproc > 1); returns its result."""
    done, out_path = run_worker(tmp_path, name, config, nproc)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return json.loads(out_path.read_text())


def assert_params_close(a, b, rel=1e-5):
    scale = max(max(abs(x) for x in v) for v in a["params"].values())
    for name, values in a["params"].items():
        diff = max(abs(x - y) for x, y in zip(values, b["params"][name]))
        assert diff <= rel * scale, (name, diff)


CASES = {
    "sgd": dict(model="regression", sgd=True, args=dict(max_grad_norm=0.0,
                                                          lr_scheduler_type="constant")),
    "sgd-accumulation": dict(model="regression", sgd=True, accumulation=2,
                             args=dict(max_grad_norm=0.0, lr_scheduler_type="constant")),
    "fused-adamw": dict(model="regression", args=dict(optim="adamw_custom_fused",
                                                       learning_rate=0.05)),
    "fused-adamw-accumulation": dict(model="regression", accumulation=2,
                                     args=dict(optim="adamw_custom_fused", learning_rate=0.05)),
    "padded-tokens-sgd": dict(model="token", sgd=True, accumulation=2,
                              args=dict(max_grad_norm=0.0, lr_scheduler_type="constant")),
    "padded-tokens-fused-adamw": dict(model="token", accumulation=2,
                                      args=dict(optim="adamw_custom_fused", learning_rate=0.02)),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_two_ranks_of_batch_4_equal_one_process_of_batch_8(tmp_path, case):
    config = CASES[case]
    ga = config.get("accumulation", 1)
    single = dict(config, args=dict(config["args"], per_device_train_batch_size=8,
                                    gradient_accumulation_steps=ga))
    double = dict(config, args=dict(config["args"], per_device_train_batch_size=4,
                                    gradient_accumulation_steps=ga))
    one = launch(tmp_path, "one", single, nproc=1)
    two = launch(tmp_path, "two", double, nproc=2)
    assert two["world_size"] == 2 and one["global_step"] == two["global_step"]
    assert_params_close(one, two)
    # the logged loss is the global batch's
    losses = lambda run: [e["loss"] for e in run["history"] if "loss" in e]
    assert losses(two) == pytest.approx(losses(one), rel=1e-5)


def test_resumed_two_rank_run_equals_the_uninterrupted_one(tmp_path):
    # logs at 3, 6, 9, 12: checkpoint 8 holds a loss sum of two updates of both ranks
    base = dict(model="regression", args=dict(
        optim="adamw_custom_fused", learning_rate=0.05, per_device_train_batch_size=4,
        gradient_accumulation_steps=2, save_strategy="steps", save_steps=4, max_steps=12,
        logging_steps=3))
    full = launch(tmp_path, "full", base)
    launch(tmp_path, "first", dict(base, dir="interrupted", stop_at=8))
    assert {p.name for p in (tmp_path / "interrupted").iterdir() if p.name.startswith("checkpoint")} \
        == {"checkpoint-4", "checkpoint-8"}
    assert (tmp_path / "interrupted" / "checkpoint-8" / "rng_state_1.pth").is_file()
    resumed = launch(tmp_path, "resumed", dict(base, dir="interrupted", resume=True))
    assert resumed["params"] == full["params"]
    assert resumed["history"] == full["history"]


def test_evaluation_under_two_ranks_equals_one_process(tmp_path):
    config = dict(model="token", args=dict(max_steps=2, per_device_train_batch_size=4))
    one = launch(tmp_path, "one", dict(config, args=dict(config["args"],
                                                           per_device_train_batch_size=8)), 1)
    two = launch(tmp_path, "two", config)
    assert two["eval_loss"] == pytest.approx(one["eval_loss"], rel=1e-6)


@needs_fsdp2
@pytest.mark.parametrize("optim", ["adamw_custom_fused", "adamw_anyprecision"])
def test_fsdp2_shards_train_like_one_process(tmp_path, optim):
    config = dict(model="token", accumulation=2, args=dict(
        optim=optim, learning_rate=0.02, gradient_accumulation_steps=2, save_strategy="steps",
        save_steps=3))
    one = launch(tmp_path, "one", dict(config, args=dict(config["args"],
                                                           per_device_train_batch_size=8)), 1)
    two = launch(tmp_path, "two", dict(config, args=dict(config["args"], fsdp2=True,
                                                           per_device_train_batch_size=4)))
    assert_params_close(one, two)
    # a checkpoint of the sharded run resumes to the same end
    resumed = launch(tmp_path, "resumed", dict(config, dir="two", resume=str(
        tmp_path / "two" / "checkpoint-3"), args=dict(config["args"], fsdp2=True,
                                                      per_device_train_batch_size=4)))
    assert_params_close(two, resumed, rel=1e-6)


@needs_fsdp2
def test_fsdp2_trains_a_transformers_gpt2_with_tied_embeddings_like_one_process(tmp_path):
    """Each block of its ModuleList is a unit, the tied embedding and output layer
    stay in the root's group. A NaN loss on one rank only skips the update on every
    rank (as one process skips it), and an evaluation set that gives the ranks
    different numbers of batches (9 samples, batches of 4) neither hangs nor
    counts the padding, also when compute_metrics sees each batch (batch_eval_metrics:
    the padding rank takes part in each gather and brings nothing)."""
    pytest.importorskip("transformers")
    config = dict(model="gpt2", accumulation=2, args=dict(
        optim="adamw_custom_fused", learning_rate=0.01, gradient_accumulation_steps=2,
        max_steps=5, logging_steps=1, batch_eval_metrics=True))
    one = launch(tmp_path, "one", dict(config, nan_at=dict(step=3), args=dict(
        config["args"], per_device_train_batch_size=8)), 1)
    two = launch(tmp_path, "two", dict(config, nan_at=dict(step=3, rank=1), args=dict(
        config["args"], fsdp2=True, per_device_train_batch_size=4)))
    assert two["tied"] and one["tied"]
    assert two["global_step"] == one["global_step"] == 5
    assert_params_close(one, two)
    skipped = lambda run: [e["nonfinite_update_skipped"] for e in run["history"]
                           if "nonfinite_update_skipped" in e]
    assert skipped(one) == skipped(two) == [3]
    losses = lambda run: [e["loss"] for e in run["history"] if "loss" in e]
    assert len(losses(two)) == 4 and losses(two) == pytest.approx(losses(one), rel=1e-5)
    assert two["eval_loss"] == pytest.approx(one["eval_loss"], rel=1e-5)
    assert two["eval_samples_seen"] == one["eval_samples_seen"] == 9


def test_fsdp2_on_cpu_ranks_is_refused_where_torch_cannot_reduce_by_sums(monkeypatch):
    """torch 2.7's gloo reduce-scatter returns the sum for ReduceOp.AVG, and its FSDP2
    has no set_force_sum_reduction_for_comms: every gradient would be world_size
    times the mean, so the Trainer stops before sharding, naming the release."""
    from torch.distributed.fsdp import FSDPModule

    from pytrainer.trainer.distributed import DistributedSetupError
    from pytrainer.trainer.parallel import shard_fsdp2
    monkeypatch.delattr(FSDPModule, "set_force_sum_reduction_for_comms", raising=False)
    assert fsdp2_unsupported("cuda") is None
    expected = (f"fsdp2=True on CPU ranks (gloo) needs torch >= 2.8: torch {torch.__version__}'s "
                "gloo reduce-scatter returns the sum where FSDP2 asks for the mean, which would "
                "multiply every gradient by the number of ranks")
    assert fsdp2_unsupported("cpu") == expected
    with pytest.raises(DistributedSetupError) as refused:
        shard_fsdp2(torch.nn.Linear(2, 2), "cpu", 2)
    assert str(refused.value) == expected


def test_fsdp2_units_are_the_blocks_and_leave_tied_weights_to_the_root():
    from pytrainer.examples.byte_gpt import ByteGPT, ByteGPTConfig
    from pytrainer.trainer.parallel import fsdp2_units

    model = ByteGPT(ByteGPTConfig(n_layer=3, n_head=2, n_embd=16, block_size=8))
    model.frozen = torch.nn.Linear(2, 2).requires_grad_(False)
    model.extra = torch.nn.ParameterList([torch.nn.Parameter(torch.ones(2))])
    units = fsdp2_units(model)
    assert [id(u) for u in units] == [id(m) for m in (model.wpe, *model.blocks, model.ln_f)]


@needs_fsdp2
def test_fsdp2_builds_the_optimizer_of_optimizer_cls_and_kwargs_over_the_shards(tmp_path):
    """The way to give FSDP2 an optimizer of one's own: its class and arguments,
    built once the model is sharded; trains like one process with that optimizer.
    Also where the backend's reduce-scatter returns the sum for ReduceOp.AVG (torch
    2.8's gloo, emulated here on any release): plain SGD without clipping would take
    steps world_size times too long if the Trainer left FSDP2 to ask for AVG."""
    config = dict(model="token", sgd_class=True, accumulation=2, args=dict(
        max_grad_norm=0.0, lr_scheduler_type="constant", gradient_accumulation_steps=2))
    one = launch(tmp_path, "one", dict(config, args=dict(config["args"],
                                                           per_device_train_batch_size=8)), 1)
    two = launch(tmp_path, "two", dict(config, average_sums=True, args=dict(
        config["args"], fsdp2=True, per_device_train_batch_size=4)))
    assert_params_close(one, two)
    from tests.trainer_fixtures import TokenModel
    start = {k: v.flatten().tolist() for k, v in TokenModel().state_dict().items()}
    assert any(a != b for name in start for a, b in zip(two["params"][name], start[name]))


@needs_fsdp2
def test_a_user_optimizer_with_fsdp2_is_an_error(tmp_path):
    done, _ = run_worker(tmp_path, "user", dict(model="regression", sgd=True,
                                                 args=dict(fsdp2=True)))
    assert done.returncode != 0
    assert "optimizer passed in `optimizers`" in done.stderr
    assert "let the Trainer create it" in done.stderr
    assert "optimizer_cls_and_kwargs" in done.stderr


def test_a_rank_that_raises_exits_within_seconds(tmp_path):
    """Its peer waits in the next update's all-reduce; the failed rank must not wait
    for it in a barrier (until ddp_timeout) but exit, so torchrun stops the run."""
    marker = tmp_path / "raised"
    done, _ = run_worker(tmp_path, "fails", dict(
        model="regression", raise_at=dict(rank=1, step=2, marker=str(marker)),
        args=dict(ddp_timeout=300, max_steps=10)), timeout=280)
    ended = time.time()
    assert done.returncode != 0
    assert "rank 1 fails after step 2" in done.stderr
    assert ended - float(marker.read_text()) < 60


def launch_nodes(tmp_path, name, config, timeout=600):
    """Two processes as two nodes of one process each (LOCAL_RANK 0 both), each
    with an output folder of its own (as nodes without a shared filesystem);
    returns what each rank reported."""
    config = dict(config, output_dir=str(tmp_path / name), node_dirs=True,
                  report_every_rank=True)
    config_path, out_path = tmp_path / f"{name}.json", tmp_path / f"{name}.out.json"
    config_path.write_text(json.dumps(config))
    env = dict(clean_env(), WORLD_SIZE="2", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(_free_port()))
    worker = [sys.executable, str(ROOT / "tests" / "dist_worker.py"), str(config_path),
              str(out_path)]
    processes = [subprocess.Popen(worker, env=dict(env, RANK=str(rank), LOCAL_RANK="0"),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for rank in range(2)]
    for process in processes:
        _, err = process.communicate(timeout=timeout)
        assert process.returncode == 0, err[-6000:]
    return [json.loads(Path(f"{out_path}.{rank}").read_text()) for rank in range(2)]


def test_ddp_node_and_token_fields_reach_each_process(tmp_path):
    """ddp_* reach DistributedDataParallel, ddp_backend the process group;
    save_on_each_node writes checkpoints on every node; log_on_each_node sets the
    first process of every node at log_level; average_tokens_across_devices=False
    normalises each rank's loss by its own target count."""
    ranks = launch_nodes(tmp_path, "nodes", dict(model="counting-token", args=dict(
        max_steps=4, per_device_train_batch_size=4, save_strategy="steps", save_steps=4,
        ddp_bucket_cap_mb=1, ddp_broadcast_buffers=False, ddp_static_graph=True,
        ddp_find_unused_parameters=True, ddp_backend="gloo", save_on_each_node=True,
        log_on_each_node=True, log_level="info", log_level_replica="error",
        average_tokens_across_devices=False)))
    for rank in ranks:
        assert rank["ddp"] == {"bucket_bytes_cap": 1024 * 1024, "broadcast_buffers": False,
                               "static_graph": True, "find_unused_parameters": True,
                               "backend": "gloo"}
        assert rank["checkpoints"] == ["checkpoint-4"]
        assert rank["log_level"] == logging.INFO
    assert len(ranks[0]["counts"]) == len(ranks[1]["counts"]) == 4
    assert ranks[0]["counts"] != ranks[1]["counts"]  # each rank's own count


def test_log_level_replica_without_log_on_each_node():
    from pytrainer import TrainingArguments
    from pytrainer.trainer.log_levels import process_log_level
    a = TrainingArguments(log_level="info", log_level_replica="error", log_on_each_node=False)
    assert [process_log_level(a, rank, 0) for rank in (0, 1)] == [logging.INFO, logging.ERROR]
    b = TrainingArguments(log_level="info", log_level_replica="error")  # log_on_each_node
    assert [process_log_level(b, rank, 0) for rank in (0, 1)] == [logging.INFO, logging.INFO]
    assert process_log_level(b, 1, 1) == logging.ERROR


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_rank_that_cannot_reach_the_others_fails_clearly(tmp_path):
    env = dict(os.environ, WORLD_SIZE="2", RANK="0", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(_free_port()), PYTHONPATH=str(ROOT))
    code = ("from pytrainer import Trainer, TrainingArguments\n"
            "from tests.trainer_fixtures import RegressionModel\n"
            f"Trainer(RegressionModel(), TrainingArguments({str(tmp_path)!r}, use_cpu=True, "
            "ddp_timeout=5))\n")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 0
    assert "could not join the process group" in done.stderr
    assert "within 5 s" in done.stderr


def test_world_without_rank_is_an_error(tmp_path, monkeypatch):
    from pytrainer.trainer.distributed import DistributedSetupError, init_distributed
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    with pytest.raises(DistributedSetupError, match="launch with torchrun"):
        init_distributed(use_cpu=True, timeout_s=5)
