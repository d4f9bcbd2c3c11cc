"""The content-addressed evaluation cache: a hit gives the same numbers, any changed input misses."""

from __future__ import annotations

import copy

import pytest
import torch

from components.evaluation import evaluate_models
from components.evaluation.cache import EvalCache, model_fingerprint
from components.modeling.io import LoadedModel


def _loader(model, tokenizer, name):
    return lambda: LoadedModel(model=model, tokenizer=tokenizer, source=name)


def _run(s, cache, *, target=None, forget=None, config=None, measure_floor=False):
    loaders = {"target": _loader(target or s.target, s.tokenizer, "target"),
               "oracle": _loader(s.oracle, s.tokenizer, "oracle")}
    return evaluate_models(
        loaders, forget=forget or s.forget, retain=s.retain[:12], holdout=s.holdout, config=config or s.config.eval,
        max_length=s.config.model.max_length, show_progress=False, cache=cache, measure_floor=measure_floor,
    )


@pytest.fixture(scope="module")
def first(tiny_setup, tmp_path_factory):
    cache = EvalCache(tmp_path_factory.mktemp("eval-cache"))
    return cache, _run(tiny_setup, cache, measure_floor=True)


def test_second_run_reuses_every_output_and_gives_the_same_metrics(tiny_setup, first):
    cache, result = first
    assert all(r["misses"] > 0 and r["hits"] == 0 for r in result.cache.values())
    again = _run(tiny_setup, cache)
    assert {role: (r["hits"] > 0, r["misses"]) for role, r in again.cache.items()} == {
        "target": (True, 0), "oracle": (True, 0)}
    assert again.metrics == result.metrics  # to the last digit, relearning attack included
    assert again.per_item == result.per_item


def test_changed_weights_miss(tiny_setup, first):
    cache, result = first
    changed = copy.deepcopy(tiny_setup.target)
    with torch.no_grad():
        next(changed.parameters()).add_(1e-3)
    assert model_fingerprint(changed, tiny_setup.tokenizer) != result.cache["target"]["fingerprint"]
    again = _run(tiny_setup, cache, target=changed)
    assert again.cache["target"]["hits"] == 0 and again.cache["target"]["misses"] > 0
    assert again.cache["oracle"]["misses"] == 0


def test_changed_evaluation_set_misses_only_that_set(tiny_setup, first):
    cache, _ = first
    again = _run(tiny_setup, cache, forget=tiny_setup.forget[:-1])
    # forget: targets, alternatives, generations (and the oracle's relearning attack) are new; the rest hit
    assert again.cache["target"]["misses"] == 3 and again.cache["target"]["hits"] > 0
    assert again.cache["oracle"]["misses"] >= 3


def test_changed_max_new_tokens_misses_the_generations(tiny_setup, first):
    cache, _ = first
    config = tiny_setup.config.eval.model_copy(update={"max_new_tokens": tiny_setup.config.eval.max_new_tokens - 1})
    again = _run(tiny_setup, cache, config=config)
    generation_splits = 2  # forget and retain generate; the holdout is only scored
    assert again.cache["target"]["misses"] == generation_splits
    assert again.cache["target"]["hits"] > 0


def test_purged_model_entries_are_gone(tiny_setup, tmp_path):
    cache = EvalCache(tmp_path / "cache")
    result = _run(tiny_setup, cache)
    fingerprint = result.cache["target"]["fingerprint"]
    assert (tmp_path / "cache" / fingerprint).is_dir()
    assert cache.purge([fingerprint]) == [fingerprint]
    assert not (tmp_path / "cache" / fingerprint).exists()
    assert _run(tiny_setup, cache).cache["target"]["hits"] == 0


def test_entries_hold_no_record_text(tiny_setup, first):
    cache, _ = first
    blob = b"".join(f.read_bytes() for f in cache.root.rglob("*.npz"))
    for record in tiny_setup.forget[:5]:
        assert record.answer.encode() not in blob and record.question.encode() not in blob
        assert record.subject.encode() not in blob


def test_floor_is_reported_with_its_ratio(first):
    _, result = first
    floor = result.floor
    assert floor["forward_tokens"] > 0 and floor["decode_tokens"] > 0 and floor["train_tokens"] > 0
    assert 0 < floor["floor_seconds"] and floor["ratio"] == pytest.approx(floor["evaluate_seconds"] / floor["floor_seconds"], rel=2e-2)
    assert floor["cpu_ratio"] == pytest.approx(floor["evaluate_cpu_seconds"] / floor["cpu_floor_seconds"], rel=2e-2)
    # where the time went: every phase that ran has seconds and a floor, and the phases' floors make the whole
    phases = floor["phases"]
    assert set(phases) == {"teacher_forced", "generation", "relearn"}
    assert all(phase["seconds"] > 0 and phase["floor_seconds"] > 0 for phase in phases.values())
    assert sum(phase["floor_seconds"] for phase in phases.values()) == pytest.approx(floor["floor_seconds"], abs=0.05)
    assert sum(phase["seconds"] for phase in phases.values()) <= floor["evaluate_seconds"] + floor["measure_seconds"]


def test_fixed_sample_is_the_same_subset_whatever_the_order(tiny_setup):
    from components.evaluation.sampling import fixed_sample

    records = tiny_setup.retain
    chosen = fixed_sample(records, 10)
    assert len(chosen) == 10 and fixed_sample(records, None) == records and fixed_sample(records, 999) == records
    assert {r.record_id for r in fixed_sample(list(reversed(records)), 10)} == {r.record_id for r in chosen}
    assert [records.index(r) for r in chosen] == sorted(records.index(r) for r in chosen)  # original order kept


def test_measuring_the_floor_leaves_the_model_as_it_was(tiny_setup):
    from components.evaluation.floor import measure_throughput
    from components.modeling.encoding import encode_record

    model = copy.deepcopy(tiny_setup.target)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    sample = [encode_record(tiny_setup.tokenizer, r, 64) for r in tiny_setup.forget]
    throughput = measure_throughput(model, tiny_setup.tokenizer, sample, batch_size=4)
    assert 0 < throughput.train_tokens_per_s < throughput.forward_tokens_per_s  # a backward costs more than none
    assert not model.training and all(p.grad is None for p in model.parameters())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
