"""The stage commands dvc.yaml runs: a known error prints its message and exits 1, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_a_bad_setting_prints_the_key_and_no_traceback(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["gate"]["min_forget_quality"] = 1.01
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))

    result = subprocess.run([sys.executable, "-m", "components.stages", "validate", "--root", str(tmp_path),
                             "--params", str(tmp_path / "params.yaml")],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)

    assert result.returncode == 1
    assert "gate.min_forget_quality" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout and "╭" not in result.stderr


def test_each_stage_records_its_time_and_peak_memory(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["world"].update({"n_subjects": 6, "n_holdout_subjects": 2, "facts_per_subject": 8})
    params["request"] = str(tmp_path / "request.json")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    from components.data.demo_world import generate_world

    world, _ = generate_world(seed=0, n_subjects=6, n_holdout_subjects=2, facts_per_subject=8)
    (tmp_path / "request.json").write_text(
        '{"request_id": "r-1", "received_at": "2026-12-01T00:00:00Z", "subjects": ["%s"]}' % world[0].subject)

    result = subprocess.run([sys.executable, "-m", "components.stages", "prepare", "--root", str(tmp_path),
                             "--params", str(tmp_path / "params.yaml")],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, result.stderr
    import json

    resources = json.loads((tmp_path / "reports" / "resources.json").read_text())
    assert resources["prepare"]["peak_rss_mib"] > 50 and resources["prepare"]["seconds"] > 0
