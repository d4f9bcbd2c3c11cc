#!/usr/bin/env bash
# One GPU run, ready to go: step time, peak CUDA memory and host synchronisations per step of
# BLUR, the weighted sum and the naive BLUR, on SmolLM2-135M (when models/base/smollm2-135m-instruct
# exists) and on a 1B-shaped random Llama in bf16. Writes benchmarks/results/gpu.json.
#
#   benchmarks/gpu/run.sh                # on a machine with a CUDA GPU (about 2-4 minutes, bounded at 8)
#   benchmarks/gpu/run.sh --cpu-smoke    # tiny shapes on the CPU, seconds: checks the machinery only
#
# Extra arguments go to `python -m benchmarks.gpu.bench` (--out PATH, --steps N, --budget SECONDS).
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# the whole run is bounded at 8 minutes; the module itself stops starting new work after --budget
exec timeout 480 "$PYTHON" -m benchmarks.gpu.bench "$@"
