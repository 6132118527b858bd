#!/usr/bin/env bash
# The whole GPU check in one run, on a machine with an NVIDIA GPU and no network
# (the H200 lent for about 15 minutes, start-up included): it must finish in 7
# minutes so that one rerun after a fix still fits.
#
#   bash benchmarks/gpu_check.sh OUTDIR
#
# Compiling the CUDA kernels there takes minutes of that window. A machine without
# a GPU that has the GPU machine's Python minor release and torch build (see
# ../shared/gpu.md) compiles them beforehand:
#
#   PYTHON=/path/to/python3.12 TORCH_CUDA_ARCH_LIST=9.0 bash benchmarks/gpu_check.sh --prebuild
#
# which leaves the module, its build log and its ptxas report in build/gpu_prebuilt;
# carry that folder to the GPU machine. There the build stage uses the carried module
# when benchmarks/carried_build.py finds that it fits (the same torch, the GPU's
# architecture, these sources) and it loads, and compiles otherwise.
#
# Stages, in order, each with its own time cap and its log written into OUTDIR as
# it runs (a stage that hangs costs only its own cap; one that fails does not stop
# the others):
#   env        GPU, driver, torch, CUDA versions, pytrainer env      env.log
#   build      kernels for this GPU's architecture only, -Xptxas -v  build.log, ptxas.txt
#   smoke      each optimizer on the GPU against the CPU             smoke.log, smoke.json
#   tests      pytest -m cuda (kernels, the 2^31+5-element step,    tests.log
#              the Trainer's CUDA paths)
#   sanitizer  compute-sanitizer memcheck, racecheck, synccheck     sanitizer.log, sanitizer_<tool>.log
#              over one step of each optimizer on odd shapes
#   bench      benchmarks/bench_optim.py                             bench.log, bench_optim.json
#   accum      benchmarks/bench_accumulation.py                      accum.log, bench_accumulation.json
#   compiled   FusedAdamW against torch's AdamW with a compiled step  compiled.log, compiled/bench_optim.json
#              (llama, then GPT-2; last: each compile takes a while)
#   summary    a table of all of the above, against the targets      summary.txt
#
# Environment: PYTHON (default python3); STAGES (default all: a subset, e.g.
# "smoke tests", reruns only those, reusing an existing build); BUDGET (seconds
# for the whole run, default 420: later stages get what earlier ones left);
# DEVICE=cpu QUICK=1 runs the same pipeline on the CPU at tiny sizes (the
# self-test of this script in tests/test_gpu_check.py).
set -uo pipefail
cd "$(dirname "$0")/.."
CARRIED=build/gpu_prebuilt
PREBUILD=0
if [ "${1:-}" = --prebuild ]; then
    PREBUILD=1
    STAGES=${STAGES:-env build}
    BUDGET=${BUDGET:-1800}  # a development machine may have 2 cores
    rm -rf "$CARRIED"
    set -- "$CARRIED"
fi
OUT_ARG=${1:?usage: benchmarks/gpu_check.sh OUTDIR, or --prebuild}
mkdir -p "$OUT_ARG"
OUT=$(cd "$OUT_ARG" && pwd)
# the package is imported from this tree, whether it was installed here or carried
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-0}
STAGES=${STAGES:-env build smoke tests sanitizer bench accum compiled summary}
BUDGET=${BUDGET:-420}
START=$(date +%s)
: > "$OUT/stages.tsv"

wanted() { [[ " $STAGES " == *" $1 "* ]]; }

# run_stage NAME CAP CMD...: at most CAP seconds, and never past the budget
# (keeping RESERVE seconds for the summary); records status and time.
RESERVE=15
run_stage() {
    local name=$1 cap=$2; shift 2
    wanted "$name" || return 0
    local left=$(( BUDGET - RESERVE - ($(date +%s) - START) ))
    (( cap > left )) && cap=$left
    if (( cap < 5 )); then
        printf '%s\tskipped\t0\tno time left in the %s s budget\n' "$name" "$BUDGET" >> "$OUT/stages.tsv"
        echo "== $name: skipped (budget spent)"
        return 0
    fi
    echo "== $name (cap ${cap} s)"
    local t0=$(date +%s) rc
    # timeout runs programs, not this script's functions: the stage runs in a
    # child bash that is given the functions and variables it needs
    local defs
    defs="$(declare -f; declare -p PY OUT DEVICE QUICK TEST_GROUPS PREBUILD CARRIED)"
    timeout --kill-after=10 "$cap" bash -c "$defs"$'\n''"$@"' stage "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    local took=$(( $(date +%s) - t0 )) status=ok
    (( rc == 124 || rc == 137 )) && status="timeout"
    (( rc != 0 && rc != 124 && rc != 137 )) && status="failed($rc)"
    printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$took" "$(tail -1 "$OUT/$name.log" | tr '\t' ' ')" >> "$OUT/stages.tsv"
    echo "   $status in ${took} s: $(tail -1 "$OUT/$name.log")"
}

env_report() {
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
    "$PY" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
    "$PY" -c "import transformers, accelerate; print('transformers', transformers.__version__, 'accelerate', accelerate.__version__)" || true
    "$PY" -c "import hypothesis" 2>/dev/null && echo "hypothesis: installed" ||
        echo "hypothesis: missing (carry a wheels/ folder: pip download -d wheels hypothesis)"
    command -v compute-sanitizer || echo "compute-sanitizer: not found"
    # what a bug report would carry: kernels built, their architectures, the CPU ISA
    "$PY" -m pytrainer env || true
}

# The module an in-place build writes, for this Python.
module_file() {
    "$PY" -c "import sysconfig; print('pytrainer/_C' + sysconfig.get_config_var('EXT_SUFFIX'))"
}

# use_carried ARCH: the module already here or the one in $CARRIED, when it fits
# this machine and loads; otherwise it leaves no carried module behind.
use_carried() {
    local module
    module=$(module_file) || return 1
    local found
    found=$("$PY" benchmarks/carried_build.py "$1" "$module" "$CARRIED/$(basename "$module")") ||
        { echo "$found"; echo "compiling here"; return 1; }
    echo "$found"
    local chosen
    chosen=$(tail -1 <<< "$found")
    chosen=${chosen%%: fits*}
    if [ "$chosen" != "$module" ]; then
        cp "$chosen" "$module" || return 1
        # the report of the build that made it
        [ -f "$CARRIED/ptxas.txt" ] && cp "$CARRIED/ptxas.txt" "$OUT/ptxas.txt"
    fi
    if "$PY" -c "from pytrainer import ops; ops.require(); assert 'cuda' in ops.device_types()"; then
        echo "using $chosen: no compilation"
        return 0
    fi
    echo "it does not load here: compiling"
    rm -f "$module"
    return 1
}

build() {
    if [ "$DEVICE" = cpu ]; then
        echo "DEVICE=cpu: using the existing build"
        "$PY" -c "from pytrainer import ops; print('kernels for', ops.device_types())"
        return
    fi
    local arch
    if [ "$PREBUILD" = 1 ]; then
        arch=${TORCH_CUDA_ARCH_LIST:?--prebuild: set TORCH_CUDA_ARCH_LIST to the architecture of the GPU machine, e.g. 9.0}
    else
        arch=$("$PY" -c "import torch; c = torch.cuda.get_device_capability(); print(f'{c[0]}.{c[1]}')") || return 1
    fi
    if [ "$PREBUILD" = 1 ] || ! use_carried "$arch"; then
        export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$arch} MAX_JOBS=${MAX_JOBS:-$(nproc)} \
            PYTRAINER_CUDA=1 PYTRAINER_PTXAS_VERBOSE=1
        echo "building for sm_${arch/./} (MAX_JOBS=$MAX_JOBS)"
        "$PY" -m pip install -v --no-build-isolation --no-deps --no-index -e . ||
            { echo "editable install failed; building in place"; "$PY" setup.py build_ext --inplace; } || return 1
        # registers, shared memory, spills and stack frames per kernel, from -Xptxas -v
        "$PY" benchmarks/ptxas_report.py "$OUT/build.log" > "$OUT/ptxas.txt" 2>&1 || true
    fi
    if ! "$PY" -c "import hypothesis" 2>/dev/null && [ -d wheels ]; then
        "$PY" -m pip install -q --no-index --find-links wheels hypothesis
    fi
    if [ "$PREBUILD" = 1 ]; then
        # without its debug information (the host code's): a tenth of the size, under
        # what the device tool carries; the GPU code keeps its line table
        local module
        module=$(module_file)
        strip --strip-debug -o "$OUT/$(basename "$module")" "$module" ||
            cp "$module" "$OUT/" || return 1
        du -h "$OUT/$(basename "$module")"
        echo "carry $CARRIED to the GPU machine (run's carry: [\"$CARRIED\"])"
    fi
    "$PY" -c "from pytrainer import ops; print('built: kernels for', ops.device_types())"
}

sanitizer() {
    if ! command -v compute-sanitizer > /dev/null; then
        echo "compute-sanitizer is not on this machine: stage not run"
        return 3
    fi
    local tool rc=0
    for tool in memcheck racecheck synccheck; do
        # one step per case: the kernels run once each under the tool
        timeout 30 compute-sanitizer --tool "$tool" --error-exitcode 9 --print-limit 20 \
            "$PY" benchmarks/gpu_smoke.py --device cuda --steps 1 \
            > "$OUT/sanitizer_$tool.log" 2>&1
        local r=$?
        echo "$tool: exit $r, $(grep -c 'ERROR SUMMARY: [1-9]' "$OUT/sanitizer_$tool.log") error summaries; $(grep 'ERROR SUMMARY' "$OUT/sanitizer_$tool.log" | tail -1)"
        (( r != 0 )) && rc=1
    done
    return $rc
}

# The CUDA tests in groups, the kernels' first, each group one pytest run: pytest
# prints its failures only when it ends, so a stage cut off by its cap still
# reports every group before the one it cut. "rest" is every file no group names.
TEST_GROUPS=(
    "kernels tests/test_fused_adamw.py tests/test_anyprecision.py tests/test_adafactor.py tests/test_capturable.py"
    "compile tests/test_compile.py"
    "trainer tests/test_trainer.py tests/test_reliability.py tests/test_cli.py"
    "rest"
)
[ "$DEVICE" = cpu ] && TEST_GROUPS=("kernels tests/test_fused_adamw.py")  # the self-test: collected, then skipped
BENCH_ARGS=(--devices "$DEVICE" --rounds 5 --steps 5)
ACCUM_ARGS=(--device "$DEVICE")
COMPILED_ARGS=(--devices "$DEVICE" --sets llama gpt2 --compiled --rounds 5 --steps 5 --no-plot --out "$OUT/compiled"
               --optimizers "pytrainer FusedAdamW" "torch AdamW fused" "torch AdamW compiled")
if [ "$QUICK" = 1 ]; then
    BENCH_ARGS=(--devices "$DEVICE" --quick --rounds 1 --steps 1)
    COMPILED_ARGS+=(--quick --rounds 1 --steps 1 --compile-backend eager)
    ACCUM_ARGS=(--device "$DEVICE" --rounds 1 --steps 2 --cpu-width 32 --cpu-layers 1
                --cpu-seq 16 --effective-batch 4 --accumulation 1 2)
fi

run_stage env 45 env_report
run_stage build $(( PREBUILD ? 1800 : 240 )) build
run_stage smoke 60 "$PY" benchmarks/gpu_smoke.py --device "$DEVICE" --json "$OUT/smoke.json"
cuda_tests() {
    local group name files named=() args results=() rc=0 r
    for group in "${TEST_GROUPS[@]}"; do
        read -r name files <<< "$group"
        if [ "$name" = rest ]; then
            args=(tests "${named[@]}")
        else
            read -r -a args <<< "$files"
            for r in "${args[@]}"; do named+=(--ignore "$r"); done
        fi
        echo "---- $name: ${args[*]}"
        "$PY" -m pytest -q -rs -p no:cacheprovider --timeout 90 --durations 10 -m cuda "${args[@]}" \
            2>&1 | tee "$OUT/tests_$name.log"
        r=${PIPESTATUS[0]}
        (( r != 0 && r != 5 )) && rc=$r  # 5: no CUDA test in the group
        results+=("$name: $(tail -1 "$OUT/tests_$name.log" | tr -d '=' | xargs)")
    done
    # a Trainer test skipped on the GPU machine means its CUDA path went unchecked
    if [ "$DEVICE" != cpu ] && grep -q "^SKIPPED.*tests/test_\(trainer\|reliability\|cli\)\.py" "$OUT/tests.log"; then
        echo "some Trainer tests were skipped (see the SKIPPED lines above)"
        rc=1
    fi
    printf '%s; ' "${results[@]}"
    echo
    return $rc
}
run_stage tests 150 cuda_tests
if [ "$DEVICE" = cpu ]; then
    run_stage sanitizer 10 bash -c 'echo "DEVICE=cpu: no sanitizer"'
else
    run_stage sanitizer 95 sanitizer
fi
run_stage bench 150 "$PY" benchmarks/bench_optim.py "${BENCH_ARGS[@]}" --out "$OUT"
run_stage accum 120 "$PY" benchmarks/bench_accumulation.py "${ACCUM_ARGS[@]}" --out "$OUT"
run_stage compiled 120 "$PY" benchmarks/bench_optim.py "${COMPILED_ARGS[@]}"
wanted summary && "$PY" benchmarks/gpu_summary.py "$OUT" | tee "$OUT/summary.txt"
echo "total $(( $(date +%s) - START )) s"
! grep -qv -P '\tok\t' "$OUT/stages.tsv"
