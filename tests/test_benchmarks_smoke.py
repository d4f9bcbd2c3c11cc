"""Smoke tests of the benchmarks' cores on minimal configurations (the numbers mean nothing here).

The benchmarks themselves (``python -m benchmarks.<name>``) are not part of the test suite;
these check that each one's machinery runs end to end and that its measurements measure
what they claim (the naive BLUR baseline computes BLUR's direction; the memory meter sees
BLUR's one extra gradient buffer; frontiers and matched comparisons pick the right rows).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks.common import CandidateEvaluator, trained_bench
from benchmarks.pareto import frontier, matched_comparison
from components.config import Config
from components.data.demo_world import generate_world

TINY = {
    "model.tiny.hidden_size": 32, "model.tiny.intermediate_size": 64, "model.tiny.num_layers": 1,
    "model.tiny.num_heads": 2, "model.max_length": 64, "model.tokenizer.vocab_size": 300,
    "finetune.max_epochs": 2, "finetune.check_every": 1, "eval.max_new_tokens": 4,
}


@pytest.fixture(scope="module")
def tiny_bench(tmp_path_factory, one_thread):
    world, holdout = generate_world(seed=3, n_subjects=4, n_holdout_subjects=1, facts_per_subject=8)
    first = world[0].subject
    forget = [r for r in world if r.subject == first]
    retain = [r for r in world if r.subject != first]
    return trained_bench(Config().with_overrides(TINY), forget, retain, holdout, tmp_path_factory.mktemp("cache"))


def test_frontier_keeps_only_non_dominated_configurations():
    rows = [{"x": 0.1, "y": 0.9}, {"x": 0.5, "y": 0.8}, {"x": 0.4, "y": 0.7}, {"x": 0.9, "y": 0.5}]
    assert [(r["x"], r["y"]) for r in frontier(rows, "x", "y")] == [(0.1, 0.9), (0.5, 0.8), (0.9, 0.5)]
    assert [(r["x"], r["y"]) for r in frontier(rows, "x", "y", maximize_x=False)] == [(0.1, 0.9)]


def test_matched_comparison_compares_best_utility_at_each_forget_level():
    ours = [{"fq": 0.1, "mu": 0.6}, {"fq": 0.5, "mu": 0.5}]
    theirs = [{"fq": 0.1, "mu": 0.55}, {"fq": 0.8, "mu": 0.4}]
    rows = {r["level"]: r for r in matched_comparison(ours, theirs, x="fq", y="mu")}
    assert rows[0.1]["ours_y"] == 0.6 and rows[0.1]["theirs_y"] == 0.55 and rows[0.1]["ours_wins"]
    assert rows[0.5]["ours_y"] == 0.5 and rows[0.5]["theirs_y"] == 0.4
    assert rows[0.8]["ours_y"] is None and not rows[0.8]["ours_wins"]  # only theirs forgets that much


def test_quality_sweep_runs_evaluates_snapshots_and_writes_its_report(tiny_bench, tmp_path):
    from benchmarks.quality import QualityConfig, analyse, write_report
    from benchmarks.sweep import Sweep, run_sweep

    sweep = Sweep("npo", blur_gammas=(0.1,), ws_alphas=(10.0,), lrs=(1e-3,), seeds=(0,), eval_steps=(1, 2))
    config = QualityConfig(sweeps=(sweep,), out_dir=tmp_path, stem="q", mlflow=False)
    results = run_sweep(tiny_bench, config)
    results["wall_seconds"] = 1.0
    assert {(p["combiner"], p["steps"]) for p in results["points"]} == {
        ("blur", 1), ("blur", 2), ("weighted_sum", 1), ("weighted_sum", 2)}
    assert all(p["forget_quality"] is not None and p["mean_cos"] is not None for p in results["points"])
    files = write_report(results, analyse(results, config), config)
    assert {f.name for f in files} == {"q.json", "q.md", "q_fq_vs_utility.png", "q_forget_vs_retain_prob.png"}
    assert "## Matched forgetting" in (tmp_path / "q.md").read_text()
    assert json.loads((tmp_path / "q.json").read_text())["analysis"]["targets"]["levels_compared"] >= 1


def test_snapshot_after_k_steps_is_the_model_of_a_k_step_run(tiny_bench):
    from benchmarks.common import method_config, unlearn_with_snapshots

    method = method_config(tiny_bench.config, lr=1e-2)
    long = unlearn_with_snapshots(tiny_bench, method, seed=0, at_steps=(1, 3))
    short = unlearn_with_snapshots(tiny_bench, method, seed=0, at_steps=(1,))
    for key, value in short.snapshots[1].items():
        assert torch.equal(value, long.snapshots[1][key]), key


def test_candidate_evaluator_scores_a_copy_of_the_oracle_as_the_oracle(tiny_bench, tmp_path):
    evaluator = CandidateEvaluator(tiny_bench, cache_dir=tmp_path)
    metrics = evaluator(tiny_bench.oracle.model)
    assert metrics["forget_quality"] == 1.0 and metrics["privleak"] == 0.0
    assert metrics["forget_prob"] == pytest.approx(evaluator.reference()["oracle"]["forget_prob"])


def test_a_second_evaluator_takes_the_target_and_oracle_from_the_cache(tiny_bench, tmp_path):
    first = CandidateEvaluator(tiny_bench, cache_dir=tmp_path)
    reference = first.reference()
    assert first.reused == {"target": 0, "oracle": 0}
    second = CandidateEvaluator(tiny_bench, cache_dir=tmp_path)
    assert second.reference() == reference
    assert second.reused["target"] > 0 and second.reused["oracle"] > second.reused["target"]  # + the attack


def test_naive_blur_computes_the_engines_direction_and_the_meter_sees_one_extra_buffer(tiny_bench):
    from benchmarks.workload import ModelSize, StepCostConfig, build_workload, check_naive_matches_blur, peak_memory

    config = StepCostConfig(batch_size=4, max_length=64)
    work = build_workload(ModelSize("tiny", 32, 64, 1, 2), config, records=(tiny_bench.forget, tiny_bench.retain),
                          tokenizer=tiny_bench.tokenizer)
    assert check_naive_matches_blur(work, config) < 1e-6
    peaks = peak_memory(work, config, ("blur", "weighted_sum", "naive_blur", "fused_weighted"))
    extra = (peaks["blur"] - peaks["fused_weighted"]) / work.param_bytes
    assert 0.99 <= extra <= 1.05  # the engine's one stash of gradient size
    assert abs(peaks["blur"] - peaks["weighted_sum"]) < 0.01 * work.param_bytes  # same loop, same stash


def test_muse_subset_is_disjoint_and_carries_text_and_questions():
    from benchmarks.muse_subset import MuseSubset, muse_subset

    sample = Path(__file__).parent / "fixtures" / "muse_news"
    forget, retain, holdout = muse_subset(MuseSubset(data=sample, n_forget_articles=3, n_retain_articles=3,
                                                     n_holdout_articles=3))
    ids = [{r.record_id for r in split} for split in (forget, retain, holdout)]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert {r.kind for r in forget} == {"text", "qa"} and {r.kind for r in holdout} == {"text", "qa"}


def test_snapshots_follow_the_whole_trajectory_when_the_shipped_config_stops_on_the_holdout(tiny_bench):
    """params.yaml stops on the holdout by default; a sweep's fixed-length trajectory must not (it has no
    holdout to probe, and a stop would end it before its last snapshot)."""
    from benchmarks.common import unlearn_with_snapshots

    method = tiny_bench.config.with_overrides({"unlearn.stop.rule": "holdout", "unlearn.lr": 1e-2}).unlearn
    run = unlearn_with_snapshots(tiny_bench, method, seed=0, at_steps=(1, 3))
    assert run.error is None and sorted(run.snapshots) == [1, 3]
