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

from pytrainer import ops

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
