#!/usr/bin/env bash
# The package as users get it: builds the sdist, installs it (with the hf extra)
# into a fresh virtual environment that has the CPU torch wheel, and runs
# .ci/smoke_installed.py there from outside the source tree.
#
#   PYTHON       the interpreter of the fresh environment (default python3)
#   BUILD_PYTHON an interpreter with `build` (default .venv/bin/python)
#   SMOKE_TORCH  the torch to build against (default torch==2.13.0, a CPU wheel here)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${PYTHON:-python3}
BUILD_PYTHON=${BUILD_PYTHON:-.venv/bin/python}
SMOKE_TORCH=${SMOKE_TORCH:-torch==2.13.0}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

start=$(date +%s)
since() { echo "$(( $(date +%s) - $1 )) s"; }
"$BUILD_PYTHON" -m build --sdist --no-isolation --outdir "$WORK/dist" . > "$WORK/sdist.log" 2>&1 ||
    { cat "$WORK/sdist.log"; exit 1; }
SDIST=$(ls "$WORK"/dist/pytrainer-*.tar.gz)
echo "sdist-smoke: built $(basename "$SDIST") ($(since "$start"))"

unset PYTHONPATH  # from here on, only the fresh environment
"$PYTHON" -m venv "$WORK/venv"
PIP=("$WORK/venv/bin/python" -m pip --disable-pip-version-check)
# What a build without isolation takes from the environment: torch first, then
# the build requirements of pyproject.toml.
step=$(date +%s)
"${PIP[@]}" install -q "$SMOKE_TORCH"
"${PIP[@]}" install -q "setuptools>=77" wheel ninja pybind11
echo "sdist-smoke: installed $SMOKE_TORCH and the build requirements ($(since "$step"))"
step=$(date +%s)
PYTRAINER_CUDA=0 "${PIP[@]}" install -q --no-build-isolation --no-cache-dir \
    "pytrainer[hf] @ file://$SDIST"
echo "sdist-smoke: built the CPU kernels from the sdist, installed it with the hf extra ($(since "$step"))"

cd "$WORK"
step=$(date +%s)
"$WORK/venv/bin/python" -I "$ROOT/.ci/smoke_installed.py"
echo "sdist-smoke: smoke test $(since "$step"); passed in $(since "$start")"
