"""Small test utilities."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

from pytrainer import _build_info

ROOT = Path(__file__).resolve().parents[1]
SHAPES = [(), (1,), (0,), (17,), (1023,), (33, 65), (3, 5, 7), (40_000,)]
FLOAT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def rounding_tolerance(dtype: torch.dtype) -> dict:
    """assert_close tolerances of one rounding step in ``dtype``."""
    if dtype == torch.bfloat16:
        return dict(rtol=2 ** -7, atol=1e-6)
    if dtype == torch.float16:
        return dict(rtol=2 ** -10, atol=1e-6)
    if dtype == torch.float32:
        return dict(rtol=1.3e-6, atol=1e-5)
    return dict(rtol=1e-7, atol=1e-7)


def random_like_param(shape, dtype, device, scale=1.0):
    return (torch.randn(shape, dtype=torch.float32, device=device) * scale).to(dtype)


def load_module(name: str, path: Path):
    """A script (setup.py, a benchmark) as a module, loaded from its file."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def editable_build() -> bool:
    """Whether the compiled kernels are this tree's own in-place (editable) build."""
    path = _build_info.kernels_path()
    return path is not None and Path(path).parent == ROOT / "pytrainer"
