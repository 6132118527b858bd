"""Shared fixtures: the devices with kernels, and each CPU instruction set."""
from __future__ import annotations

import pytest
import torch

from pytrainer import ops


def kernel_devices() -> list[str]:
    devices = ["cpu"]
    if torch.cuda.is_available() and ops.has_kernels("cuda"):
        devices.append("cuda")
    return devices


def _cuda_marked(devices):
    return [pytest.param(d, marks=pytest.mark.cuda) if d == "cuda" else d for d in devices]


@pytest.fixture(params=_cuda_marked(["cpu", "cuda"]))
def device(request) -> torch.device:
    """Every device kind; CUDA is skipped without a GPU and the CUDA kernels."""
    if request.param == "cuda" and request.param not in kernel_devices():
        pytest.skip("needs an NVIDIA GPU and pytrainer's CUDA kernels")
    return torch.device(request.param)


def _available_isas() -> list[str]:
    return ops.cpu_isas() if ops.available() else []


CPU_ISAS = _available_isas()


@pytest.fixture(params=CPU_ISAS or ["none"])
def cpu_isa(request):
    """Runs the test once per CPU instruction set this CPU supports; a test on CUDA
    (its ``device`` parameter), whose results do not depend on it, under the first
    one only."""
    if request.param == "none":
        pytest.skip("compiled kernels not available")
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("device") == "cuda" and request.param != CPU_ISAS[0]:
        pytest.skip(f"the CPU instruction set does not matter on CUDA (run under {CPU_ISAS[0]})")
    ops.require().set_cpu_isa(request.param)
    yield request.param
    ops.require().set_cpu_isa("")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)
