"""Checks an installed pytrainer (not a checkout): run with the working directory
outside the source tree, in an environment where pytrainer was installed from its
sdist (.ci/sdist_smoke.sh). Each optimizer steps on the CPU against the class it
claims to match, then `pytrainer train` runs a few steps end to end."""
import json
import math
import os
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import torch

import pytrainer
from pytrainer import _build_info, ops
from pytrainer.optim import Adafactor, AnyPrecisionAdamW, FusedAdamW

SHAPES = [(), (1,), (0,), (37,), (33, 65), (3, 5, 7)]
STEPS = 20
TRAIN = ["--max_steps", "5", "--n_layer", "1", "--n_head", "2", "--n_embd", "16",
         "--block_size", "32", "--max_train_bytes", "20000", "--per_device_train_batch_size", "4",
         "--eval_steps", "5", "--save_steps", "5", "--logging_steps", "1", "--sample_length", "16",
         "--disable_tqdm", "--use_cpu"]


def check_installed():
    site = {Path(sysconfig.get_paths()[key]).resolve() for key in ("purelib", "platlib")}
    package = Path(pytrainer.__file__).resolve().parent
    if package.parent not in site:
        raise SystemExit(f"pytrainer was imported from {package}, not from this environment's "
                         f"site-packages ({', '.join(map(str, site))})")
    ops.require()
    record = _build_info.read()
    if not record or record.get("torch") != str(torch.__version__):
        raise SystemExit(f"the build record {record} does not name torch {torch.__version__}")
    print(f"smoke: pytrainer {pytrainer.__version__} from {package}, kernels for "
          f"{', '.join(ops.device_types())} ({ops.cpu_isa()}), torch {torch.__version__}")


def step_both(ours, theirs, make_ours, make_theirs, **tolerance):
    generator = torch.Generator().manual_seed(1)
    params = [torch.nn.Parameter(torch.randn(shape, generator=generator)) for shape in SHAPES]
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    start = [p.detach().clone() for p in params]
    a, b = make_ours(params), make_theirs(twins)
    for _ in range(STEPS):
        for p, q in zip(params, twins):
            p.grad = torch.randn(p.shape, generator=generator)
            q.grad = p.grad.clone()
        a.step()
        b.step()
    for p, q, p0 in zip(params, twins, start):
        torch.testing.assert_close(p.detach(), q.detach(), **tolerance)
        if p.numel() and torch.equal(p.detach(), p0):
            raise SystemExit(f"{ours}: a parameter of shape {tuple(p.shape)} did not move")
    print(f"smoke: {ours} matches {theirs} over {STEPS} steps")


def check_optimizers():
    hyper = dict(lr=3e-3, betas=(0.9, 0.99), eps=1e-7, weight_decay=0.02)
    step_both("FusedAdamW", "torch.optim.AdamW", lambda ps: FusedAdamW(ps, **hyper),
              lambda ps: torch.optim.AdamW(ps, foreach=False, **hyper))
    step_both("AnyPrecisionAdamW (float32 states)", "torch.optim.AdamW",
              lambda ps: AnyPrecisionAdamW(ps, momentum_dtype=torch.float32,
                                           variance_dtype=torch.float32, **hyper),
              lambda ps: torch.optim.AdamW(ps, foreach=False, **hyper))
    from transformers.optimization import Adafactor as HFAdafactor
    step_both("Adafactor", "transformers' Adafactor",
              lambda ps: Adafactor(ps, beta1=0.9, weight_decay=0.01),
              lambda ps: HFAdafactor(ps, beta1=0.9, weight_decay=0.01), rtol=1e-5, atol=1e-6)


def check_train():
    command = Path(sys.executable).parent / "pytrainer"
    with tempfile.TemporaryDirectory() as out:
        run = subprocess.run([str(command), "train", "--output_dir", out, *TRAIN], cwd=out,
                             capture_output=True, text=True, timeout=600)
        if run.returncode != 0:
            raise SystemExit(f"pytrainer train failed:\n{run.stdout}\n{run.stderr}")
        metrics = json.loads(Path(out, "metrics.json").read_text())
        for key in ("train_loss", "eval_loss"):
            if not math.isfinite(metrics.get(key, math.nan)):
                raise SystemExit(f"pytrainer train: {key} is {metrics.get(key)}: {metrics}")
        print(f"smoke: pytrainer train ran 5 steps, eval_loss {metrics['eval_loss']:.3f}")


if __name__ == "__main__":
    if Path.cwd().resolve() == Path(__file__).resolve().parents[1] or os.environ.get("PYTHONPATH"):
        raise SystemExit("run this from outside the source tree, without PYTHONPATH")
    check_installed()
    check_optimizers()
    check_train()
    print("smoke: the installed package works")
