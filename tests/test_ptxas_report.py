"""benchmarks/ptxas_report.py reads nvcc's -Xptxas -v report of a build: one row
per kernel, and a failing exit on a spill, an unexpected stack frame or a log
without kernels (the CI build and the GPU check rely on both)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers import load_module

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "ptxas_report.py"

report = load_module("ptxas_report", SCRIPT)

ADAMW = "_ZN9pytrainer4cuda19multi_tensor_kernelINS0_12AdamWFunctorIfLb0EEEEEvNS0_11DeviceTableET_"
SUMS = "_ZN9pytrainer4cuda12_GLOBAL__N_111sums_kernelIN3c108BFloat16EEEvNS0_15AdafactorLaunchE"
HELPER = "_ZN9pytrainer4cuda6helperEf"

# Two files' reports (ninja prints each command's output whole), a non-inlined
# device function with properties of its own, a kernel compiled for two
# architectures, and the build's other lines.
LOG = f"""[1/4] /usr/local/cuda/bin/nvcc -c adamw.cu -Xptxas=-v
ptxas info    : 0 bytes gmem
ptxas info    : Function properties for {HELPER}
    24 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Compiling entry function '{ADAMW}' for 'sm_90'
ptxas info    : Function properties for {ADAMW}
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 40 registers, used 0 barriers, 384 bytes cmem[0]
ptxas info    : Compile time = 3.1 ms
ptxas info    : Compiling entry function '{ADAMW}' for 'sm_80'
ptxas info    : Function properties for {ADAMW}
    16 bytes stack frame, 8 bytes spill stores, 8 bytes spill loads
ptxas info    : Used 255 registers, used 0 barriers
ptxas info    : Compile time = 12.5 ms
[2/4] /usr/local/cuda/bin/nvcc -c adafactor.cu -Xptxas=-v
ptxas info    : Compiling entry function '{SUMS}' for 'sm_90'
ptxas info    : Function properties for {SUMS}
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 56 registers, used 1 barriers, 1152 bytes smem
"""


def test_each_kernel_gets_its_own_figures_whatever_the_interleaving():
    kernels = {(k.mangled, k.arch): k for k in report.parse(LOG)}
    assert set(kernels) == {(ADAMW, "sm_90"), (SUMS, "sm_90"), (ADAMW, "sm_80")}
    a90, sums, a80 = kernels[ADAMW, "sm_90"], kernels[SUMS, "sm_90"], kernels[ADAMW, "sm_80"]
    assert (a90.registers, a90.barriers, a90.smem, a90.stack, a90.spill_stores) == (40, 0, 0, 0, 0)
    assert (sums.registers, sums.barriers, sums.smem, sums.stack) == (56, 1, 1152, 0)
    assert (a80.registers, a80.stack, a80.spill_stores, a80.spill_loads) == (255, 16, 8, 8)
    assert "sums_kernel<c10::BFloat16>" in sums.name  # demangled


def run(tmp_path, text: str) -> subprocess.CompletedProcess:
    log = tmp_path / "build.log"
    log.write_text(text)
    return subprocess.run([sys.executable, str(SCRIPT), str(log)], capture_output=True,
                          text=True, timeout=60)


def test_a_spill_fails_and_is_named(tmp_path):
    result = run(tmp_path, LOG)
    assert result.returncode == 1
    assert "PROBLEM: multi_tensor_kernel<AdamWFunctor<float, false> >(DeviceTable, " \
           "AdamWFunctor<float, false>) (sm_80) spills: 8 bytes stored, 8 bytes loaded" \
           in result.stdout
    assert result.stdout.count("PROBLEM") == 1
    assert "sums_kernel<c10::BFloat16>(AdafactorLaunch)" in result.stdout  # the table


def test_a_clean_log_passes_and_a_stack_frame_needs_an_allowance(tmp_path):
    clean = "\n".join(line for line in LOG.splitlines() if "'sm_80'" not in line)
    clean = clean.replace("16 bytes stack frame, 8 bytes spill stores, 8 bytes spill loads",
                          "0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads")
    assert run(tmp_path, clean).returncode == 0
    framed = clean.replace(
        f"Function properties for {SUMS}\n    0 bytes stack frame",
        f"Function properties for {SUMS}\n    32 bytes stack frame")
    result = run(tmp_path, framed)
    assert result.returncode == 1 and "has a 32-byte stack frame" in result.stdout
    kernels = report.parse(framed)
    assert report.problems(kernels, {r"sums_kernel<c10::BFloat16>": "a reason"}) == []


def test_a_log_without_kernels_fails(tmp_path):
    result = run(tmp_path, "[1/1] c++ -c ops.cpp\n")
    assert result.returncode == 1 and "no kernel in the log" in result.stdout
    assert subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "missing.log")],
                          capture_output=True, timeout=60).returncode == 2


def test_a_known_spill_passes_only_within_its_bound():
    spilling = LOG.replace(f"Function properties for {SUMS}\n    0 bytes stack frame, 0 bytes "
                           "spill stores, 0 bytes spill loads",
                           f"Function properties for {SUMS}\n    16 bytes stack frame, 12 bytes "
                           "spill stores, 12 bytes spill loads")
    kernels = [k for k in report.parse(spilling) if k.arch == "sm_90"]
    assert max(k.spill_stores for k in kernels) == 12
    assert report.problems(kernels, spills={r"sums_kernel<c10::BFloat16>": (12, "why")}) == []
    assert report.problems(kernels, spills={r"sums_kernel<c10::BFloat16>": (8, "why")})
    assert report.problems(kernels, spills={})
