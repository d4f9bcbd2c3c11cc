#!/usr/bin/env bash
# `python -m benchmarks.gpu.bench` (its options: --help) bounded at 8 minutes; writes benchmarks/results/gpu.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec timeout 480 "$PYTHON" -m benchmarks.gpu.bench "$@"
