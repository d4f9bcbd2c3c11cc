"""Two runs with the same seed, params and requests give identical results.

The runs: `blur process` on one fresh repository, and the batch done by one of the two
concurrent `blur process` on another. Separate processes, separate repositories, each
training its own production model from scratch.
"""

from __future__ import annotations

import pytest

from reliability_runs import batch_dir, metrics_of

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_runs(reference_run, concurrent_run):
    return reference_run["repo"], concurrent_run["repo"]


def test_the_production_model_trains_to_identical_weights(two_runs):
    first, second = two_runs
    assert (first / "models" / "target" / "model.safetensors").read_bytes() == \
        (second / "models" / "target" / "model.safetensors").read_bytes()


def test_the_same_batch_gets_the_same_batch_id(two_runs):
    first, second = two_runs
    assert batch_dir(first).name == batch_dir(second).name


def test_every_unlearning_step_is_identical(two_runs):
    first, second = two_runs
    log = ("reports", "unlearn_log.jsonl")
    assert batch_dir(first).joinpath(*log).read_text() == batch_dir(second).joinpath(*log).read_text()


def test_the_metrics_are_identical(two_runs):
    first, second = two_runs
    metrics = metrics_of(first)
    assert metrics == metrics_of(second)
    assert metrics["unlearned"]["forget_prob"] < metrics["target"]["forget_prob"], "a real run, not an empty one"
