#!/usr/bin/env bash
# The README's first command: set everything up, then run the main job.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python benchmarks/bench_optim.py --out bench_out
