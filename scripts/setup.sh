#!/usr/bin/env bash
# Creates .venv with torch and the development dependencies, and builds
# pytrainer's kernels into it (editable install).
#
#   TORCH_SPEC   the torch to install when .venv has none (default torch==2.14.1,
#                a CUDA 13.0 build, so the CUDA kernels compile even without a GPU)
#   PYTRAINER_CUDA, TORCH_CUDA_ARCH_LIST, MAX_JOBS   see setup.py
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.14.1}

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    echo "setup: installing $TORCH_SPEC"
    "${PIP[@]}" install -q "$TORCH_SPEC"
fi
"${PIP[@]}" install -q -r requirements/dev.txt
# What is built and how to build faster: pip -q hides the build's output, so say it
# here (and keep the build from repeating it on the terminal).
"$VENV/bin/python" setup.py plan
start=$(date +%s)
# No build isolation: the kernels must be compiled against the torch above.
PYTRAINER_BUILD_NOTICE=0 "${PIP[@]}" install -q --no-build-isolation --no-deps -e .
echo "setup: built in $(( $(date +%s) - start )) s"
"$VENV/bin/python" -c "from pytrainer import ops; print('setup: kernels for', ', '.join(ops.device_types()), '| CPU:', ops.cpu_isa())"
