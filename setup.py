"""Builds pytrainer._C, the optimizer kernels, against the torch already installed:

    pip install torch                        # first: the kernels are built against it
    pip install --no-build-isolation .       # -e . for an editable install

Environment:
  PYTRAINER_CUDA=1|0|auto   build the CUDA kernels (default auto: when torch is a
                            CUDA build and a CUDA toolkit with nvcc is found)
  CUDA_HOME                 the CUDA toolkit folder (found from nvcc otherwise)
  TORCH_CUDA_ARCH_LIST      GPU architectures, e.g. "9.0" (default: the visible
                            GPUs, or with none, the architectures torch itself ships)
  MAX_JOBS                  parallel compile jobs
  PYTRAINER_BUILD_NOTICE=0  do not also write the build notice (what is built, how
                            to build faster) to the terminal; scripts/setup.sh
                            prints it itself (`python setup.py plan`)

A wheel requires the torch release it was built against (torch==X.Y.*), and the
module records what it was built for (pytrainer/_build_info.py). The sdist needs
no torch to be made.
"""
import functools
import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent

#: pytrainer's dependencies besides torch.
DEPENDENCIES = ["safetensors>=0.4", "tqdm>=4.60", "numpy"]
#: The oldest torch the test suite passed with (torch 2.7.1, 2026-12-03, Python 3.11,
#: transformers 5.24), FSDP2 on CPU ranks aside: torch 2.8's and 2.7's gloo return the
#: sum for a mean, which FSDP2 asks for; from 2.8 on it can be asked for sums, and on
#: 2.7 the Trainer refuses fsdp2=True on the CPU. torch 2.5 and 2.6 untried; torch 2.4
#: built the kernels but failed 76 tests: no torch.serialization.safe_globals
#: (checkpoints), no compiled step (its functionalization refuses ops that mutate
#: tensor lists).
MIN_TORCH = (2, 7)
#: The torch an sdist asks for; a wheel asks for the release it was built against.
TORCH_ANY = f"torch>={MIN_TORCH[0]}.{MIN_TORCH[1]}"
#: Editable installs (PEP 660) need setuptools 64.
MIN_SETUPTOOLS = 64
LICENSE = "Apache-2.0"
#: The setup.py commands that compile the kernels or write a wheel's metadata, and so
#: need the user's torch; making the sdist (and pip's "getting requirements",
#: egg_info) does not.
TORCH_COMMANDS = {"build", "build_ext", "bdist", "bdist_wheel", "bdist_egg", "dist_info",
                  "editable_wheel", "develop", "install"}

NO_TORCH = """pytrainer: cannot build the kernels: torch is not importable here ({error}).

pytrainer's kernels are C++/CUDA code compiled against the very torch they run with,
so the build must see the torch you use. pip's default build isolation builds in a
fresh environment without it (and a torch downloaded there could differ from yours,
giving kernels that fail to load). Install torch first, then build without isolation:

    pip install torch
    pip install --no-build-isolation .

(`-e .` for an editable install, or the sdist's file name instead of `.`; a build
without isolation uses your setuptools and ninja too: pip install "setuptools>={min_setuptools}" ninja)"""


@functools.cache
def load_build_info():
    """pytrainer/_build_info.py, loaded by path: the package itself may not import here."""
    spec = importlib.util.spec_from_file_location("_pytrainer_build_info",
                                                  ROOT / "pytrainer" / "_build_info.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def import_torch():
    try:
        import torch
    except ImportError as error:
        raise SystemExit(NO_TORCH.format(error=f"{type(error).__name__}: {error}",
                                         min_setuptools=MIN_SETUPTOOLS)) from None
    check_torch_release(torch.__version__)
    return torch


def check_torch_release(version):
    """The kernels build against older torch releases, but pytrainer does not work with them."""
    if load_build_info().release(version) < MIN_TORCH:
        raise SystemExit(f"pytrainer needs {TORCH_ANY}; this environment has torch {version}. "
                         f"Run pip install -U '{TORCH_ANY}' and build again.")


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


def torch_arches(torch):
    """The architectures torch itself ships kernels for, as (major, minor), oldest first."""
    names = torch.cuda.get_arch_list()
    if not names:  # torch 2.11 lists none without a GPU; the flags it was built with do
        names = (getattr(torch._C, "_cuda_getArchFlags", lambda: None)() or "").split()
    arches = set()
    for arch in names:
        match = re.fullmatch(r"sm_(\d+)(\d)", arch)
        if match:
            arches.add((int(match.group(1)), int(match.group(2))))
    return sorted(arches)


NO_GPU = "every architecture torch ships, as no GPU is visible"


def cuda_arch_list(torch):
    """The GPU architectures to compile for, and where that choice came from. Without
    TORCH_CUDA_ARCH_LIST: the visible GPUs (capped at the newest torch ships, as torch's
    own default does), or with none visible, every architecture torch ships."""
    given = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if given and given != "native":
        return given, "TORCH_CUDA_ARCH_LIST"
    shipped = torch_arches(torch)
    if not shipped:
        raise SystemExit(f"torch {torch.__version__} lists no CUDA architectures: set "
                         "TORCH_CUDA_ARCH_LIST, e.g. TORCH_CUDA_ARCH_LIST=9.0")
    count = torch.cuda.device_count()
    if count:
        newest = shipped[-1]
        arches = sorted({min(tuple(torch.cuda.get_device_capability(i)), newest)
                         for i in range(count)})
        reason = "the visible GPUs"
    elif given == "native":
        raise SystemExit("TORCH_CUDA_ARCH_LIST=native but no GPU is visible: name the "
                         "architectures, e.g. TORCH_CUDA_ARCH_LIST=9.0")
    else:
        arches = shipped
        reason = NO_GPU
    return ";".join(f"{major}.{minor}" for major, minor in arches) + "+PTX", reason


def sources(pattern):
    return sorted(str(p.relative_to(ROOT)) for p in ROOT.glob(pattern))


@dataclass
class Plan:
    """What one build compiles, decided before anything compiles."""
    torch_version: str
    torch_cuda: str | None
    cpu_sources: list
    cuda_sources: list            # empty: no CUDA kernels
    cuda_home: str | None
    arch_list: str | None         # TORCH_CUDA_ARCH_LIST of a CUDA build
    why: str                      # where arch_list came from, or why there is no CUDA

    def record(self):
        """What the module records about itself (pytrainer/_build_info.py reads it)."""
        return {"torch": self.torch_version, "cuda": self.torch_cuda if self.cuda_sources else None,
                "cuda_arch_list": self.arch_list,
                "devices": ["cpu", "cuda"] if self.cuda_sources else ["cpu"]}

    def describe(self):
        jobs = os.environ.get("MAX_JOBS")
        lines = [f"pytrainer: building the kernels against torch {self.torch_version} "
                 f"({platform.machine()}, {f'MAX_JOBS={jobs}' if jobs else 'parallel jobs: ninja'})",
                 f"  CPU kernels:  {len(self.cpu_sources)} C++ files"]
        if not self.cuda_sources:
            lines.append(f"  CUDA kernels: none ({self.why})")
            return "\n".join(lines)
        cu = sum(s.endswith(".cu") for s in self.cuda_sources)
        lines.append(f"  CUDA kernels: {cu} .cu and {len(self.cuda_sources) - cu} C++ files for "
                     f"GPU architectures {self.arch_list} ({self.why})")
        if self.why == NO_GPU:
            lines += ["  Every .cu file compiles once per architecture: most of the build time. "
                      "To build faster:",
                      "    TORCH_CUDA_ARCH_LIST=9.0   only your GPU's architecture "
                      "(its compute capability)",
                      "    PYTRAINER_CUDA=0           no CUDA kernels (for a machine without "
                      "an NVIDIA GPU)"]
        return "\n".join(lines)


def make_plan(torch):
    want_cuda = env_choice("PYTRAINER_CUDA")
    cuda_home = find_cuda_home() if torch.version.cuda else None
    if want_cuda and not torch.version.cuda:
        raise SystemExit(f"PYTRAINER_CUDA=1 but torch {torch.__version__} is a CPU-only build; "
                         "install a CUDA build of torch first")
    if want_cuda and not cuda_home:
        raise SystemExit("PYTRAINER_CUDA=1 but no CUDA toolkit was found (nvcc); set CUDA_HOME")
    cpu = sources("csrc/*.cpp") + sources("csrc/common/*.cpp") + sources("csrc/cpu/*.cpp")
    common = dict(torch_version=str(torch.__version__), torch_cuda=torch.version.cuda,
                  cpu_sources=cpu, cuda_home=cuda_home)
    if want_cuda is False or not cuda_home:
        why = ("PYTRAINER_CUDA=0" if want_cuda is False else
               f"torch {torch.__version__} is a CPU-only build" if not torch.version.cuda else
               "no CUDA toolkit (nvcc) found; set CUDA_HOME to build them")
        return Plan(cuda_sources=[], arch_list=None, why=why, **common)
    arch_list, why = cuda_arch_list(torch)
    return Plan(cuda_sources=sources("csrc/cuda/*.cpp") + sources("csrc/cuda/*.cu"),
                arch_list=arch_list, why=why, **common)


def notify(text):
    """Prints the build notice. pip captures a build's output (shown with -v only), so
    the notice also goes to the terminal the user is watching, when there is one."""
    print(text, flush=True)
    if sys.stdout.isatty() or os.environ.get("PYTRAINER_BUILD_NOTICE", "").strip() == "0":
        return
    try:
        with open("/dev/tty", "w", encoding="utf-8") as tty:
            tty.write(text + "\n")
    except OSError:  # no controlling terminal (CI, a detached job)
        pass


def write_if_changed(path, text):
    """Leaves an unchanged file alone, so ninja does not recompile it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


def kernels_extension(torch, plan, build_info):
    if plan.cuda_sources:
        # cpp_extension reads CUDA_HOME when it is imported, TORCH_CUDA_ARCH_LIST when it
        # compiles: set both, so what is built is what the plan and the record say.
        os.environ["CUDA_HOME"] = plan.cuda_home
        os.environ["TORCH_CUDA_ARCH_LIST"] = plan.arch_list
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    class BuildKernels(BuildExtension):
        def build_extensions(self):
            notify(plan.describe())
            record = Path(self.build_temp) / "pytrainer_build_info.cpp"
            # the digest of the sources lets a module found later say whether it was
            # built from the sources beside it (pytrainer env, benchmarks/gpu_check.sh)
            info = dict(plan.record(), sources=build_info.sources_digest(ROOT))
            write_if_changed(record, build_info.c_source(info))
            for extension in self.extensions:
                if str(record) not in extension.sources:
                    extension.sources.append(str(record))
            super().build_extensions()

    # -ffp-contract=off: no fused multiply-adds the source does not ask for, so the
    # kernels repeat the reference op by op (bitwise on the CPU).
    cxx_flags = ["-O3", "-fopenmp", "-ffp-contract=off", "-Wall", "-Wno-unknown-pragmas"]
    include_dirs = [str(ROOT / "csrc")]
    macros = []
    if plan.cuda_sources:
        include_dirs += link_missing_cuda_headers(plan.cuda_home, Path(torch.__file__).parent)
        macros.append(("PYTRAINER_WITH_CUDA", "1"))
        nvcc_flags = ["-O3", "-lineinfo", "-fmad=false"]
        if os.environ.get("PYTRAINER_PTXAS_VERBOSE"):  # registers and spills per kernel
            nvcc_flags.append("-Xptxas=-v")
        extension = CUDAExtension(
            "pytrainer._C", plan.cpu_sources + plan.cuda_sources, include_dirs=include_dirs,
            define_macros=macros,
            # -fmad=false: like the CPU build, no fused multiply-adds the source does
            # not ask for, so both devices compute the same roundings (a
            # memory-bound kernel loses nothing).
            extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
            extra_link_args=["-fopenmp"])
    else:
        extension = CppExtension(
            "pytrainer._C", plan.cpu_sources, include_dirs=include_dirs, define_macros=macros,
            extra_compile_args={"cxx": cxx_flags}, extra_link_args=["-fopenmp"])
    return [extension], {"build_ext": BuildKernels}


def setuptools_version():
    """The installed setuptools: its version string and major number."""
    import setuptools
    return setuptools.__version__, int(re.match(r"\d+", setuptools.__version__).group())


def check_setuptools():
    """A build without isolation uses the user's setuptools; editable installs
    (pip install -e, PEP 660) need 64, and older ones fail without saying so."""
    version, major = setuptools_version()
    if major < MIN_SETUPTOOLS:
        raise SystemExit(f"pytrainer: building needs setuptools>={MIN_SETUPTOOLS}; this "
                         f"environment has setuptools {version}. Run "
                         f"pip install -U 'setuptools>={MIN_SETUPTOOLS}' and build again.")


def license_metadata():
    """An SPDX License-Expression (PEP 639) where setuptools writes one (77+), the
    older License field otherwise."""
    if setuptools_version()[1] >= 77:
        return {"license_expression": LICENSE}
    return {"license": LICENSE}


def main():
    args = sys.argv[1:]
    check_setuptools()
    build_info = load_build_info()
    if args == ["plan"]:
        print(make_plan(import_torch()).describe())
        return
    ext_modules, cmdclass, torch_requirement = [], {}, TORCH_ANY
    if TORCH_COMMANDS.intersection(args):
        torch = import_torch()
        ext_modules, cmdclass = kernels_extension(torch, make_plan(torch), build_info)
        torch_requirement = build_info.torch_requirement(str(torch.__version__))
    setup(ext_modules=ext_modules, cmdclass=cmdclass,
          install_requires=[torch_requirement, *DEPENDENCIES],
          license_files=["LICENSE"], **license_metadata())


if __name__ == "__main__":
    main()
