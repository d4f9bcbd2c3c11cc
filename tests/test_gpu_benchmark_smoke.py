"""benchmarks/gpu/run.sh --cpu-smoke: the GPU run's machinery, on tiny shapes on the CPU, in seconds.

The numbers mean nothing here; what is checked is that the script runs end to end, writes
its JSON with every method measured, and counts host synchronisations the way the GPU run
will: exactly one of the engine's own per step (BLUR and weighted sum), many for the naive BLUR.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

RUN_SH = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu" / "run.sh"


def test_gpu_script_runs_in_cpu_smoke_mode_and_writes_its_figures(tmp_path):
    out = tmp_path / "gpu.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([str(RUN_SH), "--cpu-smoke", "--out", str(out)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    (run,) = result["runs"]
    assert run["precision"] == "bf16" and set(run["methods"]) == {"blur", "weighted_sum", "naive_blur"}
    for method in run["methods"].values():
        assert method["step_seconds_median"] > 0 and method["peak_memory_bytes"] is None  # no CUDA here
    assert run["methods"]["blur"]["host_syncs_per_step"] == 1
    assert run["methods"]["weighted_sum"]["host_syncs_per_step"] == 1
    assert run["methods"]["naive_blur"]["host_syncs_per_step"] > 10  # two .item() per parameter tensor


def test_gpu_script_without_a_gpu_says_how_to_run_it_here(tmp_path):
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the real run would start")
    done = subprocess.run([str(RUN_SH), "--out", str(tmp_path / "gpu.json")], env=dict(os.environ, OMP_NUM_THREADS="1"),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "no CUDA device here" in done.stderr and "--cpu-smoke" in done.stderr
    assert not (tmp_path / "gpu.json").exists()
