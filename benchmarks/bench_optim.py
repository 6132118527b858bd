"""Optimizer step time: pytrainer's fused kernels against PyTorch's optimizers.

Every candidate runs in the same process on the same parameter set, in
interleaved rounds (machines are noisy: a slow minute hits all candidates
alike); the figures are medians over rounds (the memory reference: its best
round), and ratios are medians of the per-round ratios. A memory reference is
timed in the same rounds, so effective bandwidth can be read as a fraction of
what the memory delivers: on the CPU one pass over four 256 MiB float32 buffers
that reads all four and writes three
(``pytrainer.memory_pass_``: an AdamW step's streams, with the kernels' threads
and vectors),
on CUDA a device copy of 1 GiB.

On CUDA the sets of many small tensors and GPT-2 small, where launch overhead
matters, also time a captured step (``capturable=True``, the step captured in a
CUDA graph and replayed) of FusedAdamW beside torch's fused AdamW captured the
same way.

``--compiled`` adds torch's AdamW (foreach) with its step compiled by
``torch.compile``, as torch's recipe for compiling the optimizer does, as an
anchor of FusedAdamW (``speedup_vs_compiled`` in its rows), on the sets of at
most ``COMPILED_MAX_TENSORS`` tensors (the compile time grows with their number);
``--optimizers`` times only the candidates it names. The JSON is written again
after each set, so a run that is cut short keeps the sets it finished.

pytrainer's CPU kernels run with the instruction set the machine picks, or with
each one named by ``--isa`` (``all``: every one this CPU can run), in the same
rounds; ``PYTRAINER_CPU_ISA`` forces one for a whole process. Each build is
compared with torch's kernels of the same vector width: where torch's kernels
here are wider (its AVX-512 ones on an AVX-512 machine), the ``AVX2`` build and
the portable ``DEFAULT`` one (the fallback for CPUs without AVX2) are measured in
processes of their own started with ``ATEN_CPU_CAPABILITY=avx2`` or ``default``
(torch reads it once, at start) and ``PYTRAINER_CPU_ISA`` naming the build, whose
rows (``torch_cpu_capability``: ``AVX2``, ``DEFAULT``) join this one's: on an
AVX-512 machine that is what an AVX2 machine's user compares. (pytrainer follows
torch's capability unless ``PYTRAINER_CPU_ISA`` names one, which wins; those
processes set both, so each says what it runs.)

    python benchmarks/bench_optim.py                     # CPU, and CUDA when present
    python benchmarks/bench_optim.py --devices cpu --isa all
    python benchmarks/bench_optim.py --devices cuda --out bench_out
    python benchmarks/bench_optim.py --devices cuda --sets llama --compiled \
        --optimizers "pytrainer FusedAdamW" "torch AdamW fused" "torch AdamW compiled"

Writes a table to stdout, ``bench_optim.json`` and ``bench_optim.png`` (when
matplotlib is installed) into ``--out``. In the JSON rows, ``copy_gb_s`` is the
memory reference's bandwidth and ``fraction_of_copy_bw`` the effective bandwidth
as a fraction of it.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pytrainer import ops  # noqa: E402
from pytrainer.optim import Adafactor, AnyPrecisionAdamW, FusedAdamW  # noqa: E402
from tests.reference.anyprecision import TorchdistxAnyPrecisionAdamW  # noqa: E402

# ----------------------------------------------------------------- param sets


def llama_shapes(hidden: int, intermediate: int, vocab: int, layers: int = 16):
    """Embedding, then per layer 4 attention matrices, 2 up/gate and 1 down
    projection and 2 norm vectors, then the final norm: 146 tensors for 16 layers."""
    shapes = [(vocab, hidden)]
    for _ in range(layers):
        shapes += [(hidden, hidden)] * 4 + [(intermediate, hidden)] * 2
        shapes += [(hidden, intermediate), (hidden,), (hidden,)]
    shapes.append((hidden,))
    return shapes


def gpt2_shapes(layers: int = 12, hidden: int = 768, vocab: int = 50257, positions: int = 1024):
    """GPT-2's parameters as Hugging Face's GPT2LMHeadModel holds them (the LM head
    tied to the token embedding): 148 tensors, 124.4 M params for GPT-2 small."""
    shapes = [(vocab, hidden), (positions, hidden)]
    for _ in range(layers):
        shapes += [(hidden,), (hidden,),                        # ln_1
                   (hidden, 3 * hidden), (3 * hidden,),         # attn.c_attn (Conv1D)
                   (hidden, hidden), (hidden,),                 # attn.c_proj
                   (hidden,), (hidden,),                        # ln_2
                   (hidden, 4 * hidden), (4 * hidden,),         # mlp.c_fc
                   (4 * hidden, hidden), (hidden,)]             # mlp.c_proj
    return shapes + [(hidden,), (hidden,)]                      # ln_f


def resnet50_shapes(width: int = 64, blocks=(3, 4, 6, 3), classes: int = 1000):
    """ResNet-50's parameters as torchvision holds them: conv weights [O, I, kh, kw]
    (3x3 and 1x1 in the bottlenecks, the 7x7 stem), batch-norm weights and biases,
    the classifier: 161 tensors, 25.6 M params."""
    shapes = [(width, 3, 7, 7), (width,), (width,)]
    channels = width
    for stage, count in enumerate(blocks):
        inner = width * 2**stage
        for block in range(count):
            shapes += [(inner, channels, 1, 1), (inner,), (inner,),
                       (inner, inner, 3, 3), (inner,), (inner,),
                       (4 * inner, inner, 1, 1), (4 * inner,), (4 * inner,)]
            if block == 0:  # the projection shortcut
                shapes += [(4 * inner, channels, 1, 1), (4 * inner,), (4 * inner,)]
            channels = 4 * inner
    return shapes + [(classes, channels), (classes,)]


#: the sets shaped like real models, where the slow per-tensor anchors are left out
MODEL_SETS = ("gpt2", "resnet50")


def param_sets(device: str, quick: bool) -> dict[str, list[tuple[int, ...]]]:
    if device == "cuda":
        llama = llama_shapes(2048, 8192, 32000)  # 1.139 B params
        gpt2 = gpt2_shapes()  # GPT-2 small, 124.4 M params
    else:
        # the same proportions scaled to about 50 M params: large enough to leave the caches
        llama = llama_shapes(432, 1728, 6750)
        gpt2 = gpt2_shapes(layers=2)  # its real shapes and embedding, 2 of 12 layers: 53 M
    sets = {"llama": llama, "4000x4096": [(4096,)] * 4000, "gpt2": gpt2,
            "resnet50": resnet50_shapes()}
    if quick:
        sets = {"llama": llama_shapes(128, 512, 2000, layers=4), "400x256": [(256,)] * 400,
                "gpt2": gpt2_shapes(layers=1, hidden=64, vocab=500, positions=64),
                "resnet50": resnet50_shapes(width=4, blocks=(1, 1, 1, 1), classes=10)}
    return sets


def one_tensor_twin(shapes):
    """One tensor of the same total size: the reference of a many-tensor set."""
    return [(sum(math.prod(s) for s in shapes),)]


# ----------------------------------------------------------------- candidates


@dataclass
class Candidate:
    name: str
    make: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]
    #: bytes one step moves per parameter (for the effective bandwidth)
    bytes_per_param: int
    #: the candidate this one's speedup is measured against
    anchor: str = "torch AdamW fused"
    #: the CPU instruction set pytrainer's kernels run with (None: not pytrainer's,
    #: or the automatic choice)
    isa: str | None = None

    @property
    def label(self) -> str:
        return f"{self.name} [{self.isa}]" if self.isa else self.name


class OnIsa:
    """An optimizer whose steps run with one CPU instruction set's kernels."""

    def __init__(self, optimizer: torch.optim.Optimizer, isa: str):
        self.optimizer, self.isa = optimizer, isa

    def step(self):
        ops.set_cpu_isa(self.isa)
        try:
            self.optimizer.step()
        finally:
            ops.set_cpu_isa("")


def for_isas(cands: list[Candidate], isas: list[str] | None) -> list[Candidate]:
    """pytrainer's candidates once per instruction set in ``isas`` (None: once, with
    the automatic choice); the others once."""
    if not isas:
        return cands
    out = []
    for cand in cands:
        if not cand.name.startswith("pytrainer"):
            out.append(cand)
            continue
        for isa in isas:
            def make(ps, make=cand.make, isa=isa):
                return OnIsa(make(ps), isa)
            out.append(Candidate(cand.name, make, cand.bytes_per_param, cand.anchor, isa))
    return out


def adamw_bytes_per_param(dtype: torch.dtype) -> int:
    """What an AdamW step moves per parameter: read p, g, m, v; write p, m, v."""
    return 28 if dtype == torch.float32 else 14


def candidates(dtype: torch.dtype) -> list[Candidate]:
    """AdamW and Adafactor variants; for 16-bit parameters also the any-precision
    optimizer with momentum, variance and Kahan buffer in the parameter's dtype, and
    its per-tensor reference."""
    adamw_bytes = adamw_bytes_per_param(dtype)
    cands = [
        Candidate("pytrainer FusedAdamW", lambda ps: FusedAdamW(ps, lr=1e-3), adamw_bytes),
        Candidate("torch AdamW fused", lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True),
                  adamw_bytes),
        Candidate("torch AdamW foreach",
                  lambda ps: torch.optim.AdamW(ps, lr=1e-3, foreach=True), adamw_bytes),
        Candidate("torch AdamW for-loop",
                  lambda ps: torch.optim.AdamW(ps, lr=1e-3, foreach=False), adamw_bytes),
    ]
    # Adafactor's floor: row/column sums of g^2 with p^2 (read p, g), the sum of U^2
    # (read g), the update (read p, g; write p): six accesses, 24 bytes per float32
    # parameter, 12 per 16-bit one
    adafactor_bytes = 6 * torch.empty((), dtype=dtype).element_size()
    anchor = "torch Adafactor foreach"
    # torch's Adafactor on 16-bit params is slow to time: no anchor there ("")
    cands.append(Candidate("pytrainer Adafactor", lambda ps: Adafactor(ps), adafactor_bytes,
                           anchor if dtype == torch.float32 else ""))
    if dtype == torch.float32:
        cands += [
            Candidate(anchor, lambda ps: torch.optim.Adafactor(ps, lr=1e-2, foreach=True),
                      adafactor_bytes, anchor),
            Candidate("torch Adafactor for-loop",
                      lambda ps: torch.optim.Adafactor(ps, lr=1e-2, foreach=False),
                      adafactor_bytes, anchor),
        ]
    if dtype in (torch.bfloat16, torch.float16):
        states = dict(lr=1e-3, use_kahan_summation=True, momentum_dtype=dtype,
                      variance_dtype=dtype, compensation_buffer_dtype=dtype)
        # read p, g, m, v, c; write p, m, v, c: 18 bytes in 16-bit dtypes
        cands += [
            Candidate("pytrainer AnyPrecision+Kahan",
                      lambda ps: AnyPrecisionAdamW(ps, **states), 18),
            Candidate("torchdistx-style AnyPrecision", lambda ps: TorchdistxAnyPrecisionAdamW(
                ps, **states), 18),
        ]
    return cands


#: the sets where a captured step is timed too: many small tensors, a small model
CAPTURED_SETS = ("4000x4096", "400x256", "gpt2")
CAPTURED_ANCHOR = "torch AdamW fused captured"


class CapturedStep:
    """An optimizer's step captured in a CUDA graph after one eager warm-up step
    on a side stream (what torch.cuda.graph asks for); ``step()`` replays it."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            optimizer.step()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            optimizer.step()

    def step(self):
        self.graph.replay()


def captured_candidates(dtype: torch.dtype, device: str, set_name: str) -> list[Candidate]:
    """FusedAdamW and torch's fused AdamW, both capturable=True, their steps
    captured and replayed: on CUDA, for the sets of CAPTURED_SETS."""
    if device != "cuda" or set_name not in CAPTURED_SETS:
        return []
    adamw_bytes = adamw_bytes_per_param(dtype)
    return [
        Candidate("pytrainer FusedAdamW captured",
                  lambda ps: CapturedStep(FusedAdamW(ps, lr=1e-3, capturable=True)),
                  adamw_bytes, CAPTURED_ANCHOR),
        Candidate(CAPTURED_ANCHOR, lambda ps: CapturedStep(
            torch.optim.AdamW(ps, lr=1e-3, fused=True, capturable=True)), adamw_bytes,
            CAPTURED_ANCHOR),
    ]


COMPILED_ANCHOR = "torch AdamW compiled"
#: the most tensors a set may have for the compiled anchor: dynamo traces the step
#: over every tensor, and the compile time grows with their number
COMPILED_MAX_TENSORS = 500


class CompiledStep:
    """An optimizer whose step is a compiled function calling ``step()`` (torch's
    recipe for compiling the optimizer); the first step compiles."""

    def __init__(self, optimizer: torch.optim.Optimizer, backend: str):
        self.optimizer = optimizer

        def step():
            optimizer.step()

        self.step = torch.compile(step, backend=backend)


def compiled_candidates(dtype: torch.dtype, tensors: int, backend: str) -> list[Candidate]:
    """torch's foreach AdamW with its step compiled, for sets of at most
    COMPILED_MAX_TENSORS tensors (none for larger ones)."""
    if tensors > COMPILED_MAX_TENSORS:
        return []
    adamw_bytes = adamw_bytes_per_param(dtype)
    return [Candidate(COMPILED_ANCHOR, lambda ps: CompiledStep(
        torch.optim.AdamW(ps, lr=1e-3, foreach=True), backend), adamw_bytes)]


#: second anchors: a candidate's ratio to this one too, when it ran in the same rounds
SECOND_ANCHORS = {"pytrainer FusedAdamW": ("speedup_vs_compiled", COMPILED_ANCHOR)}


# ----------------------------------------------------------------- timing


class Timer:
    """Wall time of a block on the CPU, CUDA events on the GPU."""

    def __init__(self, device: str):
        self.device = device

    def __call__(self, fn: Callable[[], None], n: int) -> float:
        if self.device == "cuda":
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(n):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3 / n
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t0) / n


MEMORY_REFERENCE = {
    "cpu": "pytrainer.memory_pass_: one pass over four float32 buffers of 256 MiB that reads "
           "all four and writes three, with the kernels' threads and vectors",
    "cuda": "a device copy of 1 GiB",
}


def memory_reference_fn(device: str, quick: bool = False):
    """The memory reference (MEMORY_REFERENCE); returns (fn, bytes read + written).
    On the CPU a copy reads less than the memory delivers (the reads of its
    destination before it is written are not counted), and so does one stream."""
    if device == "cuda":
        src = torch.randn(1 << 28, device=device)
        dst = torch.empty_like(src)
        return (lambda: dst.copy_(src)), 2 * src.numel() * src.element_size()
    n = 1 << (20 if quick else 26)
    outputs = [torch.randn(n) for _ in range(3)]
    source = torch.randn(n) * 1e-6
    return (lambda: torch.ops.pytrainer.memory_pass_(outputs, source)), (2 * 3 + 1) * 4 * n


def make_params(shapes, dtype, device, seed=0):
    """Each parameter with its grad, generated on the device (1 B random numbers
    on the CPU would dominate a GPU run)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    params = []
    for s in shapes:
        p = torch.nn.Parameter(torch.randn(s, generator=gen, device=device).to(dtype))
        p.grad = (torch.randn(s, generator=gen, device=device) * 1e-2).to(dtype)
        params.append(p)
    return params


def is_slow(cand: Candidate) -> bool:
    """A per-tensor anchor (a Python loop over the tensors), or the portable build."""
    return "for-loop" in cand.name or "torchdistx" in cand.name or cand.isa == "DEFAULT"


def bench_set(device, dtype, shapes, candidates, rounds, steps_per_round, timer, copy,
              twins=(), errors=None):
    """Median step time per candidate (and of the copy) over interleaved rounds.
    ``twins``: candidates timed on one tensor of the same size, named "<name> (1 tensor)".
    A captured candidate whose capture fails is left out and its error appended
    to ``errors`` (the other figures are still measured)."""
    copy_fn, copy_bytes = copy
    runs = []
    for cand in candidates:
        params = make_params(shapes, dtype, device)
        try:
            runs.append((cand, cand.make(params)))
        except RuntimeError as error:
            if cand.anchor != CAPTURED_ANCHOR or errors is None:
                raise
            errors.append(f"{cand.name}, {len(shapes)} tensors, {dtype}: {error}")
            print(f"FAILED {errors[-1]}")
    for cand in twins:
        params = make_params(one_tensor_twin(shapes), dtype, device)
        twin = Candidate(f"{cand.name} (1 tensor)", cand.make, cand.bytes_per_param, cand.anchor,
                         cand.isa)
        runs.append((twin, twin.make(params)))
    for _, opt in runs:
        for _ in range(2):  # warm-up: state allocation, table building, caches
            opt.step()
    times = {c.label: [] for c, _ in runs}
    copy_times = []
    for _ in range(rounds):
        copy_times.append(timer(copy_fn, 3))
        for cand, opt in runs:
            n = max(1, steps_per_round // 2) if is_slow(cand) else steps_per_round
            times[cand.label].append(timer(opt.step, n))
    compiled = any(isinstance(opt, CompiledStep) for _, opt in runs)
    del runs
    if compiled:  # each set's compile is a new entry of one function: stay under dynamo's limit
        torch._dynamo.reset()
    if device == "cuda":
        torch.cuda.empty_cache()
    return times, copy_times, copy_bytes


def many_tensor_ratios(times: dict[str, list[float]],
                       cands: list[Candidate]) -> dict[str, float]:
    """Median over rounds of (many tensors' time / one tensor's time), per candidate."""
    out = {}
    for cand in cands:
        ts, twin = times.get(cand.label), times.get(f"{cand.name} (1 tensor)"
                                                     + (f" [{cand.isa}]" if cand.isa else ""))
        if ts and twin:
            out[cand.label] = statistics.median(a / b for a, b in zip(ts, twin))
    return out


def summarize(set_name, dtype, shapes, times, copy_times, copy_bytes, cands):
    n_params = sum(math.prod(s) for s in shapes)
    # the best round: what the memory can deliver (other load only slows a pass down),
    # so that the fractions of the kernels' median rounds are not flattered by noise
    copy_bw = copy_bytes / min(copy_times)
    by_label = {c.label: (c, False) for c in cands}
    for c in cands:
        twin = Candidate(f"{c.name} (1 tensor)", c.make, c.bytes_per_param, c.anchor, c.isa)
        by_label[twin.label] = (twin, True)
    ratios_many = many_tensor_ratios(times, cands)
    rows = []
    for label, ts in times.items():
        cand, one_tensor = by_label[label]
        med = statistics.median(ts)
        anchor = f"{cand.anchor} (1 tensor)" if one_tensor else cand.anchor
        ratios = [r / t for r, t in zip(times[anchor], ts)] if anchor in times else []
        eff = n_params * cand.bytes_per_param / med
        second = {}
        if not one_tensor and cand.name in SECOND_ANCHORS:
            key, other = SECOND_ANCHORS[cand.name]
            if other in times:
                second[key] = statistics.median(r / t for r, t in zip(times[other], ts))
        rows.append(dict(
            set=set_name, dtype=str(dtype).replace("torch.", ""), optimizer=cand.name,
            isa=cand.isa, tensors=1 if one_tensor else len(shapes),
            time_over_one_tensor=ratios_many.get(label),
            bytes_per_param=cand.bytes_per_param, anchor=anchor,
            params=n_params, ms_per_step=med * 1e3,
            ms_min=min(ts) * 1e3, params_per_s=n_params / med, effective_gb_s=eff / 1e9,
            fraction_of_copy_bw=eff / copy_bw, copy_gb_s=copy_bw / 1e9,
            speedup_vs_anchor=statistics.median(ratios) if ratios else None, **second))
    return rows


def print_table(rows, title):
    print(f"\n{title}")
    head = (f"{'set':<12}{'dtype':<9}{'optimizer':<36}{'ISA':<12}{'ms/step':>9}{'Mparam/s':>10}"
            f"{'GB/s':>8}{'of mem':>9}{'vs anchor':>11}  anchor")
    print(head)
    print("-" * len(head))
    for r in rows:
        ratio = r["speedup_vs_anchor"]
        print(f"{r['set']:<12}{r['dtype']:<9}{r['optimizer']:<36}{r['isa'] or '':<12}"
              f"{r['ms_per_step']:>9.2f}"
              f"{r['params_per_s'] / 1e6:>10.0f}{r['effective_gb_s']:>8.1f}"
              f"{r['fraction_of_copy_bw']:>8.0%} {('%.2fx' % ratio) if ratio else '':>10}  "
              f"{'' if r['anchor'] == r['optimizer'] else r['anchor']}")


def plot(rows, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no chart written")
        return
    groups = sorted({(r["device"], r["set"], r["dtype"]) for r in rows})
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 4), squeeze=False)
    for ax, (dev, set_name, dtype) in zip(axes[0], groups):
        sel = [r for r in rows if (r["device"], r["set"], r["dtype"]) == (dev, set_name, dtype)]
        ax.barh([r["optimizer"] + (f" [{r['isa']}]" if r["isa"] else "") for r in sel],
                [r["ms_per_step"] for r in sel],
                color=["tab:green" if r["optimizer"].startswith("pytrainer") else "tab:gray"
                       for r in sel])
        ax.set_title(f"{dev} {set_name} {dtype}", fontsize=9)
        ax.set_xlabel("ms per step (lower is better)")
        ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"chart: {path}")


def environment(device, isas):
    env = dict(python=platform.python_version(), torch=torch.__version__,
               machine=platform.machine(), cpu_threads=torch.get_num_threads(),
               cpu_isa=ops.cpu_isa() if ops.available() else None, cpu_isas_measured=isas,
               memory_reference=MEMORY_REFERENCE[device],
               date=time.strftime("%Y-%m-%d %H:%M:%S"))
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
    else:
        env["torch_cpu_capability"] = torch_capability().upper()
    return env


#: torch's CPU capability (ATEN_CPU_CAPABILITY) of the same vector width as each of
#: pytrainer's narrower builds; the AVX-512 builds run beside torch's widest kernels
TORCH_CAPABILITY_OF_ISA = {"AVX2": "avx2", "DEFAULT": "default"}


def capability_env(isa: str) -> dict[str, str]:
    """How the process of a build measured apart is started (see the docstring)."""
    return {"ATEN_CPU_CAPABILITY": TORCH_CAPABILITY_OF_ISA[isa], "PYTRAINER_CPU_ISA": isa}


def started_apart() -> bool:
    """Whether run_apart started this process (its settings are in the environment)."""
    forced = os.environ.get("PYTRAINER_CPU_ISA")
    return forced in TORCH_CAPABILITY_OF_ISA and all(
        os.environ.get(k) == v for k, v in capability_env(forced).items())


def torch_capability() -> str:
    """torch's CPU capability in ATEN_CPU_CAPABILITY's terms: torch before 2.9 names
    the default one "NO AVX"."""
    here = torch.backends.cpu.get_cpu_capability().lower()
    return "default" if here == "no avx" else here


def split_isas(isas: list[str] | None) -> tuple[list[str] | None, list[str]]:
    """The instruction sets to measure in this process, and those that go to
    processes of their own: builds narrower than torch's kernels here, whose
    anchors in this process would be torch's wider ones. A process started apart
    measures all of its own, so that none starts another."""
    here = torch_capability()
    apart = [] if started_apart() else [
        isa for isa in isas or ()
        if isa in TORCH_CAPABILITY_OF_ISA and TORCH_CAPABILITY_OF_ISA[isa] != here]
    return (None if isas is None else [isa for isa in isas if isa not in apart]), apart


def run_apart(args, isa: str) -> dict:
    """This script's CPU measurement of one build in a process where torch runs
    its kernels of the same width; returns its JSON (its tables are printed as
    they come)."""
    env = capability_env(isa)
    with tempfile.TemporaryDirectory() as out:
        argv = [sys.executable, str(Path(__file__).resolve()), "--devices", "cpu", "--isa",
                isa, "--dtypes", *args.dtypes, "--rounds", str(args.rounds), "--steps",
                str(args.steps), "--out", out, "--no-plot"]
        argv += ["--sets", *args.sets] if args.sets else []
        argv += ["--quick"] if args.quick else []
        argv += ["--compiled", "--compile-backend", args.compile_backend] if args.compiled else []
        argv += ["--optimizers", *args.optimizers] if args.optimizers else []
        print(f"\n{isa} build against torch's {env['ATEN_CPU_CAPABILITY']} capability, in a "
              f"process of its own ({' '.join(f'{k}={v}' for k, v in env.items())}):",
              flush=True)
        subprocess.run(argv, env={**os.environ, **env}, check=True)
        return json.loads((Path(out) / "bench_optim.json").read_text())


def kernels_of(row: dict) -> str:
    """Which kernels a row ran: pytrainer's ISA, or torch's CPU capability."""
    if row["isa"]:
        return row["isa"]
    return f"(torch {row['torch_cpu_capability']})" if row.get("torch_cpu_capability") else ""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", nargs="+", default=None,
                        help="cpu and/or cuda (default: cpu, plus cuda when available)")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--sets", nargs="+", default=None,
                        help="some of: llama 4000x4096 gpt2 resnet50 (default: all)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=3, help="steps per round and candidate")
    parser.add_argument("--out", default="bench_out")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    parser.add_argument("--isa", nargs="+", default=None,
                        help="CPU instruction sets for pytrainer's kernels, each in the same "
                             "rounds: names from pytrainer.ops.cpu_isas(), or all "
                             "(default: the one the machine picks); DEFAULT is measured in a "
                             "process of its own against torch's default-capability kernels")
    parser.add_argument("--compiled", action="store_true",
                        help=f"add {COMPILED_ANCHOR!r} (torch's foreach AdamW, its step compiled) "
                             f"on sets of at most {COMPILED_MAX_TENSORS} tensors")
    parser.add_argument("--compile-backend", default="inductor",
                        help="torch.compile's backend for --compiled (default: inductor)")
    parser.add_argument("--optimizers", nargs="+", default=None,
                        help="time only these candidates (names as in the tables)")
    parser.add_argument("--no-plot", action="store_true", help="write no chart")
    args = parser.parse_args(argv)
    ops.require()
    if args.optimizers:
        known = {c.name for dtype in (torch.float32, torch.bfloat16) for c in
                 candidates(dtype) + captured_candidates(dtype, "cuda", CAPTURED_SETS[0])
                 + compiled_candidates(dtype, 1, args.compile_backend)}
        unknown = [name for name in args.optimizers if name not in known]
        if unknown:
            parser.error(f"--optimizers {', '.join(map(repr, unknown))}: not a candidate; "
                         f"valid: {', '.join(map(repr, sorted(known)))}")
    isas = None
    if args.isa:
        isas = ops.cpu_isas() if args.isa == ["all"] else args.isa
        unknown = [isa for isa in isas if isa not in ops.cpu_isas()]
        if unknown:
            parser.error(f"--isa {' '.join(unknown)}: not among this CPU's instruction sets "
                         f"({', '.join(ops.cpu_isas())}) or all")
    devices = args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    all_rows, errors, notes = [], [], []
    cpu_isas_here, apart = split_isas(isas)
    # started by run_apart: torch's candidates only as the anchors of the build measured
    anchors_only = started_apart()
    for device in devices:
        if device == "cpu" and apart and not cpu_isas_here:
            continue  # only builds measured apart asked for: all of it in their processes
        timer = Timer(device)
        copy = memory_reference_fn(device, args.quick)
        for set_name, shapes in param_sets(device, args.quick).items():
            if args.sets and set_name not in args.sets:
                continue
            for dtype_name in args.dtypes:
                dtype = getattr(torch, dtype_name)
                cands = for_isas(candidates(dtype), cpu_isas_here if device == "cpu" else None)
                cands += captured_candidates(dtype, device, set_name)
                if args.compiled:
                    cands += compiled_candidates(dtype, len(shapes), args.compile_backend)
                    if len(shapes) > COMPILED_MAX_TENSORS and (
                            not args.optimizers or COMPILED_ANCHOR in args.optimizers):
                        notes.append(f"{device} {set_name} {dtype_name}: no {COMPILED_ANCHOR!r} "
                                     f"({len(shapes)} tensors, more than {COMPILED_MAX_TENSORS})")
                        print(notes[-1])
                if args.optimizers:
                    cands = [c for c in cands if c.name in args.optimizers]
                if set_name in MODEL_SETS:
                    cands = [c for c in cands if not is_slow(c)]
                if device == "cpu" and anchors_only:
                    cands = [c for c in cands if c.isa or c.name in {x.anchor for x in cands}]
                if not cands:
                    continue
                # the many-tensor set: pytrainer and torch fused also on one tensor, same rounds
                many = len(shapes) > 1000 or args.quick and set_name not in ("llama", *MODEL_SETS)
                twins = [c for c in cands if c.name in ("pytrainer FusedAdamW", "torch AdamW fused")
                         and c.isa != "DEFAULT"] if many else ()
                times, copy_times, copy_bytes = bench_set(
                    device, dtype, shapes, cands, args.rounds, args.steps, timer, copy, twins,
                    errors)
                rows = summarize(set_name, dtype, shapes, times, copy_times, copy_bytes, cands)
                for r in rows:
                    r["device"] = device
                    if device == "cpu":
                        r["torch_cpu_capability"] = torch_capability().upper()
                torch_kernels = (f"; torch's CPU capability {rows[0]['torch_cpu_capability']}"
                                 if device == "cpu" else "")
                print_table(rows, f"{device}: optimizer step, {set_name} "
                                  f"({len(shapes)} tensors, {rows[0]['params'] / 1e6:.1f} M params), "
                                  f"{dtype_name}; memory reference {rows[0]['copy_gb_s']:.1f} GB/s"
                                  f"{torch_kernels}")
                all_rows += rows
                write_json(out, devices, isas, all_rows, errors, notes, partial=True)
    for isa in apart if "cpu" in devices else ():
        all_rows += run_apart(args, isa)["rows"]  # its summary lines come from its rows below
    result = write_json(out, devices, isas, all_rows, errors, notes)
    for line in result["summary"]:
        print(line)
    print(f"json: {out / 'bench_optim.json'}")
    if not args.no_plot:
        plot(all_rows, out / "bench_optim.png")
    if errors:
        sys.exit(f"{len(errors)} captured candidate(s) failed: see above and 'errors' in the JSON")
    return result


def write_json(out: Path, devices, isas, rows, errors, notes, partial=False) -> dict:
    """bench_optim.json of the rows so far (``partial``: more sets were to come)."""
    summary = [" ".join(filter(None, (r["device"], r["dtype"], r["optimizer"], kernels_of(r))))
               + ": "
               f"{r['tensors']} tensors take "
               f"{r['time_over_one_tensor']:.2f}x the time of one tensor of the same size "
               f"(median of per-round ratios)"
               for r in rows if r.get("time_over_one_tensor")]
    summary += [f"{r['device']} {r['dtype']} {r['set']}: {r['optimizer']} "
                f"{r['speedup_vs_compiled']:.2f}x {COMPILED_ANCHOR} (median of per-round ratios)"
                for r in rows if r.get("speedup_vs_compiled")]
    result = dict(environment=environment(devices[-1], isas), rows=rows, summary=summary,
                  errors=errors, notes=notes, partial=partial)
    (out / "bench_optim.json").write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
