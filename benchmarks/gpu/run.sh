#!/usr/bin/env bash
# The GPU run of `python -m benchmarks.gpu.bench` (its arguments: --cpu-smoke, --out PATH, --steps N,
# --budget SECONDS), bounded at 8 minutes; writes benchmarks/results/gpu.json. See benchmarks/README.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec timeout 480 "$PYTHON" -m benchmarks.gpu.bench "$@"
