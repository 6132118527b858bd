"""The package as pip builds it: a complete sdist made without torch, a wheel that
requires the torch it was built against, the record the module keeps of its build,
the check of that record on import, and the error of a build that cannot see torch.
Nothing here compiles: the metadata and the sdist come from setup.py's own hooks."""
from __future__ import annotations

import email
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from packaging.specifiers import SpecifierSet

import pytrainer
from pytrainer import _build_info, ops
from tests.helpers import editable_build, load_module

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def no_torch(tmp_path_factory) -> Path:
    """A folder that, first on PYTHONPATH, makes `import torch` fail as it does in an
    isolated build environment."""
    folder = tmp_path_factory.mktemp("no_torch")
    (folder / "torch").mkdir()
    (folder / "torch" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'torch'\", name='torch')\n")
    return folder


def _env(first_on_path: Path | None = None, **settings) -> dict:
    """This environment without the build settings CI exports, plus ``settings``."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTRAINER_CUDA", "TORCH_CUDA_ARCH_LIST", "PYTRAINER_BUILD_NOTICE")}
    if first_on_path is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(first_on_path),
                                                         env.get("PYTHONPATH")]))
    return {**env, **settings}


@pytest.fixture(scope="session")
def sdist(tmp_path_factory, no_torch) -> Path:
    """The sdist, made once per session the way the README says, on a machine where
    torch does not import (so it cannot depend on torch, CUDA or a compiler)."""
    try:
        import build  # noqa: F401
    except ImportError:
        pytest.fail("the sdist tests need `build` (requirements/dev.txt): pip install build")
    out = tmp_path_factory.mktemp("sdist")
    run = subprocess.run([sys.executable, "-m", "build", "--sdist", "--no-isolation",
                          "--outdir", str(out), str(ROOT)], capture_output=True, text=True,
                         timeout=300, env=_env(first_on_path=no_torch))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (archive,) = out.glob("pytrainer-*.tar.gz")
    return archive


def _git_files(folder: str) -> list[str]:
    try:
        run = subprocess.run(["git", "ls-files", folder], cwd=ROOT, capture_output=True,
                             text=True, timeout=60)
    except OSError:
        run = None
    if run is None or run.returncode != 0:
        pytest.skip("not a git checkout: no list of tracked files to compare the sdist with")
    return run.stdout.split()


def test_sdist_holds_every_tracked_kernel_source_and_header(sdist):
    with tarfile.open(sdist) as archive:
        names = archive.getnames()
    prefix = f"pytrainer-{pytrainer.__version__}/"
    held = {name[len(prefix):] for name in names if name.startswith(prefix)}
    tracked = _git_files("csrc")
    assert {Path(f).suffix for f in tracked} >= {".cpp", ".h", ".cu", ".cuh"}
    missing = sorted(set(tracked) - held)
    assert not missing, f"the sdist lacks {missing}"
    for needed in ("README.md", "LICENSE", "setup.py", "pyproject.toml", "MANIFEST.in",
                   "pytrainer/__init__.py", "pytrainer/_build_info.py", "pytrainer/cli.py"):
        assert needed in held, needed
    assert not [n for n in held if n.endswith((".so", ".o", ".pyc"))], "build outputs in the sdist"


def test_sdist_asks_for_any_torch_and_lists_the_extras(sdist):
    version, major = load_setup_py().setuptools_version()
    if major < 77:
        pytest.skip(f"setuptools {version} writes no Requires-Dist, Dynamic or "
                    "License-Expression into an sdist; 77 and newer (requirements/dev.txt) do")
    with tarfile.open(sdist) as archive:
        info = archive.extractfile(f"pytrainer-{pytrainer.__version__}/PKG-INFO").read()
    metadata = email.message_from_bytes(info)
    requires = metadata.get_all("Requires-Dist")
    assert "torch>=2.7" in requires
    assert "requires-dist" in [d.lower() for d in metadata.get_all("Dynamic", [])]
    hf = [r.split(";")[0].strip() for r in requires if 'extra == "hf"' in r]
    assert sorted(r.split(">")[0] for r in hf) == ["accelerate", "datasets", "tokenizers",
                                                   "transformers"]
    assert metadata["License-Expression"] == "Apache-2.0"


def test_wheel_metadata_requires_the_torch_release_it_is_built_against(tmp_path):
    # The wheel's metadata hook: what `pip install` and `python -m build --wheel` write
    # into the wheel, without compiling it.
    code = ("import sys; from setuptools import build_meta; "
            "print(build_meta.prepare_metadata_for_build_wheel(sys.argv[1]))")
    run = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300,
                         env=_env(PYTRAINER_CUDA="0"))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    dist_info = tmp_path / run.stdout.strip().splitlines()[-1]
    metadata = email.message_from_bytes((dist_info / "METADATA").read_bytes())
    torch_pins = [r for r in metadata.get_all("Requires-Dist") if r.startswith("torch")]
    major, minor = torch.__version__.split(".")[:2]
    assert torch_pins == [f"torch=={major}.{minor}.*"]
    spec = SpecifierSet(torch_pins[0][len("torch"):])
    assert spec.contains(str(torch.__version__)) and spec.contains(f"{major}.{minor}.0")
    assert not spec.contains(f"{major}.{int(minor) + 1}.0")
    assert not spec.contains(f"{major}.{int(minor) - 1}.0")


def test_torch_requirement_takes_the_release_of_any_version_string():
    assert _build_info.torch_requirement("2.14.1+cu130") == "torch==2.14.*"
    assert _build_info.torch_requirement("2.13.0") == "torch==2.13.*"
    assert _build_info.torch_requirement("2.15.0.dev20260101+cpu") == "torch==2.15.*"
    with pytest.raises(ValueError, match="not a torch version"):
        _build_info.torch_requirement("unknown")


def test_build_without_torch_stops_with_one_message_saying_what_to_run(no_torch, tmp_path):
    # What pip's isolated build environment looks like to setup.py: no torch.
    run = subprocess.run([sys.executable, "setup.py", "dist_info", "--output-dir", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env=_env(first_on_path=no_torch))
    assert run.returncode != 0
    message = run.stderr
    assert "torch is not importable" in message and "No module named 'torch'" in message
    assert "build isolation" in message and "compiled against" in message
    assert message.index("pip install torch") < message.index("pip install --no-build-isolation .")
    assert "Traceback" not in message


def test_build_plan_says_what_is_built_and_how_to_build_faster():
    run = subprocess.run([sys.executable, "setup.py", "plan"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, env=_env(PYTRAINER_CUDA="0"))
    assert run.returncode == 0, run.stderr
    cpu_files = len(list(ROOT.glob("csrc/*.cpp")) + list(ROOT.glob("csrc/common/*.cpp")) +
                    list(ROOT.glob("csrc/cpu/*.cpp")))
    assert f"CPU kernels:  {cpu_files} C++ files" in run.stdout
    assert "CUDA kernels: none (PYTRAINER_CUDA=0)" in run.stdout
    assert f"torch {torch.__version__}" in run.stdout


def test_build_plan_without_a_gpu_names_the_architectures_and_the_faster_ways():
    if not torch.version.cuda or not shutil.which("nvcc"):
        pytest.skip("needs a CUDA build of torch and nvcc to plan a CUDA build")
    if torch.cuda.device_count():
        pytest.skip("a visible GPU decides the architectures")
    run = subprocess.run([sys.executable, "setup.py", "plan"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, env=_env(PYTRAINER_CUDA="1"))
    assert run.returncode == 0, run.stderr
    # what torch was built for (torch.cuda.get_arch_list() is empty without a GPU on 2.11)
    shipped = sorted((int(a[3:-1]), int(a[-1])) for a in torch._C._cuda_getArchFlags().split()
                     if a.startswith("sm_"))
    arch_list = ";".join(f"{major}.{minor}" for major, minor in shipped) + "+PTX"
    assert f"{len(list(ROOT.glob('csrc/cuda/*.cu')))} .cu" in run.stdout
    assert (f"GPU architectures {arch_list} (every architecture torch ships, as no GPU is "
            "visible)") in run.stdout
    assert "TORCH_CUDA_ARCH_LIST=9.0" in run.stdout and "PYTRAINER_CUDA=0" in run.stdout

    chosen = subprocess.run([sys.executable, "setup.py", "plan"], cwd=ROOT, capture_output=True,
                            text=True, timeout=300,
                            env=_env(PYTRAINER_CUDA="1", TORCH_CUDA_ARCH_LIST="8.6"))
    assert "GPU architectures 8.6 (TORCH_CUDA_ARCH_LIST)" in chosen.stdout, chosen.stderr


def load_setup_py():
    """setup.py as a module (its main() does not run on import)."""
    return load_module("pytrainer_setup_py", ROOT / "setup.py")


def test_a_build_against_a_torch_older_than_pytrainer_works_with_stops_saying_so():
    setup_py = load_setup_py()
    for version in ("2.7.1+cu126", "2.8.0+cu128", "2.9.1+cu128", "2.11.0+cu130", "2.14.1",
                    "2.15.0.dev20260101+cpu", "3.0.0"):
        setup_py.check_torch_release(version)
    with pytest.raises(SystemExit) as stop:
        setup_py.check_torch_release("2.4.1+cu121")
    assert str(stop.value) == ("pytrainer needs torch>=2.7; this environment has torch "
                               "2.4.1+cu121. Run pip install -U 'torch>=2.7' and build again.")


@pytest.mark.parametrize("capabilities, expected", [
    ([(9, 0)], "9.0+PTX"),
    ([(8, 6), (8, 0), (8, 6)], "8.0;8.6+PTX"),
    ([(13, 0), (9, 0)], "9.0;12.0+PTX"),  # a GPU newer than torch ships: its newest
    ([], "7.5;8.0;8.6;9.0;10.0;12.0+PTX"),  # none visible: everything torch ships
])
def test_default_architectures_follow_the_visible_gpus(monkeypatch, capabilities, expected):
    # No GPU here: the choice runs on a stand-in for torch.cuda.
    cuda = SimpleNamespace(
        get_arch_list=lambda: ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"],
        device_count=lambda: len(capabilities),
        get_device_capability=lambda index: capabilities[index])
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    setup_py = load_setup_py()
    arch_list, why = setup_py.cuda_arch_list(SimpleNamespace(cuda=cuda, __version__="2.14.1"))
    assert arch_list == expected
    assert why == ("the visible GPUs" if capabilities else setup_py.NO_GPU)
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.9")
    assert setup_py.cuda_arch_list(SimpleNamespace(cuda=cuda)) == ("8.9", "TORCH_CUDA_ARCH_LIST")


def test_the_built_module_records_what_it_was_built_against():
    if not ops.available():
        pytest.skip("compiled kernels not built")
    record = _build_info.read()
    assert record is not None, ("pytrainer._C has no build record: it was built before "
                                "records existed; rebuild it (pip install --no-build-isolation -e .)")
    assert record["torch"] == str(torch.__version__)
    assert record["devices"] == list(ops.device_types())
    if "cuda" in record["devices"]:
        assert record["cuda"] == torch.version.cuda and record["cuda_arch_list"]
    else:
        assert record["cuda"] is None and record["cuda_arch_list"] is None
    assert _build_info.mismatch(record, str(torch.__version__), torch.version.cuda) is None
    assert record["sources"]
    if editable_build():
        assert _build_info.built_from(record, ROOT), (
            "pytrainer._C was built from other sources than this tree's: rebuild it "
            "(pip install --no-build-isolation -e .)")


def test_the_sources_digest_changes_with_every_file_the_kernels_are_built_from(tmp_path):
    tree = tmp_path / "tree"
    (tree / "csrc" / "cuda").mkdir(parents=True)
    (tree / "setup.py").write_text("setup()\n")
    (tree / "csrc" / "a.cpp").write_text("int a;\n")
    (tree / "csrc" / "cuda" / "b.cu").write_text("int b;\n")
    first = _build_info.sources_digest(tree)
    assert first and _build_info.sources_digest(tree) == first
    changes = [lambda: (tree / "csrc" / "cuda" / "b.cu").write_text("int c;\n"),
               lambda: (tree / "setup.py").write_text("setup(x=1)\n"),
               lambda: (tree / "csrc" / "c.h").write_text(""),
               lambda: (tree / "csrc" / "a.cpp").rename(tree / "csrc" / "d.cpp")]
    digests = {first}
    for change in changes:
        change()
        digests.add(_build_info.sources_digest(tree))
    assert len(digests) == 1 + len(changes)
    last = _build_info.sources_digest(tree)
    assert _build_info.built_from({"sources": last}, tree) is True
    assert _build_info.built_from({"sources": first}, tree) is False
    assert _build_info.built_from({}, tree) is None                   # recorded before digests
    assert _build_info.sources_digest(tmp_path) is None               # an installed package
    assert _build_info.built_from({"sources": last}, tmp_path) is None


def test_the_record_is_read_from_the_file_and_only_from_its_section(tmp_path):
    not_elf = tmp_path / "_C.so"
    not_elf.write_bytes(b"MZ" + b"\0" * 100)
    assert _build_info.read(str(not_elf)) is None
    assert _build_info.read(str(tmp_path / "missing.so")) is None
    assert _build_info.read(sys.executable) is None  # an ELF file without the section


RECORD = {"torch": "2.13.0+cpu", "cuda": None, "cuda_arch_list": None, "devices": ["cpu"]}


@pytest.mark.parametrize("record, torch_version, torch_cuda, fragments", [
    (RECORD, "2.14.1+cu130", "13.0", ["torch 2.13.0+cpu", "torch 2.14.1+cu130",
                                      "pip install 'torch==2.13.*'"]),
    (RECORD, "3.13.0", None, ["torch 2.13.0+cpu", "torch 3.13.0"]),
    (dict(RECORD, torch="2.14.0+cu130", cuda="13.0", devices=["cpu", "cuda"]), "2.14.1+cpu",
     None, ["CUDA 13.0 kernels", "CPU-only build"]),
    (dict(RECORD, torch="2.14.0+cu126", cuda="12.6", devices=["cpu", "cuda"]), "2.14.1+cu130",
     "13.0", ["CUDA 12.6", "CUDA 13.0"]),
])
def test_a_record_of_another_torch_is_a_mismatch_naming_both(record, torch_version, torch_cuda,
                                                             fragments):
    message = _build_info.mismatch(record, torch_version, torch_cuda)
    assert message is not None
    for fragment in fragments:
        assert fragment in message, (fragment, message)


@pytest.mark.parametrize("record, torch_version, torch_cuda", [
    (RECORD, "2.13.1", None),                       # another patch release of the same torch
    (RECORD, "2.13.0+cu130", "13.0"),               # CPU kernels load with a CUDA torch
    (dict(RECORD, cuda="13.0", devices=["cpu", "cuda"]), "2.13.0+cu130", "13.1"),
    ({"devices": ["cpu"]}, "2.14.1", None),         # a record without a torch says nothing
])
def test_a_record_of_the_same_torch_release_loads(record, torch_version, torch_cuda):
    assert _build_info.mismatch(record, torch_version, torch_cuda) is None
