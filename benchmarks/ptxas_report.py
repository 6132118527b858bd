"""The resources of every CUDA kernel, from the ptxas report of a build, and a
check that none spills registers or keeps a stack frame it should not.

    python benchmarks/ptxas_report.py BUILD_LOG

BUILD_LOG is the output of a build with ``PYTRAINER_PTXAS_VERBOSE=1`` (nvcc's
``-Xptxas -v``: per kernel, its registers, shared memory, stack frame and spill
bytes). Prints one table row per kernel and architecture (demangled name,
registers, barriers, static shared memory, stack frame, spill stores and loads),
then the problems found, and exits

- 0 when no kernel spills (beyond the bounded, explained ``ALLOWED_SPILLS``)
  and only the kernels of ``ALLOWED_STACK`` have a stack frame (a stack frame means local memory: arrays indexed at run time, calls
  that were not inlined, or spills);
- 1 when a kernel spills, has an unexpected stack frame, or when the log holds
  no kernel at all (a build without ``-Xptxas -v``, or not a build log);
- 2 on a usage error.

CI runs it on its build's log (.ci/run); the GPU check on the H200's
(benchmarks/gpu_check.sh, into ptxas.txt).
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

#: Kernels allowed a stack frame (no spills), by a regular expression on the
#: demangled name without our namespaces (``plain``), with the reason. Empty: every kernel keeps its values in
#: registers.
ALLOWED_STACK: dict[str, str] = {}

#: Known spills, each bounded (bytes stored, and as many loaded) and with its
#: reason: a spill beyond its bound, or in any other kernel, fails the check.
#: Every entry is a debt to pay back, not a permission.
ALLOWED_SPILLS: dict[str, tuple[int, str]] = {
    r"sums_kernel<(__half|__nv_bfloat16)>": (
        12, "Adafactor's pass 1 on 16-bit params: 12 bytes at 64 registers, found when CI "
            "first read the report; issue 12 items 1-2 rewrite this kernel (taller tiles, "
            "threads over several rows): remove the entry then"),
    r"AnyPrecisionFunctor<[^,]+, [02], RuntimeDtype, RuntimeDtype, RuntimeDtype>": (
        20, "AnyPrecisionAdamW's fallback for state dtypes outside the configurations "
            "compiled with fixed dtypes (csrc/cuda/anyprecision.cu): a dtype branch in every "
            "load, store and rounding; the fixed configurations have no spill"),
}

_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '([^']+)'")
_PROPERTIES = re.compile(r"Function properties for (\S+)")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_BARRIERS = re.compile(r"used (\d+) barriers")
_SMEM = re.compile(r"(\d+) bytes smem")


@dataclass
class Kernel:
    mangled: str
    arch: str
    registers: int | None = None
    barriers: int = 0
    smem: int = 0
    stack: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    name: str = field(default="")


def parse(text: str) -> list[Kernel]:
    """The kernels (entry functions) of a ptxas -v report, in the order compiled.

    ptxas reports each entry function as: ``Compiling entry function 'X' for
    'sm_NN'``, ``Function properties for X`` and its stack and spill line, then
    ``Used N registers, ...``. Non-inlined device functions get properties lines
    of their own, without an entry line: they are not kernels (their stack shows
    in the kernels that call them). Each compiler job's report comes whole (ninja
    prints a command's output when it ends)."""
    kernels: dict[tuple[str, str], Kernel] = {}
    current: Kernel | None = None  # the entry being reported
    properties_of: str | None = None
    for line in text.splitlines():
        if m := _ENTRY.search(line):
            current = kernels.setdefault((m.group(1), m.group(2)), Kernel(m.group(1), m.group(2)))
            continue
        if m := _PROPERTIES.search(line):
            properties_of = m.group(1)
            continue
        if m := _FRAME.search(line):
            if current is not None and properties_of == current.mangled:
                current.stack, current.spill_stores, current.spill_loads = map(int, m.groups())
            properties_of = None
            continue
        if (m := _USED.search(line)) and current is not None:
            current.registers = int(m.group(1))
            if b := _BARRIERS.search(line):
                current.barriers = int(b.group(1))
            if s := _SMEM.search(line):
                current.smem = int(s.group(1))
            current = None
    found = list(kernels.values())
    for kernel, name in zip(found, demangle([k.mangled for k in found])):
        kernel.name = name
    return found


def demangle(names: list[str]) -> list[str]:
    """C++ names of ``names`` (through c++filt; the mangled names without it)."""
    tool = shutil.which("c++filt") or shutil.which("cu++filt")
    if not names or tool is None:
        return list(names)
    try:
        out = subprocess.run([tool], input="\n".join(names) + "\n", capture_output=True,
                             text=True, timeout=30, check=True).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return list(names)
    return out if len(out) == len(names) else list(names)


def plain(name: str) -> str:
    """The name without its return type and our namespaces (what the allow-lists match)."""
    name = name.removeprefix("void ")  # every kernel's return type
    return name.replace("pytrainer::cuda::", "").replace("(anonymous namespace)::", "")


def short(name: str, width: int = 110) -> str:
    """The plain name cut to ``width`` characters."""
    name = plain(name)
    return name if len(name) <= width else name[:width - 3] + "..."


def allowed_spill(kernel: Kernel, spills: dict[str, tuple[int, str]]) -> bool:
    return any(re.search(pattern, plain(kernel.name)) and max(kernel.spill_stores, kernel.spill_loads)
               <= bound for pattern, (bound, _) in spills.items())


def problems(kernels: list[Kernel], allowed: dict[str, str] = ALLOWED_STACK,
             spills: dict[str, tuple[int, str]] = ALLOWED_SPILLS) -> list[str]:
    found = []
    if not kernels:
        found.append("no kernel in the log: build with PYTRAINER_PTXAS_VERBOSE=1 (nvcc -Xptxas -v) "
                     "and pass the build's full output")
    for k in kernels:
        where = f"{short(k.name)} ({k.arch})"
        if (k.spill_stores or k.spill_loads) and not allowed_spill(k, spills):
            found.append(f"{where} spills: {k.spill_stores} bytes stored, {k.spill_loads} "
                         "bytes loaded")
        elif k.stack and not (k.spill_stores or k.spill_loads) and not any(
                re.search(pattern, plain(k.name)) for pattern in allowed):
            found.append(f"{where} has a {k.stack}-byte stack frame (local memory); if it must, "
                         "add it to ALLOWED_STACK in benchmarks/ptxas_report.py with the reason")
        if k.registers is None:
            found.append(f"{where}: no register count in the log")
    return found


def table(kernels: list[Kernel]) -> str:
    header = ("regs", "barriers", "smem B", "stack B", "spill st", "spill ld", "arch", "kernel")
    rows = [header] + [(str(k.registers), str(k.barriers), str(k.smem), str(k.stack),
                        str(k.spill_stores), str(k.spill_loads), k.arch, short(k.name))
                       for k in sorted(kernels, key=lambda k: (k.name, k.arch))]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(r, widths)) + "  " + r[-1]
                     for r in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("build_log", help="output of a build with PYTRAINER_PTXAS_VERBOSE=1")
    args = parser.parse_args(argv)
    try:
        with open(args.build_log, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError as error:
        print(f"ptxas_report: cannot read {args.build_log}: {error}", file=sys.stderr)
        return 2
    kernels = parse(text)
    print(f"ptxas: {len(kernels)} kernels")
    if kernels:
        print(table(kernels))
    found = problems(kernels)
    for line in found:
        print(f"PROBLEM: {line}")
    for k in kernels:
        if (k.spill_stores or k.spill_loads) and allowed_spill(k, ALLOWED_SPILLS):
            reason = next((why for pattern, (_, why) in ALLOWED_SPILLS.items()
                           if re.search(pattern, plain(k.name))), "")
            print(f"known spill: {short(k.name)} ({k.arch}): {k.spill_stores} bytes; {reason}")
    if not found:
        framed = [k for k in kernels if k.stack]
        print("ok: no spills beyond the known ones" +
              (f"; stack frames in {len(framed)} kernels, allowed" if framed else
               ", no stack frames"))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
