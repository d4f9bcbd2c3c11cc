"""The promotion gate as a pure function: one behaviour per test, then a property over many draws."""

from __future__ import annotations

import json
import math
import random

import pytest

from components.config import GateConfig
from components.registry.gate import evaluate_gate
from registry_fixtures import draw_gate_case, expected_gate_pass, sample_metrics


def metrics_with(unlearned: dict, target: dict | None = None) -> dict:
    return {"target": target or {"forget_prob": 0.8, "model_utility": 0.5},
            "oracle": {}, "unlearned": unlearned}


# setting, threshold, unlearned values that pass / fail, the target values
THRESHOLD_CASES = [
    ("min_forget_quality", 0.05, {"forget_quality": 0.05}, {"forget_quality": 0.049}),
    ("max_forget_prob_ratio", 0.5, {"forget_prob": 0.4}, {"forget_prob": 0.41}),  # target 0.8
    ("min_utility_ratio", 0.9, {"model_utility": 0.45}, {"model_utility": 0.44}),  # target 0.5
    ("max_abs_privleak", 10.0, {"privleak": -10.0}, {"privleak": 10.5}),
]


@pytest.mark.parametrize("setting, threshold, passing, failing", THRESHOLD_CASES,
                         ids=[case[0] for case in THRESHOLD_CASES])
def test_each_threshold_passes_at_its_bound_and_fails_beyond_it(setting, threshold, passing, failing):
    gate = GateConfig(**{setting: threshold})
    good = evaluate_gate(metrics_with(passing), gate)
    bad = evaluate_gate(metrics_with(failing), gate)
    assert good.passed and [c.passed for c in good.checks] == [True]
    assert not bad.passed and [c.passed for c in bad.checks] == [False]
    assert good.checks[0].setting == bad.checks[0].setting == f"gate.{setting}"


def test_check_values_are_the_documented_quantities():
    gate = GateConfig(min_forget_quality=0.0, max_forget_prob_ratio=1.0, min_utility_ratio=0.0,
                      max_abs_privleak=100.0)
    metrics = metrics_with({"forget_quality": 0.3, "forget_prob": 0.2, "model_utility": 0.4, "privleak": -12.5},
                           {"forget_prob": 0.8, "model_utility": 0.5})
    values = {c.metric: (c.op, c.value) for c in evaluate_gate(metrics, gate).checks}
    assert values == {"forget_quality": (">=", 0.3), "forget_prob_ratio": ("<=", 0.25),
                      "utility_ratio": (">=", pytest.approx(0.8)), "abs_privleak": ("<=", 12.5)}


def test_null_thresholds_are_not_checked():
    decision = evaluate_gate(sample_metrics(forget_quality=0.0, forget_prob=0.8), GateConfig())
    assert decision.passed
    assert decision.checks == ()
    assert "no gate thresholds are configured" in decision.notes[0]  # said out loud in gate.json


def test_only_configured_thresholds_become_checks():
    decision = evaluate_gate(sample_metrics(), GateConfig(max_abs_privleak=50.0))
    assert [c.setting for c in decision.checks] == ["gate.max_abs_privleak"]


def test_null_metric_is_skipped_and_recorded_without_failing_the_gate():
    metrics = sample_metrics(oracle=False)  # no oracle: forget_quality and privleak are null
    decision = evaluate_gate(metrics, GateConfig(min_forget_quality=0.05, max_abs_privleak=10.0,
                                                 max_forget_prob_ratio=0.5))
    assert decision.passed
    skipped = {c.metric: c for c in decision.skipped}
    assert set(skipped) == {"forget_quality", "abs_privleak"}
    assert all(c.passed is None and c.value is None and "skipped" in c.reason for c in skipped.values())
    assert [c.passed for c in decision.checks if c.metric == "forget_prob_ratio"] == [True]
    assert decision.to_dict()["skipped"][0]["setting"] == "gate.min_forget_quality"


def test_nan_metric_is_skipped_like_null():
    decision = evaluate_gate(metrics_with({"forget_quality": math.nan}), GateConfig(min_forget_quality=0.05))
    assert decision.passed and decision.checks[0].passed is None


def test_skipped_checks_do_not_rescue_a_failing_one():
    metrics = metrics_with({"forget_quality": None, "forget_prob": 0.79})
    decision = evaluate_gate(metrics, GateConfig(min_forget_quality=0.05, max_forget_prob_ratio=0.5))
    assert not decision.passed
    assert [c.passed for c in decision.checks] == [None, False]


def test_fail_on_missing_turns_a_skipped_check_into_a_failure():
    gate = GateConfig(min_forget_quality=0.05, fail_on_missing=True)
    decision = evaluate_gate(metrics_with({"forget_quality": None}), gate)
    assert not decision.passed
    assert decision.checks[0].passed is False
    assert "fail_on_missing" in decision.reasons[0]


def test_ratio_over_a_zero_target_is_skipped_when_both_are_zero_and_infinite_otherwise():
    gate = GateConfig(max_forget_prob_ratio=0.5)
    both_zero = evaluate_gate(metrics_with({"forget_prob": 0.0}, {"forget_prob": 0.0}), gate)
    grew = evaluate_gate(metrics_with({"forget_prob": 0.1}, {"forget_prob": 0.0}), gate)
    assert both_zero.passed and both_zero.checks[0].passed is None
    assert not grew.passed and grew.checks[0].value == math.inf
    assert grew.to_dict()["checks"][0]["value"] == "inf"  # JSON has no infinity


def test_privleak_is_checked_in_absolute_value():
    gate = GateConfig(max_abs_privleak=20.0)
    assert not evaluate_gate(metrics_with({"privleak": -35.0}), gate).passed
    assert evaluate_gate(metrics_with({"privleak": -15.0}), gate).passed


def test_gate_fails_when_any_one_evaluated_check_fails():
    gate = GateConfig(min_forget_quality=0.05, max_forget_prob_ratio=0.5, min_utility_ratio=0.9,
                      max_abs_privleak=20.0)
    metrics = sample_metrics(forget_quality=0.5, forget_prob=0.1, model_utility=0.3, privleak=1.0)
    decision = evaluate_gate(metrics, gate)
    assert not decision.passed
    assert [c.metric for c in decision.checks if c.passed is False] == ["utility_ratio"]


def test_failure_reason_names_the_metric_value_threshold_and_setting():
    decision = evaluate_gate(metrics_with({"forget_quality": 0.012}), GateConfig(min_forget_quality=0.05))
    assert decision.reasons == ["forget_quality 0.012 < 0.05 (gate.min_forget_quality)"]


def test_decision_dict_has_the_gate_json_shape():
    decision = evaluate_gate(sample_metrics(), GateConfig(min_forget_quality=0.05, max_abs_privleak=1.0))
    data = json.loads(json.dumps(decision.to_dict(), allow_nan=False))
    assert {"passed", "checks", "model_name", "version", "alias", "reasons", "skipped"} <= set(data)
    assert isinstance(data["passed"], bool)
    for check in data["checks"]:
        assert {"metric", "op", "threshold", "value", "passed"} <= set(check)
        assert check["op"] in (">=", "<=")


def test_a_non_numeric_metric_is_an_input_error():
    with pytest.raises(ValueError, match=r"metrics\['unlearned'\]\['forget_quality'\] must be a number"):
        evaluate_gate(metrics_with({"forget_quality": "high"}), GateConfig(min_forget_quality=0.05))


# --------------------------------------------------------------------------- property (issue 7 item 4)

def test_gate_passes_iff_every_configured_check_passes_over_random_draws():
    rng = random.Random(20261128)
    outcomes = set()
    for _ in range(3000):
        metrics, thresholds = draw_gate_case(rng)
        decision = evaluate_gate(metrics, GateConfig(**thresholds))
        expected = expected_gate_pass(metrics, thresholds)
        assert decision.passed == expected, (metrics, thresholds, decision)
        assert len(decision.checks) == sum(v is not None for v in thresholds.values())
        outcomes.add(expected)
    assert outcomes == {True, False}
