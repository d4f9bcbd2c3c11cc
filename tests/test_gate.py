"""The promotion gate as a pure function: one behaviour per test, then a property over many draws."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from components.config import GateConfig, load_config
from components.gate import evaluate_gate
from registry_fixtures import GATE_SETTINGS, draw_gate_case, expected_gate_pass, sample_metrics

ROOT = Path(__file__).resolve().parents[1]


def only(**settings) -> GateConfig:
    """A gate with just these settings: every other threshold null (not checked)."""
    return GateConfig(**({setting: None for setting in GATE_SETTINGS} | {"decide": "all"} | settings))


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
    gate = only(**{setting: threshold})
    good = evaluate_gate(metrics_with(passing), gate)
    bad = evaluate_gate(metrics_with(failing), gate)
    assert good.passed and [c.passed for c in good.checks] == [True]
    assert not bad.passed and [c.passed for c in bad.checks] == [False]
    assert good.checks[0].setting == bad.checks[0].setting == f"gate.{setting}"


def test_check_values_are_the_documented_quantities():
    gate = only(min_forget_quality=0.0, max_forget_prob_ratio=1.0, min_utility_ratio=0.0,
                max_abs_privleak=100.0)
    metrics = metrics_with({"forget_quality": 0.3, "forget_prob": 0.2, "model_utility": 0.4, "privleak": -12.5},
                           {"forget_prob": 0.8, "model_utility": 0.5})
    values = {c.metric: (c.op, c.value) for c in evaluate_gate(metrics, gate).checks}
    assert values == {"forget_quality": (">=", 0.3), "forget_prob_ratio": ("<=", 0.25),
                      "utility_ratio": (">=", pytest.approx(0.8)), "abs_privleak": ("<=", 12.5)}


def test_null_thresholds_are_not_checked():
    decision = evaluate_gate(sample_metrics(forget_quality=0.0, forget_prob=0.8), only())
    assert decision.passed
    assert decision.checks == ()
    assert "no gate thresholds are configured" in decision.notes[0]  # said out loud in gate.json


def test_only_configured_thresholds_become_checks():
    decision = evaluate_gate(sample_metrics(), only(max_abs_privleak=50.0))
    assert [c.setting for c in decision.checks] == ["gate.max_abs_privleak"]


def test_with_fail_on_missing_false_a_null_metric_is_skipped_and_recorded_without_failing_the_gate():
    metrics = sample_metrics(oracle=False)  # no oracle: forget_quality and privleak are null
    decision = evaluate_gate(metrics, only(min_forget_quality=0.05, max_abs_privleak=10.0,
                                           max_forget_prob_ratio=0.5, fail_on_missing=False))
    assert decision.passed
    skipped = {c.metric: c for c in decision.skipped}
    assert set(skipped) == {"forget_quality", "abs_privleak"}
    assert all(c.passed is None and c.value is None and "skipped" in c.reason for c in skipped.values())
    assert [c.passed for c in decision.checks if c.metric == "forget_prob_ratio"] == [True]
    assert decision.to_dict()["skipped"][0]["setting"] == "gate.min_forget_quality"


def test_with_fail_on_missing_false_a_nan_metric_is_skipped_like_null():
    decision = evaluate_gate(metrics_with({"forget_quality": math.nan}),
                             only(min_forget_quality=0.05, fail_on_missing=False))
    assert decision.passed and decision.checks[0].passed is None


def test_skipped_checks_do_not_rescue_a_failing_one():
    metrics = metrics_with({"forget_quality": None, "forget_prob": 0.79})
    decision = evaluate_gate(metrics, only(min_forget_quality=0.05, max_forget_prob_ratio=0.5, fail_on_missing=False))
    assert not decision.passed
    assert [c.passed for c in decision.checks] == [None, False]


@pytest.mark.parametrize("value", [None, math.nan, "absent"])
def test_the_gate_fails_closed_by_default_on_a_null_nan_or_absent_metric(value):
    unlearned = {"forget_prob": 0.1} if value == "absent" else {"forget_prob": 0.1, "forget_quality": value}
    decision = evaluate_gate(metrics_with(unlearned), only(min_forget_quality=0.05, max_forget_prob_ratio=0.5))
    assert not decision.passed
    assert [c.passed for c in decision.checks] == [False, True]
    assert "forget_quality cannot be computed" in decision.reasons[0]
    assert "set gate.min_forget_quality: null" in decision.reasons[0]  # how to skip it on purpose


def test_a_candidate_whose_metrics_are_all_nan_fails_the_shipped_params():
    config = load_config(ROOT / "params.yaml")
    nan_model = {key: math.nan for key in ("forget_prob", "forget_quality", "model_utility", "privleak")}
    metrics = {"target": dict(nan_model, earlier={}), "oracle": dict(nan_model), "unlearned": dict(nan_model, earlier={})}
    decision = evaluate_gate(metrics, config.gate)
    assert not decision.passed
    assert {c.metric for c in decision.checks if c.passed is False} >= {
        "utility_ratio", "forget_holdout_ks_p", "forget_holdout_auc_gap"}
    # the oracle's checks are reported beside the verdict: unavailable, not failed
    assert {c.metric: c.passed for c in decision.checks if c.basis == "oracle"} == {
        "forget_quality": None, "abs_privleak": None, "relearn_gap": None}
    assert not evaluate_gate({"target": {}, "unlearned": {}}, config.gate).passed  # nothing measured at all


def test_the_shipped_gate_decides_without_an_oracle_and_reports_the_oracle_verdict_beside_it():
    config = load_config(ROOT / "params.yaml")
    assert config.gate.decide == "oracle_free"
    assert config.gate.min_forget_holdout_ks_p is not None and config.gate.max_forget_holdout_auc_gap is not None
    good = {"forget_prob": 0.1, "model_utility": 0.5, "forget_holdout_ks_p": 0.5, "forget_holdout_auc": 0.5,
            "earlier": {}, "n_forget": 40}
    target = {"forget_prob": 0.9, "model_utility": 0.5, "earlier": {}}
    no_oracle = evaluate_gate({"target": target, "oracle": None, "unlearned": good}, config.gate)
    assert no_oracle.passed and no_oracle.verdict("oracle") is None and no_oracle.agreement is None
    # an oracle that says the model still remembers: the gate still passes, and says the two disagree
    remembered = good | {"forget_quality": 0.001, "privleak": -80.0, "relearn_forget_prob": 0.9}
    with_oracle = evaluate_gate({"target": target, "oracle": {"relearn_forget_prob": 0.1}, "unlearned": remembered},
                                config.gate)
    assert with_oracle.passed and with_oracle.verdict("oracle") is False and with_oracle.agreement is False
    assert any("disagree" in note for note in with_oracle.notes)
    assert with_oracle.to_dict()["oracle_passed"] is False and with_oracle.to_dict()["verdicts_agree"] is False
    # gate.decide: all makes the oracle's checks decide too
    strict = config.gate.model_copy(update={"decide": "all"})
    assert not evaluate_gate({"target": target, "oracle": {"relearn_forget_prob": 0.1}, "unlearned": remembered},
                             strict).passed


def test_relearn_gap_has_nothing_to_check_on_a_one_record_forget_set():
    metrics = {"target": {}, "oracle": {"relearn_forget_prob": None}, "unlearned": {"relearn_forget_prob": None,
                                                                                  "n_forget": 1}}
    decision = evaluate_gate(metrics, only(max_relearn_gap=0.1))
    assert decision.passed and "one record" in decision.checks[0].reason


def test_ratio_over_a_zero_target_is_undefined_when_both_are_zero_and_infinite_otherwise():
    gate = only(max_forget_prob_ratio=0.5)
    both_zero = evaluate_gate(metrics_with({"forget_prob": 0.0}, {"forget_prob": 0.0}), gate)
    grew = evaluate_gate(metrics_with({"forget_prob": 0.1}, {"forget_prob": 0.0}), gate)
    assert not both_zero.passed and both_zero.checks[0].value is None  # undefined: fails closed
    skipping = evaluate_gate(metrics_with({"forget_prob": 0.0}, {"forget_prob": 0.0}),
                             only(max_forget_prob_ratio=0.5, fail_on_missing=False))
    assert skipping.passed and skipping.checks[0].passed is None
    assert not grew.passed and grew.checks[0].value == math.inf
    assert grew.to_dict()["checks"][0]["value"] == "inf"  # JSON has no infinity


def test_privleak_is_checked_in_absolute_value():
    gate = only(max_abs_privleak=20.0)
    assert not evaluate_gate(metrics_with({"privleak": -35.0}), gate).passed
    assert evaluate_gate(metrics_with({"privleak": -15.0}), gate).passed


def test_gate_fails_when_any_one_evaluated_check_fails():
    gate = only(min_forget_quality=0.05, max_forget_prob_ratio=0.5, min_utility_ratio=0.9,
                max_abs_privleak=20.0)
    metrics = sample_metrics(forget_quality=0.5, forget_prob=0.1, model_utility=0.3, privleak=1.0)
    decision = evaluate_gate(metrics, gate)
    assert not decision.passed
    assert [c.metric for c in decision.checks if c.passed is False] == ["utility_ratio"]


def test_failure_reason_names_the_metric_value_threshold_and_setting():
    decision = evaluate_gate(metrics_with({"forget_quality": 0.012}), only(min_forget_quality=0.05))
    assert decision.reasons == ["forget_quality 0.012 < 0.05 (gate.min_forget_quality)"]


def test_decision_dict_has_the_gate_json_shape():
    decision = evaluate_gate(sample_metrics(), only(min_forget_quality=0.05, max_abs_privleak=1.0))
    data = json.loads(json.dumps(decision.to_dict(), allow_nan=False))
    assert {"passed", "checks", "model_name", "version", "alias", "reasons", "skipped"} <= set(data)
    assert isinstance(data["passed"], bool)
    for check in data["checks"]:
        assert {"metric", "op", "threshold", "value", "passed"} <= set(check)
        assert check["op"] in (">=", "<=")


def test_a_non_numeric_metric_is_an_input_error():
    with pytest.raises(ValueError, match=r"metrics\['unlearned'\]\['forget_quality'\] must be a number"):
        evaluate_gate(metrics_with({"forget_quality": "high"}), GateConfig(min_forget_quality=0.05))


# --------------------------------------------------------------------------- earlier requests stay forgotten (issue 13)


def with_earlier(unlearned: dict, target: dict) -> dict:
    """Metrics whose earlier-request sections hold these forget probabilities, by request id."""
    return {"target": {"forget_prob": 0.8, "earlier": {rid: {"forget_prob": p} for rid, p in target.items()}},
            "oracle": {}, "unlearned": {"forget_prob": 0.1,
                                        "earlier": {rid: {"forget_prob": p} for rid, p in unlearned.items()}}}


def test_the_default_gate_fails_a_candidate_that_remembers_an_earlier_request_again():
    metrics = with_earlier({"req-a": 0.05, "req-b": 0.6}, {"req-a": 0.8, "req-b": 0.8})
    decision = evaluate_gate(metrics, GateConfig())  # on by default
    assert not decision.passed
    [check] = decision.checks
    assert (check.metric, check.op, check.value) == ("earlier_forget_prob_ratio", "<=", pytest.approx(0.75))
    assert decision.reasons == ["earlier_forget_prob_ratio 0.75 > 0.5 (gate.max_earlier_forget_prob_ratio); "
                                "worst: earlier request req-b"]
    assert evaluate_gate(with_earlier({"req-a": 0.05, "req-b": 0.4}, {"req-a": 0.8, "req-b": 0.8}),
                         GateConfig()).passed


def test_with_no_earlier_requests_there_is_nothing_to_recheck_and_the_check_passes():
    decision = evaluate_gate(with_earlier({}, {}), only(max_earlier_forget_prob_ratio=0.5))
    assert decision.passed and decision.checks[0].passed is True and decision.checks[0].value is None
    assert "no earlier requests" in decision.checks[0].reason


@pytest.mark.parametrize("case", ["no earlier section", "unlearned value NaN", "target value missing"])
def test_an_earlier_request_that_cannot_be_measured_fails_closed(case):
    metrics = with_earlier({"req-a": 0.05}, {"req-a": 0.8})
    if case == "no earlier section":
        del metrics["unlearned"]["earlier"]
    elif case == "unlearned value NaN":
        metrics["unlearned"]["earlier"]["req-a"]["forget_prob"] = math.nan
    else:
        del metrics["target"]["earlier"]["req-a"]
    decision = evaluate_gate(metrics, only(max_earlier_forget_prob_ratio=0.5))
    assert not decision.passed and decision.checks[0].value is None
    assert "cannot be computed" in decision.reasons[0]


# --------------------------------------------------------------------------- no oracle: forget vs holdout (issue 11)


def test_forget_holdout_ks_p_is_a_lower_bound():
    gate = only(min_forget_holdout_ks_p=0.05)
    assert evaluate_gate(metrics_with({"forget_holdout_ks_p": 0.05}), gate).passed
    failed = evaluate_gate(metrics_with({"forget_holdout_ks_p": 0.01}), gate)
    assert failed.reasons == ["forget_holdout_ks_p 0.01 < 0.05 (gate.min_forget_holdout_ks_p)"]


@pytest.mark.parametrize("auc, passed", [(0.5, True), (0.6, True), (0.4, True), (0.61, False), (0.39, False),
                                         (0.95, False), (0.02, False)])
def test_forget_holdout_auc_gap_fails_under_and_over_forgetting_alike(auc, passed):
    decision = evaluate_gate(metrics_with({"forget_holdout_auc": auc}), only(max_forget_holdout_auc_gap=0.1))
    assert decision.passed is passed
    assert decision.checks[0].value == pytest.approx(abs(auc - 0.5))
    if not passed:
        side = "not forgotten" if auc > 0.5 else "over-forgotten"
        assert side in decision.reasons[0] and "gate.max_forget_holdout_auc_gap" in decision.reasons[0]


def test_oracle_free_checks_need_their_metrics_like_every_other_check():
    gate = only(min_forget_holdout_ks_p=0.05, max_forget_holdout_auc_gap=0.1)
    decision = evaluate_gate(metrics_with({"forget_prob": 0.1}), gate)
    assert [c.passed for c in decision.checks] == [False, False]


def test_oracle_free_gate_settings_are_bounded():
    with pytest.raises(ValueError):
        GateConfig(max_forget_holdout_auc_gap=0.6)  # |AUC - 0.5| is at most 0.5
    with pytest.raises(ValueError):
        GateConfig(min_forget_holdout_ks_p=1.5)


# --------------------------------------------------------------------------- relearning attack (issue 12)


def test_relearn_gap_is_the_unlearned_minus_the_oracle_probability_after_the_attack():
    gate = only(max_relearn_gap=0.25)  # values exact in binary: the bound itself passes
    metrics = {"target": {}, "oracle": {"relearn_forget_prob": 0.25}, "unlearned": {"relearn_forget_prob": 0.5}}
    passed = evaluate_gate(metrics, gate)
    assert passed.passed and passed.checks[0].value == 0.25
    metrics["unlearned"]["relearn_forget_prob"] = 0.625
    failed = evaluate_gate(metrics, gate)
    assert not failed.passed and failed.reasons[0].startswith("relearn_gap 0.375 > 0.25 (gate.max_relearn_gap)")


@pytest.mark.parametrize("oracle, why", [({}, "no oracle model"), ({"relearn_forget_prob": None}, "no oracle model")])
def test_relearn_gap_without_the_oracles_attack_fails_closed(oracle, why):
    metrics = {"target": {}, "oracle": oracle, "unlearned": {"relearn_forget_prob": 0.2}}
    decision = evaluate_gate(metrics, only(max_relearn_gap=0.1))
    assert not decision.passed and why in decision.reasons[0]


# --------------------------------------------------------------------------- property (issue 7 item 4)

def test_gate_passes_iff_every_configured_check_passes_over_random_draws():
    rng = random.Random(20261128)
    outcomes = set()
    for _ in range(3000):
        metrics, thresholds = draw_gate_case(rng)
        decision = evaluate_gate(metrics, GateConfig(**thresholds))
        expected = expected_gate_pass(metrics, thresholds)
        assert decision.passed == expected, (metrics, thresholds, decision)
        assert len(decision.checks) == sum(thresholds[s] is not None for s in GATE_SETTINGS)
        outcomes.add(expected)
    assert outcomes == {True, False}


# --------------------------------------------------------------------------- the level an earlier request was erased to (issue 21)


def with_levels(now: dict, erased: dict, target: float = 0.9) -> dict:
    """Earlier requests' forget probabilities now, and the ones their certificates recorded."""
    metrics = with_earlier(now, {rid: target for rid in now})
    for rid, level in erased.items():
        metrics["unlearned"]["earlier"][rid]["erased_forget_prob"] = level
    return metrics


def test_an_earlier_request_back_at_nine_times_its_erased_level_fails_though_half_the_target_passes():
    metrics = with_levels({"req-a": 0.45}, {"req-a": 0.05})
    gate = only(max_earlier_forget_prob_ratio=0.5, max_earlier_regain_ratio=2.0)
    decision = evaluate_gate(metrics, gate)
    checks = {check.metric: check for check in decision.checks}
    assert checks["earlier_forget_prob_ratio"].passed and not checks["earlier_regain_ratio"].passed
    assert not decision.passed and checks["earlier_regain_ratio"].value == pytest.approx(9.0)


def test_an_earlier_request_near_its_erased_level_passes_the_regain_bound():
    assert evaluate_gate(with_levels({"req-a": 0.06}, {"req-a": 0.05}), only(max_earlier_regain_ratio=2.0)).passed


def test_an_earlier_request_without_a_recorded_level_fails_the_regain_bound_closed():
    decision = evaluate_gate(with_levels({"req-a": 0.06}, {}), only(max_earlier_regain_ratio=2.0))
    assert not decision.passed and "req-a was erased to is unknown" in decision.checks[0].reason
