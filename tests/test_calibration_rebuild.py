"""`python -m benchmarks.calibration --from-cache` rebuilds a results file from the very runs it names, not
from today's defaults: a tuning stem written under other defaults keeps its rows."""

from __future__ import annotations

import json

from benchmarks import calibration
from registry_fixtures import sample_metrics


def _cached_run(root, folder: str, forget_quality: float) -> None:
    run = root / folder
    (run / "reports").mkdir(parents=True)
    (run / "reports" / "metrics.json").write_text(json.dumps(sample_metrics(forget_quality=forget_quality)))
    (run / "result.json").write_text(json.dumps({
        "world": "demo", "seed": 10, "n_forget": 40, "n_holdout": 100, "stop": None, "steps": 20,
        "unlearn_seconds": 1.0, "evaluate_seconds": 1.0, "cache": {}, "floor": None}))


def test_from_cache_takes_the_runs_the_results_file_names(tmp_path, monkeypatch):
    monkeypatch.setattr(calibration, "ROOT", tmp_path / "cache")
    _cached_run(tmp_path / "cache", "demo-0000/runs/seed10-aaaa", forget_quality=0.42)
    out = tmp_path / "results"
    out.mkdir()
    (out / "tuning_x.json").write_text(json.dumps({"runs": [{"world": "demo", "seed": 10,
                                                              "run": "demo-0000/runs/seed10-aaaa"}]}))

    calibration.main(worlds=["demo"], seeds=[10], out=out, report_only=False, from_cache=True, train_only=False,
                     set_=["unlearn.gamma=0.7"], stem="tuning_x")

    rebuilt = json.loads((out / "tuning_x.json").read_text())
    assert [(r["world"], r["seed"], r["run"]) for r in rebuilt["runs"]] == [("demo", 10, "demo-0000/runs/seed10-aaaa")]
    assert rebuilt["runs"][0]["metrics"]["unlearned"]["forget_quality"] == 0.42
    assert rebuilt["not_run"] == [] and "0.420" in (out / "tuning_x.md").read_text()


def test_the_judged_stem_is_always_rebuilt_from_todays_defaults(tmp_path, monkeypatch):
    monkeypatch.setattr(calibration, "ROOT", tmp_path / "cache")
    _cached_run(tmp_path / "cache", "demo-0000/runs/seed10-aaaa", forget_quality=0.42)
    out = tmp_path / "results"
    out.mkdir()
    (out / "calibration.json").write_text(json.dumps({"runs": [{"world": "demo", "seed": 10,
                                                                 "run": "demo-0000/runs/seed10-aaaa"}]}))

    calibration.main(worlds=["demo"], seeds=[10], out=out, report_only=False, from_cache=True, train_only=False,
                     set_=[], stem="calibration")

    rebuilt = json.loads((out / "calibration.json").read_text())
    assert rebuilt["runs"] == [] and rebuilt["not_run"] == [{"world": "demo", "seed": 10}], \
        "a run of other settings is not shown as the shipped defaults'"
