"""unlearn.stop: the holdout rule ends a run once the forget set looks like records never seen."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from components.config import UnlearnConfig
from components.unlearning import RunOutputs, run_unlearning

# Gradient ascent at a high rate: the tiny model's forget NLL climbs to the holdout's in a few steps.
FAST = dict(forget_loss="ga", combiner="blur", gamma=1.0, lr=1e-3, batch_size=8, checkpoint_every=0)
CAP = 200


pytestmark = pytest.mark.usefixtures("one_thread")  # every test here runs on one torch thread


def unlearn(setup, config: UnlearnConfig, *, holdout=None, **outputs):
    model = copy.deepcopy(setup.target)
    return run_unlearning(model, setup.tokenizer, setup.forget, setup.retain, config,
                          max_length=setup.config.model.max_length, seed=0,
                          outputs=RunOutputs(show_progress=False, **outputs),
                          holdout=setup.holdout if holdout is None else holdout)


def holdout_rule(**stop) -> UnlearnConfig:
    """The earlier rules (KS p >= 0.5, or the mean crossing) unless ``criterion`` is given."""
    return UnlearnConfig(**FAST, steps=CAP, stop={"rule": "holdout", "every": 2, "probe": 16,
                                                  "criterion": "ks_or_mean", "min_ks_p": 0.5} | stop)


# The shipped method: forget loss `match` (each record's NLL raised to its holdout quantile) under BLUR,
# stopped by the `landed` criterion.
MATCH = dict(FAST, forget_loss="match", gamma=0.1, lr=1e-3)


def landed_rule(**stop) -> UnlearnConfig:
    return UnlearnConfig(**MATCH, steps=CAP, stop={"rule": "holdout", "every": 2, "criterion": "landed"} | stop)


def test_landed_rule_stops_once_the_forget_set_stays_like_the_holdout(tiny_setup):
    result = unlearn(tiny_setup, landed_rule())
    stop = result.summary()["stop"]
    assert result.steps < CAP and stop["reason"].startswith("landed")
    curve = stop["curve"]
    assert abs(curve[0]["probe_auc"] - 0.5) > 0.05  # remembered at first: the rule waited
    for reading in curve[-2:]:  # confirmed: the last two probes both landed
        assert abs(reading["probe_auc"] - 0.5) <= 0.05 and reading["probe_ks_p"] >= 0.2


def test_match_stops_pushing_a_record_at_its_target():
    from components.unlearning.losses import LossContext, holdout_match

    class Fixed(torch.nn.Module):  # logits that give every target token probability exp(-nll)
        def __init__(self, nll):
            super().__init__()
            self.nll = torch.nn.Parameter(torch.tensor(nll))

        def forward(self, input_ids, attention_mask):
            logits = torch.zeros(*input_ids.shape, 2)
            p = torch.exp(-self.nll).clamp(1e-6, 1 - 1e-6)
            logits[..., 1] = torch.log(p / (1 - p))[:, None]
            return type("Out", (), {"logits": logits})()

    batch = {"input_ids": torch.ones(2, 3, dtype=torch.long), "attention_mask": torch.ones(2, 3, dtype=torch.long),
             "labels": torch.tensor([[-100, 1, 1], [-100, 1, 1]]), "target_nll": torch.tensor([1.0, 0.2])}
    model = Fixed([0.5, 0.5])
    loss = holdout_match(model, batch, LossContext(UnlearnConfig()))
    assert loss[0].item() == pytest.approx(0.5, abs=1e-4) and loss[1].item() == 0.0  # the second is past its target
    loss.sum().backward()
    assert model.nll.grad[0] < 0 and model.nll.grad[1] == 0  # descending the loss raises only the first NLL


def test_mink_nll_is_the_mean_of_each_examples_least_likely_tokens_and_its_gradient_reaches_only_them():
    from components.modeling.scoring import TokenScores

    logps = torch.tensor([[-0.1, -2.0, -0.5, -3.0, 0.0], [-1.0, -0.2, 0.0, 0.0, 0.0]], requires_grad=True)
    mask = torch.tensor([[True, True, True, True, False], [True, True, False, False, False]])
    scores = TokenScores(token_logps=logps * mask, mask=mask, logits=torch.zeros(2, 5, 3))
    got = scores.mink_nll(0.4)  # ceil(0.4 * 4) = 2 of the first example's tokens, ceil(0.4 * 2) = 1 of the second's
    torch.testing.assert_close(got, torch.tensor([2.5, 1.0]))
    assert scores.record_nll(None).tolist() == pytest.approx(scores.mean_nll.tolist())
    got.sum().backward()
    assert logps.grad[0].tolist() == pytest.approx([0.0, -0.5, 0.0, -0.5, 0.0])
    assert logps.grad[1].tolist() == pytest.approx([-1.0, 0.0, 0.0, 0.0, 0.0])


def test_a_mink_run_probes_and_matches_on_the_least_likely_tokens_and_stops_once_reached(tiny_setup):
    result = unlearn(tiny_setup, landed_rule(statistic="mink", criterion="reached"))
    stop = result.summary()["stop"]
    assert result.steps < CAP and stop["reason"].startswith("reached")
    for reading in stop["curve"][-2:]:  # no more familiar than the holdout at both of the last two probes
        assert reading["probe_auc"] <= 0.55 and reading["probe_ks_p"] >= 0.2
    mean = unlearn(tiny_setup, landed_rule())
    assert stop["curve"][0]["probe_forget_nll"] > mean.summary()["stop"]["curve"][0]["probe_forget_nll"]


def test_reached_counts_a_forget_set_past_the_holdout_and_landed_does_not():
    from components.config import StopConfig
    from components.unlearning.stopping import HoldoutStopper

    def verdicts(criterion, overshoot="restore"):
        stopper = HoldoutStopper(None, [], [], 0, StopConfig(rule="holdout", criterion=criterion, confirm=2,
                                                              overshoot=overshoot))
        stopper.nearest = {"step": 2, "probe_auc": 0.7, "probe_ks_p": 0.01}
        return [stopper._verdict(ks_p=0.5, auc=auc, forget_mean=0.0, holdout_mean=0.0) for auc in (0.7, 0.4, 0.38)]

    assert verdicts("landed", "continue") == [None, None, None]  # jumped past the band: landed waits for ever
    landed = verdicts("landed")  # ... unless it gives the nearest probe back once the forget set stays past
    assert landed[:2] == [None, None] and landed[2].startswith("overshot") and "step 2" in landed[2]
    reached = verdicts("reached")
    assert reached[:2] == [None, None] and reached[2].startswith("reached")


def test_matched_targets_are_the_holdout_quantiles_at_each_records_rank():
    from components.unlearning.stopping import matched_targets

    forget = torch.tensor([0.3, 0.1, 0.2, 0.4])
    holdout = torch.tensor([4.0, 1.0, 3.0, 2.0])
    targets = matched_targets(forget, holdout)
    expected = torch.quantile(holdout.double(), torch.tensor([2.5, 0.5, 1.5, 3.5], dtype=torch.float64) / 4)
    torch.testing.assert_close(targets, expected.float())
    assert torch.equal(torch.argsort(targets), torch.argsort(forget))  # the least familiar gets the highest target


def test_a_landed_run_is_the_fixed_run_of_that_many_steps(tiny_setup):
    """The probe refreshes match's targets whether or not it may stop the run: stopping at step s gives
    the weights of an s-step run with the same probes."""
    stopped = unlearn(tiny_setup, landed_rule())
    fixed = unlearn(tiny_setup, UnlearnConfig(**MATCH, steps=stopped.steps, stop={"rule": "none", "every": 2}))
    for (name, a), (_, b) in zip(stopped.model.named_parameters(), fixed.model.named_parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_match_without_holdout_records_says_what_to_do(tiny_setup):
    with pytest.raises(ValueError, match="forget_loss is match"):
        unlearn(tiny_setup, UnlearnConfig(**MATCH, steps=4), holdout=[])


def test_holdout_rule_stops_before_the_cap_when_forgetting_reaches_the_holdout(tiny_setup, tmp_path):
    log_path = tmp_path / "unlearn_log.jsonl"
    result = unlearn(tiny_setup, holdout_rule(), log_path=log_path)

    assert result.steps < CAP
    assert len(result.diagnostics) == result.steps
    stop = result.summary()["stop"]
    assert stop["stopped_at"] == result.steps and stop["reason"].split(":")[0] in ("ks", "mean")
    last = stop["curve"][-1]
    assert last["step"] == result.steps
    assert last["probe_ks_p"] >= 0.5 or last["probe_forget_nll"] >= last["probe_holdout_nll"]
    first = stop["curve"][0]  # at the first probe the forget set was still remembered: the rule waited
    assert len(stop["curve"]) >= 2 and first["probe_stop"] == 0.0
    assert first["probe_forget_nll"] < first["probe_holdout_nll"] and first["probe_ks_p"] < 0.5
    # the probe's curve is in the step log, on the probed steps only
    logged = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert [r["step"] for r in logged if "probe_ks_p" in r] == [r["step"] for r in stop["curve"]]
    assert all("probe_ks_p" not in r for r in logged if r["step"] % 2)


def test_rule_none_never_stops_early_and_logs_no_probe(tiny_setup):
    result = unlearn(tiny_setup, UnlearnConfig(**FAST, steps=12))

    assert result.steps == 12 and len(result.diagnostics) == 12
    assert "stop" not in result.summary()
    assert all(not any(k.startswith("probe_") for k in record) for record in result.diagnostics)


def test_a_stopped_run_is_the_fixed_run_of_that_many_steps(tiny_setup):
    """The probe only reads the model: stopping at step s gives the weights of an s-step run."""
    stopped = unlearn(tiny_setup, holdout_rule())
    fixed = unlearn(tiny_setup, UnlearnConfig(**FAST, steps=stopped.steps))

    for (name, a), (_, b) in zip(stopped.model.named_parameters(), fixed.model.named_parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_the_cap_ends_a_run_the_rule_never_stops(tiny_setup):
    result = unlearn(tiny_setup, holdout_rule(every=5, max_steps=3))

    assert result.steps == 3
    assert result.summary()["stop"]["stopped_at"] is None
    assert result.summary()["stop"]["reason"].startswith("cap")


def test_holdout_rule_without_holdout_records_says_what_to_do(tiny_setup):
    with pytest.raises(ValueError, match="n_holdout_subjects"):
        unlearn(tiny_setup, holdout_rule(), holdout=[])


def test_ks_criterion_ignores_the_mean_crossing(tiny_setup):
    """criterion ks: a probe whose forget mean passed the holdout's but whose KS p-value is low does not stop."""
    both = unlearn(tiny_setup, holdout_rule(every=1, min_ks_p=0.999))
    ks_only = unlearn(tiny_setup, holdout_rule(every=1, min_ks_p=0.999, criterion="ks", max_steps=both.steps + 3))

    assert both.summary()["stop"]["reason"].startswith("mean")
    assert ks_only.steps > both.steps
    crossed = [r for r in ks_only.summary()["stop"]["curve"] if r["probe_forget_nll"] >= r["probe_holdout_nll"]]
    assert crossed and all(r["probe_stop"] == 0.0 for r in crossed if r["probe_ks_p"] < 0.999)


# ---- unlearn.stop.overshoot: a run that does not land returns the probe nearest the holdout ----

def overshooting(**stop) -> UnlearnConfig:
    """Gradient ascent (no floor) under `landed` with a KS bar it cannot meet: it crosses the holdout and goes on."""
    return UnlearnConfig(**FAST, steps=CAP, stop={"rule": "holdout", "every": 1, "probe": 16, "criterion": "landed",
                                                  "min_ks_p": 0.999} | stop)


def fixed_run(setup, steps: int):
    return unlearn(setup, UnlearnConfig(**FAST, steps=steps))


def assert_same_weights(a, b):
    for (name, x), (_, y) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(x, y, rtol=0, atol=0, msg=name)


def test_a_run_past_the_holdout_stops_and_returns_the_weights_of_the_probe_nearest_it(tiny_setup):
    from components.unlearning.stopping import nearness

    result = unlearn(tiny_setup, overshooting())
    stop = result.summary()["stop"]
    curve, config = stop["curve"], overshooting().stop

    assert stop["reason"].startswith("overshot") and "restored the weights of step" in stop["reason"]
    assert stop["ended_at"] == curve[-1]["step"] < CAP
    assert all(r["probe_auc"] < 0.45 for r in curve[-2:])  # past the holdout at two probes in a row
    nearest = max(curve, key=lambda r: nearness(r, config))
    assert stop["stopped_at"] == result.steps == nearest["step"] < stop["ended_at"]
    assert [r["step"] for r in curve if r["probe_nearest"]][-1] == nearest["step"]
    assert len(result.diagnostics) == stop["ended_at"]  # the log keeps every step trained
    assert_same_weights(result.model, fixed_run(tiny_setup, nearest["step"]).model)


def test_at_the_cap_without_landing_the_nearest_probe_is_the_result(tiny_setup):
    overshot = unlearn(tiny_setup, overshooting())
    cap = overshot.summary()["stop"]["ended_at"] + 3
    result = unlearn(tiny_setup, overshooting(confirm=1000, max_steps=cap))
    stop = result.summary()["stop"]

    assert stop["ended_at"] == cap and stop["reason"].startswith("cap") and "restored" in stop["reason"]
    assert stop["stopped_at"] == result.steps == overshot.steps
    assert_same_weights(result.model, overshot.model)


def test_overshoot_continue_keeps_the_last_weights(tiny_setup):
    overshot = unlearn(tiny_setup, overshooting())
    cap = overshot.summary()["stop"]["ended_at"] + 3
    result = unlearn(tiny_setup, overshooting(overshoot="continue", max_steps=cap))
    stop = result.summary()["stop"]

    assert stop["stopped_at"] is None and stop["reason"].startswith("cap: the step cap came first")
    assert result.steps == cap and all("probe_nearest" not in r for r in stop["curve"])
    assert_same_weights(result.model, fixed_run(tiny_setup, cap).model)


def test_a_resumed_run_restores_the_same_probe_as_an_uninterrupted_one(tiny_setup, tmp_path):
    whole = unlearn(tiny_setup, overshooting())
    nearest, ended = whole.steps, whole.summary()["stop"]["ended_at"]
    crash_at = ended  # at the probe that ends the run: the checkpoint before it holds the kept weights

    def crash(record):
        if record["step"] == crash_at:
            raise KeyboardInterrupt

    config = overshooting().model_copy(update={"checkpoint_every": 1})
    with pytest.raises(KeyboardInterrupt):
        unlearn(tiny_setup, config, checkpoint_dir=tmp_path, on_step=crash)
    resumed = unlearn(tiny_setup, config, checkpoint_dir=tmp_path)

    assert nearest < crash_at - 1 and resumed.resumed_from == crash_at - 1  # the kept weights came from the file
    assert resumed.summary()["stop"] == whole.summary()["stop"]
    assert_same_weights(resumed.model, whole.model)


def test_replaying_a_runs_probe_curve_gives_the_rules_decision(tiny_setup):
    """`replay` decides on a recorded curve as the run did (what tells whether a cached run stands under a new rule)."""
    from components.unlearning.stopping import replay

    config = overshooting()
    stop = unlearn(tiny_setup, config).summary()["stop"]
    assert replay(stop["curve"], config.stop, stop["ended_at"]) == {
        key: stop[key] for key in ("stopped_at", "ended_at", "reason")}
    kept_going = replay(stop["curve"], config.stop.model_copy(update={"overshoot": "continue"}), CAP)
    assert kept_going == {"stopped_at": None, "ended_at": CAP, "reason": "cap: the step cap came first"}


def test_land_at_first_returns_the_weights_of_the_probe_where_the_run_arrived(tiny_setup):
    last = unlearn(tiny_setup, landed_rule())
    config = landed_rule(land_at="first")
    result = unlearn(tiny_setup, config)
    stop, last_stop = result.summary()["stop"], last.summary()["stop"]

    assert stop["curve"] == last_stop["curve"] and stop["ended_at"] == last_stop["stopped_at"]  # the same run ...
    arrival = stop["curve"][-2]["step"]  # ... whose result is the first of the two probes that landed in a row
    assert stop["stopped_at"] == result.steps == arrival < stop["ended_at"]
    assert stop["reason"].startswith("landed") and f"kept the weights of step {arrival}" in stop["reason"]
    fixed = unlearn(tiny_setup, UnlearnConfig(**MATCH, steps=arrival, stop={"rule": "none", "every": 2}))
    assert_same_weights(result.model, fixed.model)


def test_land_at_first_on_a_recorded_smollm2_curve_keeps_the_arrival_and_not_a_nearer_confirmation():
    from components.config import StopConfig
    from components.unlearning.stopping import replay

    # probe (step, AUC, KS p) near the band of a SmolLM2 tuning run (calibration_tuning_smollm2_gamma03, seed 12)
    curve = [{"step": s, "probe_auc": auc, "probe_ks_p": p, "probe_forget_nll": 0.0, "probe_holdout_nll": 0.0}
             for s, auc, p in ((14, 0.669, 0.003), (16, 0.613, 0.097), (18, 0.534, 0.405), (20, 0.466, 0.766))]
    stop = StopConfig(rule="holdout", criterion="landed", confirm=2)
    assert replay(curve, stop, 120)["stopped_at"] == 20  # last: the confirming probe (KS p 0.766)
    first = replay(curve, stop.model_copy(update={"land_at": "first"}), 120)
    assert first["stopped_at"] == 18 and first["ended_at"] == 20


def test_land_at_first_without_kept_weights_says_what_to_set():
    from pydantic import ValidationError

    from components.config import StopConfig

    with pytest.raises(ValidationError, match="overshoot: restore"):
        StopConfig(rule="holdout", land_at="first", overshoot="continue")


def test_reference_start_compares_every_probe_with_the_starting_models_holdout(tiny_setup):
    """`stop.reference: start`: the holdout is scored once, under the model unlearning starts from; the probes and
    match's targets read those scores, so the drift of unseen records' scores under unlearning moves no target."""
    from components.modeling.encoding import encode_record
    from components.modeling.scoring import mean_token_nll
    from components.unlearning.stopping import probe_records

    moving = unlearn(tiny_setup, landed_rule()).summary()["stop"]
    fixed = unlearn(tiny_setup, landed_rule(reference="start")).summary()["stop"]
    assert moving["reference"] == "current" and fixed["reference"] == "start"

    probe = probe_records(tiny_setup.holdout, 64, 1)  # the stopper's holdout sample (seed + 1)
    tokenizer, max_length = tiny_setup.tokenizer, tiny_setup.config.model.max_length
    with torch.no_grad():
        start = mean_token_nll(copy.deepcopy(tiny_setup.target).eval(), [encode_record(tokenizer, r, max_length) for r in probe],
                               tokenizer.pad_token_id).mean().item()
    assert {round(r["probe_holdout_nll"], 5) for r in fixed["curve"]} == {round(start, 5)}
    assert len({round(r["probe_holdout_nll"], 5) for r in moving["curve"]}) > 1  # the drift the setting removes
    assert moving["curve"][0]["probe_forget_nll"] == pytest.approx(fixed["curve"][0]["probe_forget_nll"])


def test_a_resumed_reference_start_run_decides_as_an_uninterrupted_one(tiny_setup, tmp_path):
    """The starting model's holdout scores come from the model the run was given, not from the checkpoint."""
    config = landed_rule(reference="start").model_copy(update={"checkpoint_every": 1})
    whole = unlearn(tiny_setup, config)
    crash_at = whole.summary()["stop"]["ended_at"]

    def crash(record):
        if record["step"] == crash_at:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        unlearn(tiny_setup, config, checkpoint_dir=tmp_path, on_step=crash)
    resumed = unlearn(tiny_setup, config, checkpoint_dir=tmp_path)
    assert resumed.resumed_from == crash_at - 1
    assert resumed.summary()["stop"] == whole.summary()["stop"]
    assert_same_weights(resumed.model, whole.model)


def test_an_unknown_reference_names_the_key():
    from components.config import Config, ConfigError

    with pytest.raises(ConfigError, match="unlearn.stop.reference"):
        Config().with_overrides({"unlearn.stop.reference": "oracle"})
