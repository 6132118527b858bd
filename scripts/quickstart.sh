#!/usr/bin/env bash
# The README's first command: set everything up, then run the main job (a
# two-minute training run of a byte-level GPT on text every Python carries).
set -euo pipefail
cd "$(dirname "$0")/.."
# CUDA kernels that no GPU here can run would take most of the setup time on a
# CPU-only machine: build them only where a GPU is visible, unless asked.
if [ -z "${PYTRAINER_CUDA:-}" ] && ! nvidia-smi -L 2>/dev/null | grep -q "^GPU"; then
    echo "quickstart: no NVIDIA GPU visible: building the CPU kernels only" \
         "(PYTRAINER_CUDA=1 bash scripts/quickstart.sh builds the CUDA kernels too)"
    export PYTRAINER_CUDA=0
fi
bash scripts/setup.sh
.venv/bin/pytrainer train --output_dir trainer_output "$@"
