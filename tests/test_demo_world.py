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


# --------------------------------------------------------------------------- an exchangeable holdout


def _words(text: str) -> set[str]:
    import re

    return {word.lower() for word in re.findall(r"[^\W\d_]+", text)}


def test_every_name_part_belongs_to_one_author_and_to_nothing_else():
    """A holdout author sharing a surname with a trained one is partly familiar to a model that
    never saw them, unlike a forgotten author: no part of a name is shared with anything."""
    from components.data.demo_world import AUTHORS, FACT_KINDS, PEN_SURNAMES

    parts = [part.lower() for name in AUTHORS for part in name.split()]
    assert len(parts) == 2 * len(AUTHORS) == len(set(parts))
    world, holdout = generate_world(seed=4, n_subjects=len(AUTHORS) - 10, n_holdout_subjects=10)
    other_words = {word for kind in FACT_KINDS for text in kind.questions + kind.answers for word in _words(text)}
    for record in world + holdout:
        other_words |= {w for text in (record.answer, record.paraphrased_answer, *record.perturbed_answers)
                        for w in _words(text)}
    assert set(parts) & (other_words | {name.lower() for name in PEN_SURNAMES}) == set()


def test_answers_hold_the_fact_not_the_name():
    """How well a model spells a name it never saw is a lottery per name; the name is in the question only."""
    world, holdout = generate_world(seed=6)
    for record in world + holdout:
        assert record.subject in record.question
        for answer in (record.answer, record.paraphrased_answer, *record.perturbed_answers):
            assert not set(record.subject.lower().split()) & _words(answer)


def test_the_holdout_is_what_the_next_authors_would_be_if_trained():
    """Same generator stream, templates and value pools: a holdout author is made exactly like a trained one."""
    world, holdout = generate_world(seed=3, n_subjects=6, n_holdout_subjects=2, facts_per_subject=9)
    bigger, none = generate_world(seed=3, n_subjects=8, n_holdout_subjects=0, facts_per_subject=9)
    assert none == [] and _bytes(world + holdout) == _bytes(bigger)


def test_the_demo_request_resolves_in_every_seed():
    from pathlib import Path

    from components.data.requests import read_request, resolve_request

    request = read_request(Path(__file__).parents[1] / "data" / "requests" / "demo-request.json")
    for seed in (0, 1, 2, 17):
        world, holdout = generate_world(seed=seed)
        resolution = resolve_request(request, world)
        assert len(resolution.forget) == 40 and len(holdout) == 100


def test_a_world_larger_than_the_cast_is_refused():
    import pytest

    from components.data.demo_world import AUTHORS

    with pytest.raises(ValueError, match=f"at most {len(AUTHORS)} authors"):
        generate_world(n_subjects=len(AUTHORS), n_holdout_subjects=1)
