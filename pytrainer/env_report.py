"""``python -m pytrainer env``: what a bug report needs to know about this installation.

Like DeepSpeed's ds_report or torch's collect_env: versions, whether the kernels
are built and for what, the CPU instruction set, the GPUs. It works when the
kernels are missing or do not load (that is when it is needed most), and when
torch itself does not import.
"""
from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys

__all__ = ["collect", "format_report", "main"]

#: Other packages whose versions matter to a report, read from their metadata (not imported).
PACKAGES = ("transformers", "accelerate", "datasets", "tokenizers", "safetensors", "numpy")
#: Environment variables that change what is built or how it runs.
VARIABLES = ("PYTRAINER_CUDA", "TORCH_CUDA_ARCH_LIST", "CUDA_HOME", "MAX_JOBS",
             "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "ATEN_CPU_CAPABILITY")


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _nvcc() -> str:
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return "not found"
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as error:
        return f"{nvcc} (does not run: {error})"
    release = next((line.split("release", 1)[1].strip() for line in out.splitlines()
                    if "release" in line), "version unknown")
    return f"{release} ({nvcc})"


def _kernels(torch) -> list[tuple[str, str]]:
    from pytrainer import _build_info, ops

    path = _build_info.kernels_path()
    record = _build_info.read(path)
    try:
        ops.require()
        state = "loaded"
    except ops.KernelsUnavailableError as error:  # says why, and how to build them
        state = str(error)
    rows = [("kernels", state), ("kernels file", path or "none")]
    if record:
        rows += [("built against torch", record.get("torch")),
                 ("built for devices", ", ".join(record.get("devices", ())) or "none"),
                 ("built for CUDA", record.get("cuda") or "no CUDA kernels"),
                 ("built for GPU archs", record.get("cuda_arch_list") or "none"),
                 ("built from", _built_from(record, path))]
    elif path is not None:
        rows.append(("build record", "none (built before pytrainer recorded its builds)"))
    if ops.available():
        rows += [("kernel devices", ", ".join(ops.device_types())),
                 ("CPU instruction set", ops.cpu_isa()),
                 ("CPU sets available", ", ".join(ops.cpu_isas()))]
    else:
        rows.append(("CPU instruction set", "unknown (the kernels are not loaded)"))
    return rows


def _built_from(record: dict, path: str) -> str:
    """Whether an editable build is older than its sources (a pull without a rebuild)."""
    from pytrainer import _build_info

    root = os.path.dirname(os.path.dirname(path))
    fresh = _build_info.built_from(record, root)
    if fresh is None:
        return (f"sources {record['sources']}" if record.get("sources") else
                "sources not recorded (built before pytrainer recorded them)")
    if fresh:
        return f"the sources beside it ({root}: setup.py, csrc/)"
    return (f"older sources: setup.py or csrc/ in {root} changed since the build; rebuild "
            "(pip install --no-build-isolation -e .)")


def _gpus(torch) -> list[tuple[str, str]]:
    if not torch.cuda.is_available():
        return [("GPUs", "none visible")]
    rows = [("GPUs", str(torch.cuda.device_count()))]
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        rows.append((f"  GPU {index}", f"{props.name}, compute capability {props.major}."
                                       f"{props.minor}, {props.total_memory / 2**30:.1f} GiB"))
    return rows


def collect() -> list[tuple[str, str]]:
    """The report as (field, value) rows, in order."""
    import pytrainer

    rows = [("pytrainer", f"{pytrainer.__version__} ({os.path.dirname(pytrainer.__file__)})"),
            ("Python", f"{platform.python_version()} ({sys.executable})"),
            ("platform", platform.platform()),
            ("CPU", f"{_cpu_model()}, {os.cpu_count()} logical cores")]
    try:
        import torch
    except Exception as error:  # a broken torch is what the report has to show
        return rows + [("torch", f"does not import: {type(error).__name__}: {error}")]
    rows += [("torch", f"{torch.__version__} ({os.path.dirname(torch.__file__)})"),
             ("torch CUDA", torch.version.cuda or "none (CPU-only build)"),
             ("torch GPU archs", " ".join(torch.cuda.get_arch_list()) or "none"),
             ("torch threads", str(torch.get_num_threads())),
             ("nvcc", _nvcc())]
    rows += _kernels(torch)
    rows += _gpus(torch)
    rows += [(name, _version(name)) for name in PACKAGES]
    rows += [(name, os.environ[name]) for name in VARIABLES if name in os.environ]
    rows += [(name, value) for name, value in sorted(os.environ.items())
             if name.startswith("PYTRAINER_") and name not in VARIABLES]
    return rows


def format_report(rows: list[tuple[str, str]]) -> str:
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print("usage: pytrainer env\n\nPrints pytrainer's, torch's, CUDA's and Python's "
              "versions, the kernels' build and the GPUs: include it in a bug report.")
        return 0
    if argv:
        print(f"pytrainer env: takes no arguments, got {' '.join(argv)}", file=sys.stderr)
        return 2
    print(format_report(collect()))
    return 0
