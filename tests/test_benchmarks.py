"""The benchmarks run end to end at tiny sizes and write what they promise:
a JSON of figures (and a chart when matplotlib is installed)."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pytrainer import ops
from tests.helpers import load_module

ROOT = Path(__file__).resolve().parents[1]


def run_benchmark(script: str, *args: str) -> str:
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout


def test_bench_optim_quick(tmp_path):
    if not ops.available():
        pytest.skip("compiled kernels not built")
    out = run_benchmark("bench_optim.py", "--quick", "--devices", "cpu", "--out", str(tmp_path))
    data = json.loads((tmp_path / "bench_optim.json").read_text())
    assert data["environment"]["cpu_isa"] == ops.cpu_isa()
    assert data["partial"] is False and data["notes"] == []
    candidates = {r["optimizer"] for r in data["rows"]}
    assert {"pytrainer FusedAdamW", "torch AdamW fused", "pytrainer AnyPrecision+Kahan",
            "pytrainer Adafactor", "torch Adafactor foreach"} <= candidates
    for row in data["rows"]:
        assert row["ms_per_step"] > 0 and row["effective_gb_s"] > 0, row
        if row["anchor"]:
            assert math.isfinite(row["speedup_vs_anchor"]) and row["speedup_vs_anchor"] > 0, row
    assert any("tensors take" in line for line in data["summary"])
    # the model-shaped sets, for every optimizer, without the per-tensor anchors
    for model in ("gpt2", "resnet50"):
        ran = {r["optimizer"] for r in data["rows"] if r["set"] == model}
        assert {"pytrainer FusedAdamW", "pytrainer AnyPrecision+Kahan",
                "pytrainer Adafactor"} <= ran, (model, ran)
        assert not any("for-loop" in name or "torchdistx" in name for name in ran), ran
    assert "pytrainer FusedAdamW" in out
    pytest.importorskip("matplotlib")
    assert (tmp_path / "bench_optim.png").stat().st_size > 0


def test_bench_optim_measures_every_isa_against_torch_kernels_of_its_width(tmp_path):
    if not ops.available():
        pytest.skip("compiled kernels not built")
    run_benchmark("bench_optim.py", "--quick", "--devices", "cpu", "--isa", "all", "--rounds",
                  "1", "--steps", "1", "--sets", "llama", "--dtypes", "bfloat16",
                  "--out", str(tmp_path))
    data = json.loads((tmp_path / "bench_optim.json").read_text())
    assert data["environment"]["cpu_isas_measured"] == ops.cpu_isas()
    rows = data["rows"]
    for name in ("pytrainer FusedAdamW", "pytrainer AnyPrecision+Kahan"):
        assert sorted(r["isa"] for r in rows if r["optimizer"] == name) == sorted(ops.cpu_isas())
    for row in rows:
        assert row["ms_per_step"] > 0 and 0 < row["fraction_of_copy_bw"], row
    # one process per torch capability, each build against torch's kernels of its
    # width (DEFAULT against torch's portable ones, AVX2 against its AVX2 ones where
    # torch runs AVX-512 here), each process with torch's anchor and memory reference once
    by_capability = {}
    for row in rows:
        by_capability.setdefault(row["torch_cpu_capability"], []).append(row)
    native = torch.backends.cpu.get_cpu_capability()
    apart = {isa for isa in ("AVX2", "DEFAULT") if isa in ops.cpu_isas() and isa != native}
    assert set(by_capability) == {native} | apart
    for capability, group in by_capability.items():
        assert [r["isa"] for r in group if r["optimizer"] == "torch AdamW fused"] == [None]
        assert all(r["copy_gb_s"] == group[0]["copy_gb_s"] > 0 for r in group)
        isas = {r["isa"] for r in group if r["isa"]}
        assert isas == ({capability} if capability in apart else set(ops.cpu_isas()) - apart), (
            capability, isas)


def test_bench_optim_measures_the_default_build_against_torchs_default_capability(tmp_path,
                                                                                   bench_optim):
    """The portable build is the fallback for CPUs without AVX2, so its anchor is
    torch's own portable kernels (ATEN_CPU_CAPABILITY=default, read by torch at
    start): a process of its own, with pytrainer forced to DEFAULT there too."""
    if not ops.available():
        pytest.skip("compiled kernels not built")
    out = run_benchmark("bench_optim.py", "--quick", "--devices", "cpu", "--isa", "DEFAULT",
                        "--rounds", "1", "--steps", "1", "--sets", "llama", "--dtypes",
                        "float16", "float32", "--out", str(tmp_path))
    rows = json.loads((tmp_path / "bench_optim.json").read_text())["rows"]
    assert {r["torch_cpu_capability"] for r in rows} == {"DEFAULT"}
    ours = [r for r in rows if r["optimizer"].startswith("pytrainer")]
    assert {(r["optimizer"], r["dtype"]) for r in ours} == {
        ("pytrainer FusedAdamW", "float16"), ("pytrainer FusedAdamW", "float32"),
        ("pytrainer AnyPrecision+Kahan", "float16"), ("pytrainer Adafactor", "float16"),
        ("pytrainer Adafactor", "float32")}
    assert {r["isa"] for r in ours} == {"DEFAULT"}
    for row in ours:
        if row["anchor"]:
            assert row["anchor"] in {"torch AdamW fused", "torch Adafactor foreach"}, row
            assert math.isfinite(row["speedup_vs_anchor"]) and row["speedup_vs_anchor"] > 0, row
    if bench_optim.torch_capability() != "default":
        assert "ATEN_CPU_CAPABILITY=default PYTRAINER_CPU_ISA=DEFAULT" in out
        # in that process torch runs only as the anchors
        assert {r["optimizer"] for r in rows if not r["isa"]} == {"torch AdamW fused",
                                                                 "torch Adafactor foreach"}
    assert "torch's CPU capability DEFAULT" in out


def test_bench_optim_refuses_an_isa_this_cpu_lacks(tmp_path):
    if not ops.available():
        pytest.skip("compiled kernels not built")
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_optim.py"), "--quick",
                             "--devices", "cpu", "--isa", "SSE9", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode != 0
    assert f"--isa SSE9: not among this CPU's instruction sets ({', '.join(ops.cpu_isas())})" \
        in result.stderr


def test_memory_reference_reads_and_writes_every_buffer():
    """The benchmarks' memory reference does the pass it is counted as: every output
    gets the input added, in one call over the kernels' threads, with the vectors
    of every instruction set."""
    if not ops.available():
        pytest.skip("compiled kernels not built")
    n = 3 * 16384 + 5  # several chunks of the kernels' threads, and a rest
    for isa in ops.cpu_isas():
        ops.set_cpu_isa(isa)
        try:
            for count in (1, 2, 3, 4):
                outputs = [torch.randn(n) for _ in range(count)]
                before = [o.clone() for o in outputs]
                source = torch.randn(n)
                torch.ops.pytrainer.memory_pass_(outputs, source)
                for out, old in zip(outputs, before):
                    assert torch.equal(out, old + source), (isa, count)
        finally:
            ops.set_cpu_isa("")


@pytest.mark.parametrize("bad, message", [
    (lambda: torch.randn(10, dtype=torch.float64), "Double"),
    (lambda: torch.randn(11), "of 11"),
    (lambda: torch.randn(20)[::2], "non-contiguous"),
])
def test_memory_reference_names_what_is_wrong(bad, message):
    if not ops.available():
        pytest.skip("compiled kernels not built")
    with pytest.raises(RuntimeError, match=f"contiguous float32 CPU tensors of 10 elements.*{message}"):
        torch.ops.pytrainer.memory_pass_([torch.randn(10), bad()], torch.randn(10))
    with pytest.raises(RuntimeError, match="takes 1 to 4 outputs, got 5"):
        torch.ops.pytrainer.memory_pass_([torch.randn(10) for _ in range(5)], torch.randn(10))


def test_bench_accumulation_tiny(tmp_path):
    if not ops.available():
        pytest.skip("compiled kernels not built")
    pytest.importorskip("transformers")
    run_benchmark("bench_accumulation.py", "--device", "cpu", "--rounds", "1", "--steps", "2",
                  "--cpu-width", "32", "--cpu-layers", "1", "--cpu-seq", "16",
                  "--effective-batch", "4", "--accumulation", "1", "2", "--out", str(tmp_path))
    data = json.loads((tmp_path / "bench_accumulation.json").read_text())
    rows = data["rows"]
    assert [(r["micro_batch"], r["accumulation"]) for r in rows] == [(4, 1), (4, 1), (2, 2),
                                                                     (2, 2)]
    for row in rows:
        assert row["samples_per_second"] > 0 and row["steady_samples_per_second"] > 0, row
    assert all(r["pytrainer_over_hf"] > 0 for r in rows[1::2])


def test_model_shaped_sets_are_the_real_models():
    """bench_optim's GPT-2 small is transformers' GPT2LMHeadModel, parameter by
    parameter (built on the meta device: no memory); its ResNet-50 has
    torchvision's parameter count and conv shapes."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_optim
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    transformers = pytest.importorskip("transformers")
    import torch
    with torch.device("meta"):
        gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config())
    assert [tuple(p.shape) for p in gpt2.parameters()] == bench_optim.gpt2_shapes()
    resnet = bench_optim.resnet50_shapes()
    assert len(resnet) == 161 and sum(math.prod(s) for s in resnet) == 25_557_032
    convs = [s for s in resnet if len(s) == 4]
    assert len(convs) == 53 and convs[0] == (64, 3, 7, 7) and (512, 512, 3, 3) in convs


@pytest.fixture
def bench_optim():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_optim
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return bench_optim


def test_captured_steps_are_timed_on_cuda_where_launches_matter(bench_optim):
    """FusedAdamW captured in a CUDA graph against torch's fused AdamW captured
    the same way, for the sets of many small tensors and GPT-2 small; nowhere
    on the CPU."""
    pair = [("pytrainer FusedAdamW captured", "torch AdamW fused captured"),
            ("torch AdamW fused captured", "torch AdamW fused captured")]
    for set_name in ("4000x4096", "400x256", "gpt2"):
        for dtype in (torch.float32, torch.bfloat16):
            found = bench_optim.captured_candidates(dtype, "cuda", set_name)
            assert [(c.name, c.anchor) for c in found] == pair
            assert {c.bytes_per_param for c in found} == {28 if dtype == torch.float32 else 14}
    assert bench_optim.captured_candidates(torch.float32, "cuda", "llama") == []
    assert bench_optim.captured_candidates(torch.float32, "cpu", "gpt2") == []


def test_the_compiled_anchor_is_left_out_of_sets_too_long_to_compile(bench_optim):
    """torch's foreach AdamW with a compiled step, moving AdamW's bytes, up to
    COMPILED_MAX_TENSORS tensors; none for the 4000-tensor set."""
    limit = bench_optim.COMPILED_MAX_TENSORS
    for dtype, bytes_per_param in ((torch.float32, 28), (torch.bfloat16, 14)):
        (found,) = bench_optim.compiled_candidates(dtype, limit, "eager")
        assert (found.name, found.anchor, found.bytes_per_param) == (
            "torch AdamW compiled", "torch AdamW fused", bytes_per_param)
    assert bench_optim.compiled_candidates(torch.float32, limit + 1, "eager") == []
    assert limit < 4000


def test_bench_optim_names_an_unknown_optimizer_and_the_valid_ones(tmp_path):
    if not ops.available():
        pytest.skip("compiled kernels not built")
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_optim.py"), "--quick",
                             "--devices", "cpu", "--optimizers", "pytrainer FusedAdamW", "SGD",
                             "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode != 0
    assert "--optimizers 'SGD': not a candidate; valid: " in result.stderr, result.stderr
    assert "'torch AdamW compiled'" in result.stderr and "'pytrainer Adafactor'" in result.stderr


def test_a_failed_capture_is_reported_beside_the_other_figures(bench_optim):
    """A captured candidate whose capture raises is left out and named in the
    errors; any other candidate's error still stops the run."""
    if not ops.available():
        pytest.skip("compiled kernels not built")

    def fails(_):
        raise RuntimeError("capture refused")

    cands = [bench_optim.Candidate("pytrainer FusedAdamW", lambda ps: torch.optim.SGD(ps, lr=0.1),
                                   28, "pytrainer FusedAdamW"),
             bench_optim.Candidate("pytrainer FusedAdamW captured", fails, 28,
                                   bench_optim.CAPTURED_ANCHOR)]
    copy = (lambda: None, 1)
    errors = []
    times, _, _ = bench_optim.bench_set("cpu", torch.float32, [(8,)], cands, 1, 1,
                                        bench_optim.Timer("cpu"), copy, errors=errors)
    assert list(times) == ["pytrainer FusedAdamW"]
    assert errors == ["pytrainer FusedAdamW captured, 1 tensors, torch.float32: capture refused"]
    cands[1].anchor = "torch AdamW fused"
    with pytest.raises(RuntimeError, match="capture refused"):
        bench_optim.bench_set("cpu", torch.float32, [(8,)], cands, 1, 1,
                              bench_optim.Timer("cpu"), copy, errors=[])


@pytest.mark.cuda
def test_bench_optim_times_captured_steps_on_cuda(tmp_path):
    if not (torch.cuda.is_available() and ops.has_kernels("cuda")):
        pytest.skip("needs an NVIDIA GPU and pytrainer's CUDA kernels")
    run_benchmark("bench_optim.py", "--quick", "--devices", "cuda", "--sets", "400x256", "gpt2",
                  "--dtypes", "float32", "--rounds", "1", "--steps", "2", "--out", str(tmp_path))
    data = json.loads((tmp_path / "bench_optim.json").read_text())
    assert data["errors"] == []
    for set_name in ("400x256", "gpt2"):
        rows = {r["optimizer"]: r for r in data["rows"] if r["set"] == set_name}
        mine = rows["pytrainer FusedAdamW captured"]
        assert mine["anchor"] == "torch AdamW fused captured"
        assert mine["ms_per_step"] > 0 and mine["speedup_vs_anchor"] > 0
        assert rows["torch AdamW fused captured"]["ms_per_step"] > 0


@pytest.mark.parametrize("capability", ["DEFAULT", "NO AVX", "AVX2", "AVX512"])
def test_a_build_measured_apart_starts_no_process_of_its_own(monkeypatch, capability):
    """torch before 2.9 names its default capability "NO AVX": a process started for
    the DEFAULT build took it for another capability and started another, without
    end, until the machine ran out of memory."""
    bench = load_module("bench_optim", ROOT / "benchmarks" / "bench_optim.py")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    for isa, env in (("DEFAULT", bench.capability_env("DEFAULT")),
                     ("AVX2", bench.capability_env("AVX2"))):
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        assert bench.split_isas([isa]) == ([isa], [])
    monkeypatch.delenv("PYTRAINER_CPU_ISA")
    here = "DEFAULT" if capability in ("DEFAULT", "NO AVX") else capability
    expected_apart = [isa for isa in ("AVX2", "DEFAULT") if isa.lower() != here.lower()]
    assert bench.split_isas(["AVX2", "DEFAULT"]) == (
        [isa for isa in ("AVX2", "DEFAULT") if isa not in expected_apart], expected_apart)
