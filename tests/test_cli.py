"""``pytrainer train`` end to end on a tiny setting, and its errors."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from pytrainer import ops

TINY = ["--max_steps", "4", "--n_layer", "1", "--n_head", "2", "--n_embd", "16",
        "--block_size", "32", "--max_train_bytes", "20000", "--per_device_train_batch_size", "4",
        "--eval_steps", "2", "--save_steps", "2", "--logging_steps", "2", "--sample_length", "16",
        "--disable_tqdm", "--use_cpu"]


def run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "pytrainer", *args], capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.skipif(not ops.available(), reason="compiled kernels not built")
def test_train_end_to_end(tmp_path):
    out = run("train", "--output_dir", str(tmp_path), *TINY)
    assert out.returncode == 0, out.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("train_loss", "train_runtime", "train_samples_per_second", "eval_loss",
                "eval_runtime", "epoch"):
        assert key in metrics, key
    # matplotlib is optional: without it the run says so instead of plotting
    has_matplotlib = importlib.util.find_spec("matplotlib") is not None
    assert (tmp_path / "loss.png").is_file() == has_matplotlib
    assert ("no plot: matplotlib is not installed" in out.stdout) != has_matplotlib
    assert (tmp_path / "model.safetensors").is_file()
    assert sorted(p for p in os.listdir(tmp_path) if p.startswith("checkpoint-")) == \
        ["checkpoint-2", "checkpoint-4"]
    assert "final metrics:" in out.stdout and "eval_loss" in out.stdout

    # evaluation only: loads the model the run saved, predicts on the held-out text
    again = run("train", "--output_dir", str(tmp_path), "--do_eval", "--do_predict", *TINY)
    assert again.returncode == 0, again.stderr
    metrics2 = json.loads((tmp_path / "metrics.json").read_text())
    assert "train_loss" not in metrics2 and "test_loss" in metrics2
    assert metrics2["eval_loss"] == pytest.approx(metrics["eval_loss"], rel=1e-5)


@pytest.mark.skipif(not ops.available(), reason="compiled kernels not built")
def test_train_on_a_users_file(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("the quick brown fox jumps over the lazy dog\n" * 500)
    out = run("train", "--output_dir", str(tmp_path / "out"), "--train_file", str(text), *TINY)
    assert out.returncode == 0, out.stderr
    assert str(text) in out.stdout


@pytest.mark.skipif(not ops.available(), reason="compiled kernels not built")
def test_train_fsdp2_under_torchrun(tmp_path):
    """The README's command on 2 CPU ranks: ByteGPT's blocks sharded, its tied
    embedding in the root's group; an evaluation set of 31 blocks in batches of 12
    gives rank 0 two batches and rank 1 one; the sample is generated on both ranks.
    The saved model, evaluated in one process, gives the same eval_loss."""
    from torch.distributed import is_available

    from pytrainer.trainer.distributed import fsdp2_unsupported
    if not is_available():
        pytest.skip("needs torch.distributed")
    if fsdp2_unsupported("cpu"):
        pytest.skip(fsdp2_unsupported("cpu"))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    flags = ["--output_dir", str(tmp_path), *TINY, "--max_steps", "3", "--n_layer", "2",
             "--per_device_eval_batch_size", "12"]
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node=2", "-m", "pytrainer", "train", "--fsdp2", *flags],
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    assert out.stdout.count("\nsample:\n") == 1  # printed by rank 0 only
    sharded = json.loads((tmp_path / "metrics.json").read_text())
    assert sorted(p for p in os.listdir(tmp_path) if p.startswith("checkpoint-")) == \
        ["checkpoint-2", "checkpoint-3"]
    again = run("train", "--do_eval", *flags)
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "metrics.json").read_text())["eval_loss"] == \
        pytest.approx(sharded["eval_loss"], rel=1e-5)


@pytest.mark.cuda
def test_train_a_few_hundred_steps_on_cuda(tmp_path):
    """The default model in bf16 on the GPU: the loss falls well below a uniform
    guess over bytes (ln 256 = 5.55), no update is skipped, nothing hangs."""
    import torch
    if not (torch.cuda.is_available() and ops.has_kernels("cuda")):
        pytest.skip("needs an NVIDIA GPU and pytrainer's CUDA kernels")
    out = run("train", "--output_dir", str(tmp_path), "--max_steps", "300", "--bf16",
              "--eval_steps", "100", "--save_steps", "150", "--logging_steps", "25",
              "--max_train_bytes", "400000", "--sample_length", "32", "--disable_tqdm",
              timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    assert "device cuda" in out.stdout
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["eval_loss"] < 3.0
    state = json.loads((tmp_path / "checkpoint-300" / "trainer_state.json").read_text())
    losses = [e["loss"] for e in state["log_history"] if "loss" in e]
    assert len(losses) == 12 and losses[-1] < losses[0] - 1.5
    assert not any("nonfinite_update_skipped" in e for e in state["log_history"])


@pytest.mark.parametrize("args, fragment", [
    (["train", "--learning_rat", "1e-3"], "--learning_rate"),
    (["train", "--eval_strategy", "strps"], "steps"),
    (["train", "--n_embd", "30", "--n_head", "4"], "multiple of n_head"),
    (["train", "--train_file", "/nonexistent/file.txt"], "cannot read it"),
])
def test_bad_flags_exit_2_with_a_message(args, fragment):
    out = run(*args)
    assert out.returncode == 2
    assert fragment in out.stderr
    assert "Traceback" not in out.stderr


def test_usage_and_unknown_command():
    assert "pytrainer train" in run("--help").stdout
    out = run("trian")
    assert out.returncode == 2 and "unknown command 'trian'" in out.stderr


# ------------------------------------------------------------- setup errors
def _main(*argv):
    from pytrainer.cli import main
    return main(list(argv))


@pytest.mark.parametrize("extra, fragment", [
    (["--output_dir", "{blocker}/out"], "--output_dir {blocker}/out: cannot write there"),
    (["--optim", "adamw_apex_fused"], "optim='adamw_apex_fused' needs apex, which is not "
                                      "installed"),
    (["--optim", "adamw_bnb_8bit"], "needs bitsandbytes, which is not installed (pip install "
                                    "bitsandbytes)"),
    (["--optim", "lomo"], "optim='lomo' not available in pytrainer"),
    (["--optim", "sgd", "--optim_args", "momentun=0.9"], "optim_args key 'momentun' is not "
                                                         "valid for sgd"),
    (["--report_to", "wandb"], "report_to='wandb' is not supported"),
    (["--resume_from_checkpoint", "{tmp}/absent"], "no such checkpoint folder"),
    (["--push_to_hub"], "push_to_hub=True is not available in pytrainer"),
    (["--warmup_steps", "5", "--warmup_ratio", "0.1"], "name the same argument"),
    (["--activation_checkpointing"], "ByteGPT has none"),
    pytest.param(["--tf32", "true"], "tf32=True needs an NVIDIA GPU of the Ampere generation",
                 marks=pytest.mark.skipif(torch.cuda.is_available(),
                                          reason="a GPU may take tf32=True")),
], ids=["output_dir", "apex", "bitsandbytes", "lomo", "optim_args", "report_to", "resume",
        "push_to_hub", "deprecated-conflict", "activation-checkpointing", "tf32"])
@pytest.mark.filterwarnings("ignore:warmup_ratio is a transformers 4.x:FutureWarning")
def test_setup_errors_exit_2_with_one_line_before_training(capsys, monkeypatch, tmp_path, extra,
                                                           fragment):
    for module in ("apex", "bitsandbytes", "lomo_optim"):
        monkeypatch.setitem(sys.modules, module, None)  # as on a machine without them
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    values = {"blocker": blocker, "tmp": tmp_path}
    extra = [token.format(**values) for token in extra]
    if "--output_dir" not in extra:
        extra += ["--output_dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exit_:
        _main("train", *TINY, *extra)
    assert exit_.value.code == 2
    out, err = capsys.readouterr()
    assert "Traceback" not in err and out == ""  # nothing ran: no banner, no training
    last = err.strip().splitlines()[-1]
    assert last.startswith("pytrainer train: error: ") and fragment.format(**values) in last


def test_help_lists_the_optimizers_available_here(capsys):
    with pytest.raises(SystemExit) as exit_:
        _main("train", "--help")
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    (available,) = [line for line in out.splitlines()
                    if line.startswith("optimizers available here:")]
    for name in ("adamw_torch_fused", "adamw_custom_fused", "sgd", "adafactor"):
        assert name in available
    assert "needing a library (pip install bitsandbytes)" in out
    assert "not available in pytrainer (its Trainer cannot drive them)" in out
