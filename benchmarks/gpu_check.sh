#!/usr/bin/env bash
# One run on a machine with an NVIDIA GPU and no network: build the kernels for
# that GPU only, run the CUDA tests (the kernels' and the Trainer's), the
# optimizer and the accumulation benchmarks, print a table.
#
#   bash benchmarks/gpu_check.sh OUTDIR
#
# Writes env.txt, build.log, tests.log, bench.log, bench_optim.json,
# bench_accumulation.log and .json into OUTDIR. The property tests need
# hypothesis, which such a machine may lack: make a wheels/ folder beside this
# checkout's root first (pip download -d wheels hypothesis) and carry it along.
set -uo pipefail
OUT=${1:?usage: benchmarks/gpu_check.sh OUTDIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)  # a relative OUTDIR is relative to where the script was started
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
status=0

{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
    "$PY" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

ARCH=$("$PY" -c "import torch; c = torch.cuda.get_device_capability(); print(f'{c[0]}.{c[1]}')")
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$ARCH} MAX_JOBS=${MAX_JOBS:-16} PYTRAINER_CUDA=1
echo "== build for sm_${ARCH/./} (MAX_JOBS=$MAX_JOBS)"
start=$(date +%s)
if ! "$PY" -m pip install --no-build-isolation --no-deps --no-index -e . > "$OUT/build.log" 2>&1; then
    echo "editable install failed; building in place" | tee -a "$OUT/build.log"
    "$PY" setup.py build_ext --inplace >> "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
fi
echo "built in $(( $(date +%s) - start )) s"
if ! "$PY" -c "import hypothesis" 2>/dev/null && [ -d wheels ]; then
    "$PY" -m pip install -q --no-index --find-links wheels hypothesis >> "$OUT/build.log" 2>&1
fi
"$PY" -c "import hypothesis" 2>/dev/null ||
    echo "hypothesis is missing: the property-test modules will fail to import (see the header)"

echo "== CUDA tests (kernels, and the Trainer and pytrainer train on the GPU)"
timeout 900 "$PY" -m pytest -q -rs -m cuda -p no:cacheprovider tests > "$OUT/tests.log" 2>&1 || status=1
grep -q "^SKIPPED.*tests/test_\(trainer\|reliability\|cli\)\.py" "$OUT/tests.log" &&
    echo "some Trainer tests were skipped: see $OUT/tests.log" && status=1
tail -5 "$OUT/tests.log"

echo "== benchmark"
timeout 900 "$PY" benchmarks/bench_optim.py --devices cuda --rounds 5 --steps 5 --out "$OUT" \
    > "$OUT/bench.log" 2>&1 || status=1

echo "== accumulation benchmark"
timeout 600 "$PY" benchmarks/bench_accumulation.py --device cuda --out "$OUT" \
    > "$OUT/bench_accumulation.log" 2>&1 || status=1
tail -6 "$OUT/bench_accumulation.log"

echo "== summary"
"$PY" - "$OUT/bench_optim.json" <<'PYEOF'
import json, sys
try:
    data = json.load(open(sys.argv[1]))
except OSError:
    sys.exit("no benchmark result")
print(data["environment"].get("gpu"), "| torch", data["environment"]["torch"])
print(f"{'set':<12}{'dtype':<9}{'optimizer':<31}{'ms':>8}{'GB/s':>8}{'of copy':>9}{'vs anchor':>10}")
for r in data["rows"]:
    ratio = r["speedup_vs_anchor"]
    print(f"{r['set']:<12}{r['dtype']:<9}{r['optimizer']:<31}{r['ms_per_step']:>8.2f}"
          f"{r['effective_gb_s']:>8.0f}{r['fraction_of_copy_bw']:>8.0%} "
          f"{('%.2fx' % ratio) if ratio else '':>9}")
for line in data["summary"]:
    print(line)
PYEOF
exit $status
