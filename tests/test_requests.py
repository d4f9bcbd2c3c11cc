"""Deletion requests are parsed strictly and resolve to exact forget and retain sets."""

from __future__ import annotations

import json

import pytest

from components.data import RequestError, read_request, resolve_request, resolve_requests
from components.data.demo_world import generate_world
from components.data.requests import parse_request

WORLD, _ = generate_world(seed=3, n_subjects=5, n_holdout_subjects=0, facts_per_subject=8)
SUBJECTS = list(dict.fromkeys(r.subject for r in WORLD))


def _request(**fields):
    base = {"request_id": "req-1", "received_at": "2026-11-28T09:00:00Z"}
    return parse_request(base | fields)


def test_subject_request_forgets_all_records_of_the_subject():
    resolution = resolve_request(_request(subjects=[SUBJECTS[1]]), WORLD)
    assert {r.subject for r in resolution.forget} == {SUBJECTS[1]}
    assert len(resolution.forget) == 8
    assert len(resolution.retain) == len(WORLD) - 8
    assert not {r.record_id for r in resolution.forget} & {r.record_id for r in resolution.retain}


def test_explicit_records_by_content_and_by_id():
    by_content = {"question": WORLD[0].question, "answer": WORLD[0].answer}
    resolution = resolve_request(_request(records=[by_content, WORLD[9].record_id]), WORLD)
    assert resolution.forget == [WORLD[0], WORLD[9]]


def test_subjects_and_records_combine_without_duplicates():
    request = _request(subjects=[SUBJECTS[0]], records=[{"question": WORLD[0].question}])
    assert len(resolve_request(request, WORLD).forget) == 8


def test_earlier_forgotten_records_leave_the_retain_set():
    earlier = [r.record_id for r in WORLD if r.subject == SUBJECTS[2]]
    resolution = resolve_request(_request(subjects=[SUBJECTS[0]]), WORLD, already_forgotten=earlier)
    assert len(resolution.retain) == len(WORLD) - 16
    assert not set(earlier) & {r.record_id for r in resolution.retain}


def test_summary_has_counts_and_hashes_but_no_text():
    resolution = resolve_request(_request(subjects=[SUBJECTS[0]]), WORLD)
    blob = json.dumps(resolution.summary())
    assert resolution.summary()["n_forget"] == 8
    assert SUBJECTS[0] not in blob
    assert all(r.answer not in blob and r.question not in blob for r in resolution.forget)


def test_unknown_subject_is_named_with_a_suggestion():
    with pytest.raises(RequestError) as error:
        resolve_request(_request(subjects=[SUBJECTS[0].lower()]), WORLD)
    assert f"unknown subject '{SUBJECTS[0].lower()}'" in str(error.value)
    assert "did you mean" in str(error.value)


def test_record_not_in_world_is_an_error():
    with pytest.raises(RequestError, match=r"records\[0\].*not in the world"):
        resolve_request(_request(records=[{"question": "Who wrote nothing?"}]), WORLD)


def test_record_matching_many_is_ambiguous():
    world = WORLD + [WORLD[0].__class__(question=WORLD[0].question, answer="Another.", subject="x")]
    with pytest.raises(RequestError, match="matches 2 records"):
        resolve_request(_request(records=[{"question": WORLD[0].question}]), world)


def test_erasing_the_whole_world_is_refused():
    with pytest.raises(RequestError, match="whole world"):
        resolve_request(_request(subjects=SUBJECTS), WORLD)


@pytest.mark.parametrize(
    "fields, reason",
    [
        ({"request_id": "../etc"}, "request_id"),
        ({"request_id": "a b"}, "request_id"),
        ({"request_id": 5}, "request_id"),
        ({"request_id": "req-1\n"}, "request_id"),
        ({"received_at": "yesterday"}, "ISO 8601"),
        ({"subjects": "Ada"}, "'subjects' must be a list"),
        ({"subjects": [""]}, "subjects[0]"),
        ({"subjects": []}, "nothing to erase"),
        ({"records": [{"answer": "only an answer"}]}, "needs 'question'"),
        ({"records": [{"question": "q", "colour": "red"}]}, "unknown keys"),
        ({"extra": 1, "subjects": ["a"]}, "unknown keys"),
    ],
)
def test_malformed_fields_are_rejected_with_a_reason(fields, reason):
    with pytest.raises(RequestError) as error:
        _request(**fields)
    assert reason in str(error.value)


def test_all_reasons_are_reported_at_once():
    with pytest.raises(RequestError) as error:
        parse_request({"request_id": "bad id", "subjects": 3})
    assert len(error.value.reasons) == 3  # id, received_at, subjects
    with pytest.raises(RequestError) as error:  # a request naming nothing is told so with its other faults
        parse_request({"request_id": "x"})
    assert error.value.reasons == ["missing 'received_at' (an ISO 8601 time such as 2026-11-28T09:30:00Z)",
                                   "nothing to erase: give at least one entry in 'subjects' or 'records'"]


def test_read_request_rejects_bad_files(tmp_path):
    cases = {
        "empty.json": b"",
        "invalid.json": b"{not json",
        "latin1.json": '{"request_id": "caf\xe9"}'.encode("latin-1"),
        "list.json": b"[]",
        "huge.json": b" " * 1_000_001,
    }
    expected = {"empty.json": "empty", "invalid.json": "invalid JSON", "latin1.json": "UTF-8",
                "list.json": "JSON object", "huge.json": "limited to"}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(RequestError) as error:
            read_request(tmp_path / name)
        assert expected[name] in str(error.value), name
        assert (tmp_path / name).exists(), "a rejected request file is never deleted"


def test_demo_request_resolves_against_the_default_demo_world():
    from pathlib import Path

    world, _ = generate_world(seed=0, n_subjects=40, n_holdout_subjects=10, facts_per_subject=10)
    request = read_request(Path(__file__).parents[1] / "data" / "requests" / "demo-request.json")
    resolution = resolve_request(request, world)
    assert len(resolution.subjects) == 4  # 10% of the 40 authors
    assert len(resolution.forget) == 40


def test_a_batch_forgets_the_union_and_remembers_which_request_asked():
    first = _request(subjects=[SUBJECTS[0]])
    second = parse_request({"request_id": "req-2", "received_at": "2026-11-28T10:00:00Z",
                            "subjects": [SUBJECTS[1]], "records": [WORLD[0].record_id]})
    resolution = resolve_requests([first, second], WORLD)
    assert len(resolution.forget) == 16
    assert len(resolution.forget_ids_by_request["req-1"]) == 8
    assert len(resolution.forget_ids_by_request["req-2"]) == 9
    assert resolution.summary()["request_ids"] == ["req-1", "req-2"]


def test_batch_errors_name_the_request():
    first = _request(subjects=[SUBJECTS[0]])
    second = parse_request({"request_id": "req-2", "received_at": "2026-11-28T10:00:00Z",
                            "subjects": ["Nobody"]})
    with pytest.raises(RequestError, match="req-2: unknown subject"):
        resolve_requests([first, second], WORLD)


def test_request_id_pattern_is_a_full_match_also_for_callers_using_match():
    from components.artifacts import REQUEST_ID as REQUEST_ID_PATTERN, is_request_id

    assert not is_request_id("req-1\n") and REQUEST_ID_PATTERN.match("req-1\n") is None
    assert is_request_id("req-1") and not is_request_id("r" * 129) and not is_request_id(None)


def test_did_you_mean_never_names_a_subject_already_erased():
    erased = [r.record_id for r in WORLD if r.subject == SUBJECTS[2]]
    typo = SUBJECTS[2][:-1] + "x"
    with pytest.raises(RequestError) as before_erasure:
        resolve_request(_request(subjects=[typo]), WORLD)
    assert repr(SUBJECTS[2]) in str(before_erasure.value)
    with pytest.raises(RequestError) as after_erasure:
        resolve_request(_request(subjects=[typo]), WORLD, already_forgotten=erased)
    assert SUBJECTS[2] not in str(after_erasure.value)
    assert f"unknown subject '{typo}'" in str(after_erasure.value)


def test_two_requests_of_a_batch_with_one_id_are_refused():
    first, second = _request(subjects=[SUBJECTS[0]]), _request(subjects=[SUBJECTS[1]])
    with pytest.raises(RequestError, match="duplicate request_id 'req-1'"):
        resolve_requests([first, second], WORLD)


def test_the_resolver_checks_its_own_invariants():
    from dataclasses import replace

    from components.data.requests import _check_invariants

    resolution = resolve_request(_request(subjects=[SUBJECTS[0]]), WORLD)
    _check_invariants(resolution, set())
    overlapping = replace(resolution, retain=resolution.retain + resolution.forget[:1])
    with pytest.raises(AssertionError, match="forget and retain sets overlap"):
        _check_invariants(overlapping, set())
    with pytest.raises(AssertionError, match="earlier erased record is in the retain set"):
        _check_invariants(resolution, {resolution.retain[0].record_id})
    missing = replace(resolution, forget=resolution.forget[1:])
    with pytest.raises(AssertionError, match="requested record is missing from the forget set"):
        _check_invariants(missing, set())
