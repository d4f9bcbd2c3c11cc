"""Smoke test of ``benchmarks.pretrained`` on a tiny Llama (the numbers mean nothing here): the sweep
evaluates light and full tiers in place, notes where the holdout rule stops, caches each run so a
later session resumes, and writes its report, plots and MLflow runs."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from benchmarks.pretrained import GRIDS, LIGHT, PretrainedConfig, run, smoke_bench


@pytest.fixture(scope="module")
def bench(tmp_path_factory, one_thread):
    return smoke_bench(tmp_path_factory.mktemp("cache"))


def smoke_config(bench, out) -> PretrainedConfig:
    return PretrainedConfig(jobs=GRIDS["smoke"], root=bench.info["cache"], out_dir=out, stem="p",
                            knowledge_limit={"world_facts": 6, "real_authors": 4}, probe_every=1, mlflow=False)


def test_pretrained_sweep_evaluates_tiers_observes_the_stop_and_writes_its_report(bench, tmp_path):
    config = replace(smoke_config(bench, tmp_path), mlflow=True)
    results, analysis, files = run(config, bench)

    assert [r["name"] for r in results["runs"]] == [j.name for j in GRIDS["smoke"]]
    for run_ in results["runs"]:
        fixed = {p["steps"]: p for p in run_["points"] if p["kind"] == "fixed"}
        assert set(fixed) == {1, 2}
        assert fixed[1]["tier"] == "light" and fixed[1]["model_utility"] is None  # light: no generation
        assert fixed[1]["forget_quality"] is not None and fixed[1]["world_facts_acc"] is not None
        assert fixed[2]["tier"] == "full" and fixed[2]["model_utility"] is not None
        # the probe's curve is in the step diagnostics, and the stop point sits where the rule fired
        probed = [d for d in run_["diagnostics"] if "probe_ks_p" in d]
        assert [d["step"] for d in probed] == [1, 2]
        fired = [d["step"] for d in probed if d["probe_stop"]]
        stops = [p for p in run_["points"] if p["kind"] == "stop"]
        assert (run_["stop"]["stopped_at"], len(stops)) == ((fired[0], 1) if fired else (None, 0))
        assert all(p["steps"] == run_["stop"]["stopped_at"] for p in stops)
    assert set(LIGHT) <= set(results["reference"]["target"])
    assert results["eval_sizes"]["knowledge:world_facts"] == 6
    written = json.loads((tmp_path / "p.json").read_text())
    assert written["analysis"]["stop_vs_fixed"] and "matched" in written["analysis"]
    assert {f.name for f in files} >= {"p.json", "p.md", "p_fq_vs_utility.png", "p_forget_prob_vs_world_facts.png"}
    assert (tmp_path / "mlflow" / "mlflow.db").exists()


def test_pretrained_sweep_resumes_from_its_run_cache(bench, tmp_path):
    shutil.rmtree(Path(bench.info["cache"]) / "runs", ignore_errors=True)
    first, _, _ = run(smoke_config(bench, tmp_path / "a"), bench)
    assert not first["cached"]
    again, _, _ = run(replace(smoke_config(bench, tmp_path / "b"), budget_minutes=0.0), bench)

    assert again["cached"] == [r["name"] for r in first["runs"]] and not again["skipped"]
    assert [r["points"] for r in again["runs"]] == json.loads(json.dumps([r["points"] for r in first["runs"]]))


@pytest.mark.parametrize("optimizer, momentum", [("sgd", 0.0), ("adamw", 0.0), ("sgd", 0.9)])
def test_update_meter_measures_what_the_optimizer_keeps_of_blurs_direction(bench, optimizer, momentum):
    """benchmarks.optimizers: <d, g_f> = clip x gamma ||g_f||^2 for BLUR's clipped direction (so the
    meter's g_f is the forget gradient); plain SGD's update is d itself, AdamW's and momentum's are not."""
    from benchmarks.optimizers import Job, Optimizer, run_job

    job = Job(Optimizer(optimizer, optimizer, 1e-3 if optimizer == "adamw" else 0.1, momentum), "npo", "blur",
              0.1, 0, (3,))
    run_ = run_job(bench, job)
    for record in run_.diagnostics:
        clip = min(1.0, 1.0 / (record["grad_norm"] + 1e-6))
        assert record["direction_ratio"] == pytest.approx(clip, rel=1e-3)
        if optimizer == "sgd" and momentum == 0:
            assert record["update_ratio"] == pytest.approx(record["direction_ratio"], rel=1e-3)
            assert record["cos_u_d"] == pytest.approx(1.0, abs=1e-4)
            assert record["kept"] == pytest.approx(1.0, abs=1e-3)
    later = run_.diagnostics[1:]
    if optimizer == "adamw" or momentum:
        assert all(r["cos_u_d"] < 0.999 for r in later)
