"""benchmarks/gpu_check.sh, the one prepared run on a rarely lent GPU machine, runs
here in its self-test mode (DEVICE=cpu QUICK=1): every stage it can run on a CPU
runs through the same stage runner, time caps and summary, so a broken stage is
found here and not in the GPU's 15 minutes. bench_optim.py and
bench_accumulation.py themselves are run by tests/test_benchmarks.py."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pytrainer import _build_info, ops
from tests.helpers import load_module

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not ops.available(), reason="compiled kernels not built")
def test_gpu_check_self_test(tmp_path):
    env = dict(os.environ, DEVICE="cpu", QUICK="1", PYTHON=sys.executable,
               STAGES="env build smoke tests sanitizer compiled summary")
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(tmp_path)],
                            capture_output=True, text=True, timeout=400, env=env)
    report = result.stdout[-3000:] + result.stderr[-2000:]
    stages = [line.split("\t") for line in (tmp_path / "stages.tsv").read_text().splitlines()]
    assert [s[0] for s in stages] == ["env", "build", "smoke", "tests", "sanitizer",
                                      "compiled"], report
    assert all(s[1] == "ok" for s in stages), report
    assert result.returncode == 0, report
    # each stage left its log, and the logs hold what the stage is for
    assert "CPU instruction set" in (tmp_path / "env.log").read_text()
    assert "kernels for" in (tmp_path / "build.log").read_text()
    assert "agree with the CPU reference" in (tmp_path / "smoke.log").read_text()
    assert "skipped" in (tmp_path / "tests.log").read_text()
    summary = (tmp_path / "summary.txt").read_text()
    assert "targets (issue 11)" in summary and "smoke:" in summary
    # FusedAdamW against torch's AdamW with a compiled step, on llama and GPT-2
    assert "pytrainer FusedAdamW" in summary and "x torch AdamW compiled" in summary, summary


def _carried_build():
    return load_module("carried_build", ROOT / "benchmarks" / "carried_build.py")


BUILT = {"torch": "2.11.0+cu130", "cuda": "13.0", "cuda_arch_list": "9.0",
         "devices": ["cpu", "cuda"], "sources": "0123456789abcdef"}


@pytest.mark.parametrize("info, torch_version, arch, built_from, fragment", [
    (BUILT, "2.11.0+cu130", "9.0", True, None),
    (dict(BUILT, cuda_arch_list="8.0;9.0+PTX"), "2.11.0+cu130", "9.0", True, None),
    (None, "2.11.0+cu130", "9.0", True, "no build record"),
    (BUILT, "2.11.1+cu130", "9.0", True, "this machine has 2.11.1+cu130"),
    (dict(BUILT, cuda="12.8"), "2.11.0+cu130", "9.0", True, "CUDA 12.8, this torch uses CUDA 13.0"),
    (dict(BUILT, cuda=None, cuda_arch_list=None, devices=["cpu"]), "2.11.0+cu130", "9.0", True,
     "no CUDA kernels"),
    (dict(BUILT, cuda_arch_list="8.0+PTX"), "2.11.0+cu130", "9.0", True, "not 9.0"),
    (dict(BUILT, cuda_arch_list="9.0"), "2.11.0+cu130", "10.0", True, "not 10.0"),
    (BUILT, "2.11.0+cu130", "9.0", False, "other sources"),
    (BUILT, "2.11.0+cu130", "9.0", None, "does not record the sources"),
])
def test_a_carried_build_stands_in_only_for_the_same_torch_gpu_and_sources(
        info, torch_version, arch, built_from, fragment):
    reason = _carried_build().misfit(info, torch_version, "13.0", arch, built_from)
    if fragment is None:
        assert reason is None
    else:
        assert reason is not None and fragment in reason, reason


def test_the_carried_build_check_names_each_candidate_and_why(tmp_path, capsys):
    module = _build_info.kernels_path()
    if module is None:
        pytest.skip("compiled kernels not built")
    record = _build_info.read(module)
    carried = _carried_build()
    code = carried.main(["0.1", str(tmp_path / "missing.so"), module])
    out = capsys.readouterr().out.splitlines()
    assert code == 1
    assert out[0] == f"{tmp_path / 'missing.so'}: not there"
    expected = "no CUDA kernels" if "cuda" not in record["devices"] else "not 0.1"
    assert out[1].startswith(f"{module}: does not fit: ") and expected in out[1], out
    if "cuda" in record["devices"] and _build_info.built_from(record, ROOT):
        # the build here, for an architecture it has, fits
        arch = sorted(carried.compiled_arches(record["cuda_arch_list"]))[0]
        assert carried.main([arch, module]) == 0
        assert capsys.readouterr().out.startswith(f"{module}: fits")
