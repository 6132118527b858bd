"""Builds pytrainer._C, the optimizer kernels, against the torch already installed.

Environment:
  PYTRAINER_CUDA=1|0|auto   build the CUDA kernels (default auto: when torch is a
                            CUDA build and a CUDA toolkit with nvcc is found)
  CUDA_HOME                 the CUDA toolkit folder (found from nvcc otherwise)
  TORCH_CUDA_ARCH_LIST      GPU architectures, e.g. "9.0" (default: the visible
                            GPUs, or with none, the architectures torch itself ships)
  MAX_JOBS                  parallel compile jobs
"""
import os
import platform
import re
import shutil
import subprocess
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent


def env_choice(name):
    value = os.environ.get(name, "").strip().lower()
    if value in ("", "auto"):
        return None
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise SystemExit(f"{name}={value!r}: use 1 (build the CUDA kernels), 0 (skip them) or auto")


def is_cuda_toolkit(path):
    return bool(path) and (Path(path) / "bin" / "nvcc").exists() and (
        Path(path) / "include" / "cuda_runtime.h").exists()


def nvcc_reported_root(nvcc):
    """The toolkit folder nvcc itself reports: robust when `nvcc` on PATH is a
    link or a wrapper script outside the toolkit."""
    try:
        out = subprocess.run([nvcc, "--dryrun", "x.cu"], capture_output=True, text=True,
                             timeout=60).stderr
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"^#\$ _HERE_=(.+)$", out, re.MULTILINE)
    return str(Path(match.group(1).strip()).parent) if match else None


def find_cuda_home():
    explicit = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if explicit:
        if is_cuda_toolkit(explicit):
            return explicit
        raise SystemExit(f"CUDA_HOME={explicit} is not a CUDA toolkit folder (it needs bin/nvcc and "
                         "include/cuda_runtime.h); point it at the toolkit or unset it")
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates += [nvcc_reported_root(nvcc), str(Path(os.path.realpath(nvcc)).parents[1]),
                       str(Path(nvcc).parents[1])]
    candidates.append("/usr/local/cuda")
    return next((c for c in candidates if is_cuda_toolkit(c)), None)


def link_missing_cuda_headers(cuda_home, torch_dir):
    """torch's CUDA headers include library headers (cublas_v2.h, cusparse.h, ...)
    that a minimal toolkit may lack while torch's own nvidia wheels carry them.
    Link only the missing ones into a private folder, so the toolkit's headers
    always win where both exist."""
    toolkit_include = Path(cuda_home) / "include"
    extra = ROOT / "build" / "cuda_missing_headers"
    if extra.exists():
        shutil.rmtree(extra)
    wheel_includes = sorted((torch_dir.parent / "nvidia").glob("*/include"))
    for include in wheel_includes:
        for entry in include.iterdir():
            if not (toolkit_include / entry.name).exists() and not (extra / entry.name).exists():
                extra.mkdir(parents=True, exist_ok=True)
                (extra / entry.name).symlink_to(entry)
    return [str(extra)] if extra.exists() else []


def default_arch_list(torch):
    """Without a visible GPU torch cannot guess; build what torch itself ships."""
    arches = []
    for arch in torch.cuda.get_arch_list():
        match = re.fullmatch(r"sm_(\d+)(\d)", arch)
        if match:
            arches.append(f"{match.group(1)}.{match.group(2)}")
    arches = sorted(set(arches), key=lambda a: tuple(map(int, a.split("."))))
    if not arches:
        raise SystemExit("no GPU is visible and torch lists no CUDA architectures: "
                         "set TORCH_CUDA_ARCH_LIST, e.g. TORCH_CUDA_ARCH_LIST=9.0")
    arches[-1] += "+PTX"
    return ";".join(arches)


def build_extension():
    import torch

    want_cuda = env_choice("PYTRAINER_CUDA")
    cuda_home = find_cuda_home() if torch.version.cuda else None
    if want_cuda and not torch.version.cuda:
        raise SystemExit(f"PYTRAINER_CUDA=1 but torch {torch.__version__} is a CPU-only build; "
                         "install a CUDA build of torch first")
    if want_cuda and not cuda_home:
        raise SystemExit("PYTRAINER_CUDA=1 but no CUDA toolkit was found (nvcc); set CUDA_HOME")
    with_cuda = want_cuda if want_cuda is not None else bool(cuda_home)
    if with_cuda:
        # cpp_extension reads CUDA_HOME when it is imported.
        os.environ["CUDA_HOME"] = cuda_home
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and torch.cuda.device_count() == 0:
            os.environ["TORCH_CUDA_ARCH_LIST"] = default_arch_list(torch)
            print(f"pytrainer: no GPU visible; building for TORCH_CUDA_ARCH_LIST="
                  f"{os.environ['TORCH_CUDA_ARCH_LIST']} (set it to your GPU's to build faster)")

    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    def sources(pattern):
        return sorted(str(p.relative_to(ROOT)) for p in ROOT.glob(pattern))

    srcs = sources("csrc/*.cpp") + sources("csrc/common/*.cpp") + sources("csrc/cpu/*.cpp")
    # -ffp-contract=off: no fused multiply-adds the source does not ask for, so the
    # kernels repeat the reference op by op (bitwise on the CPU).
    cxx_flags = ["-O3", "-fopenmp", "-ffp-contract=off", "-Wall", "-Wno-unknown-pragmas"]
    include_dirs = [str(ROOT / "csrc")]
    macros = []
    if with_cuda:
        srcs += sources("csrc/cuda/*.cpp") + sources("csrc/cuda/*.cu")
        include_dirs += link_missing_cuda_headers(cuda_home, Path(torch.__file__).parent)
        macros.append(("PYTRAINER_WITH_CUDA", "1"))
        nvcc_flags = ["-O3", "-lineinfo", "-fmad=false"]
        if os.environ.get("PYTRAINER_PTXAS_VERBOSE"):  # registers and spills per kernel
            nvcc_flags.append("-Xptxas=-v")
        extension = CUDAExtension(
            "pytrainer._C", srcs, include_dirs=include_dirs, define_macros=macros,
            # -fmad=false: like the CPU build, no fused multiply-adds the source does
            # not ask for, so both devices compute the same roundings (a
            # memory-bound kernel loses nothing).
            extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
            extra_link_args=["-fopenmp"])
    else:
        extension = CppExtension(
            "pytrainer._C", srcs, include_dirs=include_dirs, define_macros=macros,
            extra_compile_args={"cxx": cxx_flags}, extra_link_args=["-fopenmp"])
    print(f"pytrainer: building the CPU kernels{' and the CUDA kernels' if with_cuda else ''} "
          f"({platform.machine()}, torch {torch.__version__})")
    return [extension], {"build_ext": BuildExtension}


ext_modules, cmdclass = build_extension()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
