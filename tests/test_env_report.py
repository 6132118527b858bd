"""``python -m pytrainer env``: the bug-report fields, with the kernels loaded, missing,
and built for another torch."""
from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import pytrainer
from pytrainer import _build_info, cli, env_report, ops
from tests.helpers import editable_build

ROOT = Path(__file__).resolve().parents[1]
FIELDS = ("pytrainer", "Python", "platform", "CPU", "torch", "torch CUDA", "torch GPU archs",
          "kernels", "CPU instruction set", "GPUs", "transformers", "accelerate")


def report(prelude: str = "") -> dict[str, str]:
    """Runs `python -m pytrainer env` in a fresh interpreter after `prelude`."""
    code = prelude + textwrap.dedent("""
        import runpy, sys
        sys.argv = ["pytrainer", "env"]
        runpy.run_module("pytrainer", run_name="__main__")
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    rows = [re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in run.stdout.splitlines()]
    fields = {row[0]: row[1] for row in rows if len(row) == 2}
    for name in FIELDS:
        assert name in fields, (name, run.stdout)
    return fields


def _installed(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def test_report_with_the_kernels():
    if not ops.available():
        pytest.skip("compiled kernels not built")
    fields = report()
    assert fields["pytrainer"].startswith(pytrainer.__version__)
    assert fields["Python"].startswith(".".join(map(str, sys.version_info[:3])))
    assert fields["torch"].startswith(str(torch.__version__))
    assert fields["torch CUDA"] == (torch.version.cuda or "none (CPU-only build)")
    assert fields["kernels"] == "loaded"
    assert fields["kernel devices"] == ", ".join(ops.device_types())
    assert fields["CPU instruction set"] == ops.cpu_isa()
    assert fields["CPU sets available"] == ", ".join(ops.cpu_isas())
    record = _build_info.read()
    if record:
        assert fields["built against torch"] == record["torch"]
        assert fields["built for GPU archs"] == (record["cuda_arch_list"] or "none")
        if _build_info.built_from(record, ROOT):
            assert fields["built from"] == f"the sources beside it ({ROOT}: setup.py, csrc/)"
    if not torch.cuda.is_available():
        assert fields["GPUs"] == "none visible"
    else:
        assert fields["GPUs"] == str(torch.cuda.device_count())
        assert "compute capability" in fields["GPU 0"]
    for package in ("transformers", "accelerate"):
        assert fields[package] == _installed(package)


def test_report_without_the_compiled_module():
    fields = report('import sys\nsys.modules["pytrainer._C"] = None\n')
    assert "not available" in fields["kernels"]
    assert "pip install --no-build-isolation" in fields["kernels"]
    assert fields["kernels file"] == "none"
    assert fields["CPU instruction set"].startswith("unknown")
    assert fields["torch"].startswith(str(torch.__version__))


def test_report_of_a_module_built_for_another_torch():
    prelude = textwrap.dedent("""
        from pytrainer import _build_info
        record = {"torch": "2.0.1+cu117", "cuda": "11.7", "devices": ["cpu", "cuda"],
                  "cuda_arch_list": "8.0;9.0+PTX", "sources": "0123456789abcdef"}
        _build_info.read = lambda path=None: record
    """)
    if _build_info.kernels_path() is None:
        pytest.skip("compiled kernels not built")
    fields = report(prelude)
    assert "built against torch 2.0.1+cu117" in fields["kernels"]
    assert fields["built against torch"] == "2.0.1+cu117"
    assert fields["built for GPU archs"] == "8.0;9.0+PTX"
    assert fields["built for devices"] == "cpu, cuda"
    if editable_build():
        assert fields["built from"].startswith(f"older sources: setup.py or csrc/ in {ROOT} "
                                               "changed since the build; rebuild")
    else:
        assert fields["built from"] == "sources 0123456789abcdef"


def test_env_is_a_command_of_the_cli(capsys):
    assert cli.main(["env"]) == 0
    assert "CPU instruction set" in capsys.readouterr().out
    assert cli.main(["--help"]) == 0
    assert "env " in capsys.readouterr().out
    assert cli.main(["env", "--verbose"]) == 2
    assert "takes no arguments" in capsys.readouterr().err


def test_gpus_are_listed_with_name_capability_and_memory():
    # No GPU here: the listing runs on a stand-in for torch.cuda.
    gpus = [SimpleNamespace(name="NVIDIA H200", major=9, minor=0, total_memory=141 * 2**30),
            SimpleNamespace(name="NVIDIA A100", major=8, minor=0, total_memory=40 * 2**30)]
    cuda = SimpleNamespace(is_available=lambda: True, device_count=lambda: len(gpus),
                           get_device_properties=lambda index: gpus[index])
    assert env_report._gpus(SimpleNamespace(cuda=cuda)) == [
        ("GPUs", "2"),
        ("  GPU 0", "NVIDIA H200, compute capability 9.0, 141.0 GiB"),
        ("  GPU 1", "NVIDIA A100, compute capability 8.0, 40.0 GiB")]
