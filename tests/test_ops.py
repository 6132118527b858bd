"""The compiled module: what it reports, and a clear error when it is missing."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from pytrainer import ops


def test_device_types_reports_the_cpu_and_cuda_when_built():
    if not ops.available():
        assert ops.device_types() == ()
        return
    kinds = ops.device_types()
    assert kinds[0] == "cpu"
    assert ("cuda" in kinds) == ops.kernels.cuda_built()
    assert ops.has_kernels("cpu")
    every = ["AVX512_BF16", "AVX512", "AVX2", "DEFAULT"]
    isas = ops.cpu_isas()
    assert isas == [name for name in every if name in isas] and isas[-1] == "DEFAULT"
    assert ops.cpu_isa() in isas


def test_unknown_cpu_isa_is_a_clear_error():
    if not ops.available():
        pytest.skip("compiled kernels not built")
    with pytest.raises(RuntimeError, match="valid here: " + ", ".join(ops.cpu_isas())):
        ops.kernels.set_cpu_isa("SSE9")
    assert ops.cpu_isa() in ops.cpu_isas()


def kernel_error(prelude: str) -> str:
    """In a fresh interpreter, after ``prelude``: imports pytrainer, checks that the
    kernels are unavailable (and the module not loaded), and returns the error that
    building an optimizer then raises."""
    code = prelude + textwrap.dedent("""
        import sys, torch, pytrainer
        from pytrainer import ops
        assert not ops.available() and ops.device_types() == ()
        assert sys.modules.get("pytrainer._C") is None, "the compiled module was loaded"
        from pytrainer.optim import FusedAdamW
        try:
            FusedAdamW([torch.nn.Parameter(torch.randn(3))])
        except ops.KernelsUnavailableError as error:
            print(error)
        else:
            raise SystemExit("no error")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_import_works_without_the_compiled_module_and_says_how_to_build():
    # Hide pytrainer._C from the import system in a fresh interpreter.
    message = kernel_error('import sys\nsys.modules["pytrainer._C"] = None\n')
    assert "pip install --no-build-isolation" in message
    assert "pytrainer._C" in message


def test_a_module_built_for_another_torch_is_not_loaded_and_the_error_names_both():
    # The module's build record claims another torch: loading it would fail with an
    # undefined symbol (or crash later), so ops must not, and must say what to do.
    message = kernel_error(textwrap.dedent("""
        import sys
        from pytrainer import _build_info
        record = {"torch": "2.0.1+cu117", "cuda": "11.7", "devices": ["cpu", "cuda"],
                  "cuda_arch_list": "8.0+PTX"}
        _build_info.read = lambda path=None: record
    """))
    assert "built against torch 2.0.1+cu117" in message
    assert f"torch {torch.__version__} is installed" in message
    assert "pip install --no-build-isolation" in message
    assert "pip install 'torch==2.0.*'" in message


def test_cuda_params_without_cuda_kernels_get_a_clear_error(monkeypatch):
    if not ops.available():
        pytest.skip("compiled kernels not built")
    monkeypatch.setattr(ops, "has_kernels", lambda device, op="adamw_": torch.device(device).type == "cpu")
    with pytest.raises(ops.KernelsUnavailableError, match="no adamw_ kernel for cuda"):
        ops.check_device(torch.device("cuda"), "adamw_")
