"""`python -m benchmarks.calibration --from-cache` rebuilds a tuning results file from the very runs it names,
not from today's defaults (a tuning stem written under other defaults keeps its rows), and the judged stem
always from today's shipped defaults. A run whose cached folder is gone (another machine) stands as recorded."""

from __future__ import annotations

import json

import shutil

import pytest

from benchmarks import calibration
from registry_fixtures import sample_metrics

RUN = "demo-0000/runs/seed10-aaaa"


@pytest.fixture
def results(tmp_path, monkeypatch):
    """A cached demo run (seed 10, forget quality 0.42) that today's defaults would not find, and a results
    folder; returns a function that writes ``<stem>.json`` naming that run, rebuilds it and reads it back."""
    monkeypatch.setattr(calibration, "ROOT", tmp_path / "cache")
    run = tmp_path / "cache" / RUN
    (run / "reports").mkdir(parents=True)
    (run / "reports" / "metrics.json").write_text(json.dumps(sample_metrics(forget_quality=0.42)))
    (run / "result.json").write_text(json.dumps({
        "world": "demo", "seed": 10, "n_forget": 40, "n_holdout": 100, "stop": None, "steps": 20,
        "unlearn_seconds": 1.0, "evaluate_seconds": 1.0, "cache": {}, "floor": None}))
    out = tmp_path / "results"
    out.mkdir()

    def rebuild(stem: str, settings: list[str], recorded: dict | None = None) -> dict:
        (out / f"{stem}.json").write_text(json.dumps({"runs": [recorded or {"world": "demo", "seed": 10, "run": RUN}]}))
        calibration.main(worlds=["demo"], seeds=[10], out=out, report_only=False, from_cache=True,
                         train_only=False, set_=settings, stem=stem)
        return json.loads((out / f"{stem}.json").read_text()) | {"md": (out / f"{stem}.md").read_text()}

    return rebuild


def test_from_cache_takes_the_runs_a_tuning_results_file_names(results):
    rebuilt = results("tuning_x", ["unlearn.gamma=0.7"])
    assert [(r["world"], r["seed"], r["run"]) for r in rebuilt["runs"]] == [("demo", 10, RUN)]
    assert rebuilt["runs"][0]["metrics"]["unlearned"]["forget_quality"] == 0.42
    assert rebuilt["not_run"] == [] and "0.420" in rebuilt["md"]


def test_the_judged_stem_is_always_rebuilt_from_todays_defaults(results):
    rebuilt = results(calibration.JUDGED_STEM, [])
    assert rebuilt["runs"] == [] and rebuilt["not_run"] == [{"world": "demo", "seed": 10}], \
        "a run of other settings is not shown as the shipped defaults'"


def test_a_recorded_run_whose_cache_folder_is_gone_stands_as_recorded(results, tmp_path):
    first = results("tuning_x", ["unlearn.gamma=0.7"])["runs"][0]
    shutil.rmtree(tmp_path / "cache")
    again = results("tuning_x", ["unlearn.gamma=0.7"], recorded=first)
    assert again["runs"] == [first] and "0.420" in again["md"]
