"""Whether a pytrainer._C built on another machine can stand in for a build here.

The GPU machine is lent for minutes, and compiling the CUDA kernels there takes a
good part of them. A machine without a GPU but with the same Python minor release
and the same torch build can compile them beforehand (`bash benchmarks/gpu_check.sh
--prebuild`); gpu_check.sh's build stage asks this script whether that module fits
before it compiles anything:

    python3 benchmarks/carried_build.py ARCH MODULE...

ARCH is this GPU's compute capability (e.g. 9.0); each MODULE a candidate file, in
order of preference. It prints the first that fits and exits 0, or prints why none
fits and exits 1. A module fits when its build record names this very torch
(version and CUDA build), CUDA kernels for ARCH, and the sources beside this
script (setup.py, csrc/); gpu_check.sh then loads it, and builds after all when
it does not load.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pytrainer import _build_info  # noqa: E402  (loads neither torch nor the kernels)


def compiled_arches(arch_list: str | None) -> set[str]:
    """The architectures a TORCH_CUDA_ARCH_LIST compiled machine code for ("8.0;9.0+PTX"
    -> {"8.0", "9.0"}); PTX alone would be compiled at load time, so it does not count."""
    return set(re.findall(r"\d+\.\d+", arch_list or ""))


def misfit(info: dict | None, torch_version: str, torch_cuda: str | None, arch: str,
           built_from: bool | None) -> str | None:
    """Why a module with build record ``info`` cannot stand in for a build here;
    None when it can. ``built_from``: whether its recorded sources are these."""
    if info is None:
        return "it has no build record"
    if info.get("torch") != torch_version:
        return f"it was built against torch {info.get('torch')}, this machine has {torch_version}"
    if "cuda" not in info.get("devices", ()):
        return "it has no CUDA kernels"
    if info.get("cuda") != torch_cuda:
        return f"it was built for CUDA {info.get('cuda')}, this torch uses CUDA {torch_cuda}"
    if arch not in compiled_arches(info.get("cuda_arch_list")):
        return f"it was built for GPU architectures {info.get('cuda_arch_list')}, not {arch}"
    if built_from is None:
        return "it does not record the sources it was built from"
    if not built_from:
        return "it was built from other sources (setup.py or csrc/ changed since)"
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("arch", help="this GPU's compute capability, e.g. 9.0")
    parser.add_argument("modules", nargs="+", type=Path, help="candidate pytrainer._C files")
    args = parser.parse_args(argv)
    import torch

    for module in args.modules:
        if not module.is_file():
            print(f"{module}: not there")
            continue
        info = _build_info.read(str(module))
        reason = misfit(info, str(torch.__version__), torch.version.cuda, args.arch,
                        _build_info.built_from(info or {}, ROOT))
        if reason:
            print(f"{module}: does not fit: {reason}")
            continue
        print(f"{module}: fits (torch {info['torch']}, GPU architectures "
              f"{info['cuda_arch_list']}, sources {info['sources']})")
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
