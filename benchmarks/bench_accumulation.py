"""Training throughput at a fixed effective batch: pytrainer's Trainer against
Hugging Face's, with gradient accumulation 1, 4 and 8.

Model: transformers' GPT2LMHeadModel (vocab 8192, 256 positions, 512 wide,
6 layers, 8 heads) on sequences of 256 random tokens, 40 optimizer steps, bf16
on GPU; effective batch 32 (micro-batch 32 x 1, 8 x 4, 4 x 8). pytrainer uses
adamw_custom_fused, Hugging Face adamw_torch_fused. On the CPU the default is a
scaled-down setting (see --cpu-*), since the full one takes an hour on 2 cores.

Both trainers run in the same process, alternating, several rounds. Two figures,
each the median over rounds: samples / wall time of train() (what a user waits
for, setup included), and the steady rate from the end of the first optimizer
step to the end of the last (setup and first-step warm-up excluded). On the GPU
the step ends are CUDA events recorded on the stream and read after train(): no
step waits for the GPU, so the overlap of host and device work is measured as a
user gets it.

    python benchmarks/bench_accumulation.py --out bench_out
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class RandomTokens(torch.utils.data.Dataset):
    def __init__(self, samples: int, length: int, vocab: int, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, vocab, (samples, length), generator=gen)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def make_model(cfg: dict, seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=cfg["vocab"], n_positions=cfg["seq"], n_embd=cfg["width"],
                        n_layer=cfg["layers"], n_head=cfg["heads"], use_cache=False)
    return GPT2LMHeadModel(config)


def common_args(cfg: dict, micro: int, accumulation: int, device: str) -> dict:
    return dict(per_device_train_batch_size=micro, gradient_accumulation_steps=accumulation,
                max_steps=cfg["steps"], learning_rate=1e-4, logging_steps=10_000,
                save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=device == "cpu",
                bf16=cfg["bf16"], dataloader_num_workers=0, seed=0)


def step_clock(base, device):
    """A callback (of `base`, each trainer's callback class) that marks the end of
    every optimizer step: a CUDA event on the GPU (recorded, not waited for), the
    host clock on the CPU (where the step's work is done when the step returns)."""
    class StepClock(base):
        def __init__(self):
            self.ends = []

        def on_step_end(self, args, state, control, **kwargs):
            if device == "cuda":
                event = torch.cuda.Event(enable_timing=True)
                event.record()
                self.ends.append(event)
            else:
                self.ends.append(time.perf_counter())

        def steady_seconds(self):
            """From the first step's end to the last's (after train(): the events
            are complete once the device is synchronised)."""
            if device == "cuda":
                return self.ends[0].elapsed_time(self.ends[-1]) / 1000
            return self.ends[-1] - self.ends[0]
    return StepClock()


def timed_train(trainer, clock, device):
    """(wall seconds of train(), seconds from the first step's end to the last's)."""
    _sync(device)
    start = time.perf_counter()
    trainer.train()
    _sync(device)
    return time.perf_counter() - start, clock.steady_seconds()


def run_pytrainer(cfg, dataset, micro, accumulation, device):
    from pytrainer import Trainer, TrainingArguments
    from pytrainer.trainer import TrainerCallback
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(out, optim="adamw_custom_fused",
                                 **common_args(cfg, micro, accumulation, device))
        clock = step_clock(TrainerCallback, device)
        trainer = Trainer(make_model(cfg), args, train_dataset=dataset, callbacks=[clock])
        return timed_train(trainer, clock, device)


def run_hf(cfg, dataset, micro, accumulation, device):
    import transformers
    with tempfile.TemporaryDirectory() as out, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = transformers.TrainingArguments(out, optim="adamw_torch_fused",
                                              **common_args(cfg, micro, accumulation, device))
        clock = step_clock(transformers.TrainerCallback, device)
        trainer = transformers.Trainer(model=make_model(cfg), args=args, train_dataset=dataset,
                                       callbacks=[clock])
        return timed_train(trainer, clock, device)


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--accumulation", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--effective-batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (40 on GPU)")
    parser.add_argument("--cpu-width", type=int, default=128)
    parser.add_argument("--cpu-layers", type=int, default=2)
    parser.add_argument("--cpu-seq", type=int, default=64)
    parser.add_argument("--out", default="bench_out")
    args = parser.parse_args(argv)
    device = args.device
    if device == "cuda":
        cfg = dict(vocab=8192, seq=256, width=512, layers=6, heads=8, steps=args.steps or 40,
                   bf16=True)
    else:
        cfg = dict(vocab=8192, seq=args.cpu_seq, width=args.cpu_width, layers=args.cpu_layers,
                   heads=4, steps=args.steps or 8, bf16=False)
    try:
        import transformers  # noqa: F401
        have_hf = True
    except ImportError:
        have_hf = False
        print("transformers is not installed: measuring pytrainer only")
    dataset = RandomTokens(args.effective_batch * cfg["steps"], cfg["seq"], cfg["vocab"])
    samples = args.effective_batch * cfg["steps"]
    runners = {"pytrainer (adamw_custom_fused)": run_pytrainer}
    if have_hf:
        runners["Hugging Face (adamw_torch_fused)"] = run_hf
    rows = []
    for accumulation in args.accumulation:
        micro = args.effective_batch // accumulation
        times = {name: [] for name in runners}
        for name, run in runners.items():  # warm-up: allocator, kernels, lazy imports
            run(dict(cfg, steps=2), dataset, micro, accumulation, device)
        for _ in range(args.rounds):
            for name, run in runners.items():
                times[name].append(run(cfg, dataset, micro, accumulation, device))
        for name, ts in times.items():
            walls, steadies = [t[0] for t in ts], [t[1] for t in ts]
            rows.append(dict(
                trainer=name, micro_batch=micro, accumulation=accumulation,
                samples_per_second=samples / statistics.median(walls),
                steady_samples_per_second=(samples - args.effective_batch)
                / statistics.median(steadies),
                seconds=statistics.median(walls), rounds=walls, steady_rounds=steadies))
        line = "  ".join(f"{r['trainer']}: {r['samples_per_second']:.1f} samples/s"
                         for r in rows[-len(runners):])
        print(f"{micro} x {accumulation}: {line}", flush=True)

    print(f"\n{device}: GPT2LMHeadModel vocab {cfg['vocab']}, seq {cfg['seq']}, width {cfg['width']}, "
          f"{cfg['layers']} layers; {cfg['steps']} steps of {args.effective_batch} samples"
          f"{', bf16' if cfg['bf16'] else ''}")
    print(f"{'micro x accum':<15}" + "".join(f"{name:>36}" for name in runners) + "     ratio"
          + "   steady ratio")
    for accumulation in args.accumulation:
        sel = [r for r in rows if r["accumulation"] == accumulation]
        ratio, steady = (float("nan"),) * 2
        if len(sel) > 1:
            ratio = sel[0]["samples_per_second"] / sel[1]["samples_per_second"]
            steady = sel[0]["steady_samples_per_second"] / sel[1]["steady_samples_per_second"]
            sel[1].update(pytrainer_over_hf=ratio, steady_pytrainer_over_hf=steady)
        print(f"{sel[0]['micro_batch']:>4} x {accumulation:<8}" +
              "".join(f"{r['samples_per_second']:>18.1f} ({r['steady_samples_per_second']:.1f})"
                      " s/s" for r in sel) + f"{ratio:>10.2f}{steady:>15.2f}")
    print("samples/s: wall time of train() (steady: first step's end to the last's)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = dict(torch=torch.__version__, device=device,
               gpu=torch.cuda.get_device_name() if device == "cuda" else None,
               date=time.strftime("%Y-%m-%d %H:%M:%S"))
    if have_hf:
        env["transformers"] = transformers.__version__
    (out / "bench_accumulation.json").write_text(json.dumps(dict(environment=env, config=cfg,
                                                                 rows=rows), indent=2))
    print(f"json: {out / 'bench_accumulation.json'}")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 4))
        width = 0.8 / len(runners)
        for k, name in enumerate(runners):
            sel = [r for r in rows if r["trainer"] == name]
            ax.bar([i + k * width for i in range(len(sel))], [r["samples_per_second"] for r in sel],
                   width, label=name)
        ax.set_xticks([i + width * (len(runners) - 1) / 2 for i in range(len(args.accumulation))])
        ax.set_xticklabels([f"{args.effective_batch // a} x {a}" for a in args.accumulation])
        ax.set_xlabel("micro-batch x accumulation")
        ax.set_ylabel("samples / s (higher is better)")
        ax.set_title(f"Training throughput, {device}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "bench_accumulation.png", dpi=110)
        print(f"chart: {out / 'bench_accumulation.png'}")
    except ImportError:
        print("matplotlib is not installed: no chart written")
    return rows


if __name__ == "__main__":
    main()
