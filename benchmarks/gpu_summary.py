"""The table at the end of benchmarks/gpu_check.sh: each stage's outcome, then the
benchmark figures against the GPU targets (issue 11), from the files in OUTDIR.

    python benchmarks/gpu_summary.py OUTDIR

Reads stages.tsv, smoke.json, tests.log, sanitizer_*.log, ptxas.txt,
bench_optim.json, bench_accumulation.json and compiled/bench_optim.json (the
compiled-step anchor); whatever is missing is reported as missing. Writes
nothing; gpu_check.sh keeps its output as summary.txt.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any, Callable

#: (what, check on the benchmark rows or None when the figure is absent)
Target = tuple[str, Callable[[list[dict], list[dict]], tuple[bool, str] | None]]


def _row(rows: list[dict], set_name: str, dtype: str, optimizer: str) -> dict | None:
    for r in rows:
        if (r.get("set"), r.get("dtype"), r.get("optimizer")) == (set_name, dtype, optimizer):
            return r
    return None


def _fraction_and_ms(set_name: str, dtype: str, optimizer: str, fraction: float | None,
                     ms: float | None):
    def check(rows, _):
        r = _row(rows, set_name, dtype, optimizer)
        if r is None:
            return None
        ok = (fraction is None or r["fraction_of_copy_bw"] >= fraction) and (
            ms is None or r["ms_per_step"] <= ms)
        return ok, (f"{r['ms_per_step']:.2f} ms, {r['fraction_of_copy_bw']:.0%} of copy "
                    f"({r['copy_gb_s']:.0f} GB/s), {r['speedup_vs_anchor'] or 0:.2f}x "
                    f"{r['anchor']}")
    return check


def _adafactor_model_sets(rows, _):
    pairs = []
    for r in rows:
        if r.get("optimizer") == "pytrainer Adafactor" and r.get("set") not in (
                "llama", "4000x4096"):
            pairs.append((r["set"], r["dtype"], r.get("speedup_vs_anchor")))
    if not pairs:
        return None
    ok = all(s is not None and s >= 1.0 for _, _, s in pairs)
    return ok, ", ".join(f"{n} {d} {s or 0:.2f}x" for n, d, s in pairs)


def _trainer(minimum: float, micro: int | None = None, accumulation: int | None = None):
    def check(_, acc_rows):
        sel = [r for r in acc_rows if r.get("pytrainer_over_hf") is not None and (
            micro is None or (r["micro_batch"], r["accumulation"]) == (micro, accumulation))]
        if not sel:
            return None
        ratios = [r.get("steady_pytrainer_over_hf") or r["pytrainer_over_hf"] for r in sel]
        return all(x >= minimum for x in ratios), ", ".join(
            f"{r['micro_batch']}x{r['accumulation']} {x:.2f}x" for r, x in zip(sel, ratios))
    return check


TARGETS: list[Target] = [
    ("FusedAdamW fp32, llama: >= 97% of copy, <= 7.7 ms",
     _fraction_and_ms("llama", "float32", "pytrainer FusedAdamW", 0.97, 7.7)),
    ("FusedAdamW bf16, llama: >= 95% of copy, <= 3.9 ms",
     _fraction_and_ms("llama", "bfloat16", "pytrainer FusedAdamW", 0.95, 3.9)),
    ("FusedAdamW fp32, 4000x4096: <= 1 ms",
     _fraction_and_ms("4000x4096", "float32", "pytrainer FusedAdamW", None, 1.0)),
    ("AnyPrecision Kahan bf16, llama: >= 95% of copy, <= 5 ms",
     _fraction_and_ms("llama", "bfloat16", "pytrainer AnyPrecision+Kahan", 0.95, 5.0)),
    ("Adafactor fp32, llama: <= 7.5 ms",
     _fraction_and_ms("llama", "float32", "pytrainer Adafactor", None, 7.5)),
    ("Adafactor, model-shaped sets: not slower than torch foreach", _adafactor_model_sets),
    ("Trainer vs Hugging Face: >= 1.0x at every setting", _trainer(1.0)),
    ("Trainer vs Hugging Face: >= 1.2x at 4 x 8", _trainer(1.2, 4, 8)),
]


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _last_line(path: Path, pattern: str = "") -> str:
    try:
        lines = [l for l in path.read_text(errors="replace").splitlines() if l.strip()]
    except OSError:
        return "missing"
    if pattern:
        lines = [l for l in lines if re.search(pattern, l)]
    return lines[-1].strip() if lines else "(empty)"


def summarize(out: Path) -> list[str]:
    lines = ["stage       status       s  last line", "-" * 78]
    try:
        for row in (out / "stages.tsv").read_text().splitlines():
            name, status, took, last = (row.split("\t") + ["", "", "", ""])[:4]
            lines.append(f"{name:<12}{status:<11}{took:>4}  {last[:60]}")
    except OSError:
        lines.append("stages.tsv missing")
    smoke = _load(out / "smoke.json")
    if smoke:
        bad = [r["case"] for r in smoke["results"] if not r["ok"]]
        bitwise = sum(r["bitwise"] for r in smoke["results"])
        lines.append(f"\nsmoke: {len(smoke['results']) - len(bad)}/{len(smoke['results'])} "
                     f"cases agree with the CPU ({bitwise} bitwise)"
                     + (f"; differ: {', '.join(bad)}" if bad else ""))
    lines.append(f"tests: {_last_line(out / 'tests.log', r'passed|failed|error')}")
    for tool in ("memcheck", "racecheck", "synccheck"):
        path = out / f"sanitizer_{tool}.log"
        if path.exists():
            lines.append(f"sanitizer {tool}: {_last_line(path, 'ERROR SUMMARY')}")
    if (out / "ptxas.txt").exists():
        lines.append("\n" + (out / "ptxas.txt").read_text().rstrip())

    bench = _load(out / "bench_optim.json") or {}
    rows = bench.get("rows", [])
    if rows:
        env = bench.get("environment", {})
        lines.append(f"\n{env.get('gpu', env.get('cpu_isa'))} | torch {env.get('torch')}")
        lines.append(f"{'set':<12}{'dtype':<9}{'optimizer':<34}{'ms':>8}{'GB/s':>8}"
                     f"{'of copy':>9}{'vs anchor':>10}")
        for r in rows:
            ratio = r.get("speedup_vs_anchor")
            lines.append(f"{r['set']:<12}{r['dtype']:<9}{r['optimizer']:<34}"
                         f"{r['ms_per_step']:>8.2f}{r['effective_gb_s']:>8.0f}"
                         f"{r['fraction_of_copy_bw']:>8.0%} "
                         f"{('%.2fx' % ratio) if ratio else '':>9}")
        lines += bench.get("summary", [])
    compiled = _load(out / "compiled" / "bench_optim.json")
    if compiled:
        lines.append("\nagainst torch's AdamW with a compiled step"
                     + (" (cut short)" if compiled.get("partial") else ""))
        lines += [f"  {line}" for line in compiled.get("summary", []) + compiled.get("notes", [])]
    acc = _load(out / "bench_accumulation.json") or {}
    acc_rows = acc.get("rows", [])

    lines.append("\ntargets (issue 11)")
    for what, check in TARGETS:
        result = check(rows, acc_rows)
        if result is None:
            lines.append(f"  n/a   {what}: not measured in this run")
        else:
            ok, detail = result
            lines.append(f"  {'met ' if ok else 'MISS'}  {what}: {detail}")
    return lines


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__)
        return 2
    print("\n".join(summarize(Path(argv[0]))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
