#!/usr/bin/env bash
# The README's first command: set everything up, then run the main job (a
# two-minute training run of a byte-level GPT on text every Python carries).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/pytrainer train --output_dir trainer_output "$@"
