"""The compiled kernels (``pytrainer._C``): loading them and saying where they run.

``import pytrainer`` works without the compiled module; calling a kernel then
raises :class:`KernelsUnavailableError`, which says how to build it.
"""
from __future__ import annotations

import torch

from pytrainer import _build_info

__all__ = ["KernelsUnavailableError", "available", "device_types", "has_kernels", "cpu_isa",
           "cpu_isas", "set_cpu_isa", "require", "BUILD_HINT"]

BUILD_HINT = (
    "build it from the pytrainer source folder, after installing torch, with "
    "`pip install --no-build-isolation -e .` (see the README)"
)

try:
    # A module built against another torch fails to load with an undefined symbol (or
    # loads and crashes later): compare the torch it records before loading it.
    _build_info.check_torch(str(torch.__version__), torch.version.cuda)
    from pytrainer import _C  # noqa: F401  (importing it registers torch.ops.pytrainer.*)
    _IMPORT_ERROR: BaseException | None = None
except ImportError as error:  # not built, or built against another torch
    _C = None
    _IMPORT_ERROR = error

#: The compiled module (None when it is missing): its typed entries call the
#: torch.ops.pytrainer ops through the dispatcher with less per-call overhead.
kernels = _C


class KernelsUnavailableError(RuntimeError):
    """pytrainer's compiled kernels are missing or cannot be used on a device."""


def available() -> bool:
    """Whether the compiled module loaded."""
    return _C is not None


def require():
    """The loaded ``pytrainer._C`` module, or a clear error saying how to build it."""
    if _C is None:
        raise KernelsUnavailableError(
            f"pytrainer's compiled kernels (pytrainer._C) are not available: {_IMPORT_ERROR}. "
            f"To use them, {BUILD_HINT}.")
    return _C


def device_types() -> tuple[str, ...]:
    """The device kinds with kernels in this build, e.g. ``("cpu", "cuda")``; empty when
    the compiled module is missing."""
    if _C is None:
        return ()
    return tuple(d for d in ("cpu", "cuda") if has_kernels(d))


def has_kernels(device: str | torch.device, op: str = "adamw_") -> bool:
    """Whether ``torch.ops.pytrainer.<op>`` has a kernel for this kind of device."""
    if _C is None:
        return False
    kind = torch.device(device).type
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(kind)
    return key is not None and torch._C._dispatch_has_kernel_for_dispatch_key(
        f"pytrainer::{op}", key)


def cpu_isa() -> str:
    """The CPU instruction set the kernels use: ``AVX512_BF16``, ``AVX512``, ``AVX2``
    or ``DEFAULT``. The best this CPU and torch allow, unless the environment variable
    ``PYTRAINER_CPU_ISA`` (read once, at the first kernel call) or :func:`set_cpu_isa`
    names another."""
    return require().cpu_isa()


def cpu_isas() -> list[str]:
    """The CPU instruction sets this CPU can run the kernels with, best first."""
    return list(require().cpu_isas())


def state_list_names(op: str) -> tuple[str, ...]:
    """The state lists ``torch.ops.pytrainer.<op>`` takes, in its order: the
    positional tensor lists between ``grads`` and ``state_steps``."""
    require()
    schema = getattr(torch.ops.pytrainer, op).default._schema
    positional = [argument.name for argument in schema.arguments if not argument.kwarg_only]
    return tuple(positional[2:-1])


def set_cpu_isa(name: str) -> str:
    """Makes the CPU kernels of this process use one of :func:`cpu_isas` (to measure
    or test another instruction set on one machine); ``""`` restores the automatic
    choice. Returns the instruction set now in use."""
    return require().set_cpu_isa(name)


def check_device(device: torch.device, op: str) -> None:
    """Raises a clear error when ``op`` has no kernel for ``device``."""
    require()
    if not has_kernels(device, op):
        built = ", ".join(device_types()) or "none"
        hint = (" (this build has no CUDA kernels: install a CUDA build of torch and a CUDA "
                "toolkit, then rebuild with PYTRAINER_CUDA=1)") if device.type == "cuda" else ""
        raise KernelsUnavailableError(
            f"pytrainer has no {op} kernel for {device.type} tensors; kernels are built for: "
            f"{built}{hint}")
