"""The generated demo world is deterministic, rich enough to evaluate, and keeps holdout apart."""

from __future__ import annotations

import json

from components.data.demo_world import generate_world


def _bytes(records) -> bytes:
    return json.dumps([r.to_dict() for r in records]).encode()


def test_same_seed_gives_the_same_world_byte_for_byte():
    first = generate_world(seed=11)
    second = generate_world(seed=11)
    assert _bytes(first[0]) == _bytes(second[0]) and _bytes(first[1]) == _bytes(second[1])


def test_different_seeds_give_different_worlds():
    assert _bytes(generate_world(seed=1)[0]) != _bytes(generate_world(seed=2)[0])


def test_defaults_are_40_trained_and_10_holdout_subjects_with_8_or_more_facts():
    world, holdout = generate_world()
    subjects = {r.subject for r in world}
    assert len(subjects) == 40 and len({r.subject for r in holdout}) == 10
    assert not subjects & {r.subject for r in holdout}
    for subject in subjects:
        assert sum(r.subject == subject for r in world) >= 8


def test_every_fact_has_a_paraphrase_and_three_distinct_wrong_answers():
    world, _ = generate_world(seed=5)
    for record in world:
        assert record.paraphrased_answer and record.paraphrased_answer != record.answer
        assert len(set(record.perturbed_answers)) >= 3
        assert record.paraphrased_answer not in record.perturbed_answers
        assert record.subject in record.question


def test_phrasing_varies_across_subjects():
    world, _ = generate_world(seed=5)
    birthplace = [r for r in world if "born" in r.question and "year" not in r.question
                  and "When" not in r.question]
    templates = {r.question.split(r.subject)[0] for r in birthplace}
    assert len(templates) >= 2


def test_records_are_unique():
    world, holdout = generate_world(seed=9)
    ids = [r.record_id for r in world + holdout]
    assert len(ids) == len(set(ids))
