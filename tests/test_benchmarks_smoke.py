"""Smoke test of the step-cost workload on a tiny model (the numbers mean nothing here): what the cost
measurements rely on, namely that the naive BLUR baseline computes the engine's direction and that the
memory meter sees BLUR's one extra gradient buffer.

The benchmarks themselves (``python -m benchmarks.<name>``) are not part of the test suite.
"""

from __future__ import annotations

from components.config import Config
from components.data.demo_world import generate_world


def test_naive_blur_computes_the_engines_direction_and_the_meter_sees_one_extra_buffer(one_thread):
    from benchmarks.workload import ModelSize, StepCostConfig, build_workload, check_naive_matches_blur, peak_memory
    from components.modeling.demo import train_demo_tokenizer

    world, holdout = generate_world(seed=3, n_subjects=4, n_holdout_subjects=1, facts_per_subject=8)
    forget = [r for r in world if r.subject == world[0].subject]
    retain = [r for r in world if r.subject != world[0].subject]
    tokenizer = train_demo_tokenizer(Config().with_overrides({"model.tokenizer.vocab_size": 300}), world + holdout)
    config = StepCostConfig(batch_size=4, max_length=64)
    work = build_workload(ModelSize("tiny", 32, 64, 1, 2), config, records=(forget, retain), tokenizer=tokenizer)
    assert check_naive_matches_blur(work, config) < 1e-6
    peaks = peak_memory(work, config, ("blur", "weighted_sum", "naive_blur", "fused_weighted"))
    extra = (peaks["blur"] - peaks["fused_weighted"]) / work.param_bytes
    assert 0.99 <= extra <= 1.05  # the engine's one stash of gradient size
    assert abs(peaks["blur"] - peaks["weighted_sum"]) < 0.01 * work.param_bytes  # same loop, same stash
