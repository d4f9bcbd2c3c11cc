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


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Every test here runs on one torch thread."""


def unlearn(setup, config: UnlearnConfig, *, holdout=None, **outputs):
    model = copy.deepcopy(setup.target)
    return run_unlearning(model, setup.tokenizer, setup.forget, setup.retain, config,
                          max_length=setup.config.model.max_length, seed=0,
                          outputs=RunOutputs(show_progress=False, **outputs),
                          holdout=setup.holdout if holdout is None else holdout)


def holdout_rule(**stop) -> UnlearnConfig:
    return UnlearnConfig(**FAST, steps=CAP, stop={"rule": "holdout", "every": 2, "probe": 16} | stop)


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
