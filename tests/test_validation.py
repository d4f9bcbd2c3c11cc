"""Great Expectations validation of a deletion request and its forget / retain sets.

Real GX on a tiny demo world. Each test changes one thing in a good request and checks
that exactly that problem is reported: by suite, expectation, rows and record ids. Only
what can fail is validated here; what the resolver guarantees by construction (disjoint
sets, every requested record forgotten) is tested in test_requests.py.
"""

from __future__ import annotations

import html
import json
import os
import subprocess
import sys
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import pytest

import components
from components.data.demo_world import generate_world
from components.data.records import content_hash
from components.data.requests import DeletionRequest, resolve_request
from components.modeling.encoding import answer_texts
from components.modeling.tokenizer import train_tokenizer
from components.validation import ValidationFailed, ValidationReport, validate_request_data

MAX_LENGTH = 128
WORLD, HOLDOUT = generate_world(seed=7, n_subjects=4, n_holdout_subjects=1, facts_per_subject=8)
SUBJECT = WORLD[0].subject
RECEIVED = datetime(2026, 11, 28, 9, 30, tzinfo=timezone.utc)
REQUEST = DeletionRequest(request_id="req-1", received_at=RECEIVED, subjects=(SUBJECT,))
RESOLUTION = resolve_request(REQUEST, WORLD)
FORGET, RETAIN = RESOLUTION.forget, RESOLUTION.retain
SUITES = ["world", "request", "forget", "retain", "holdout"]


@pytest.fixture(scope="module")
def tokenizer():
    texts = [text for record in WORLD + HOLDOUT for text in (record.question, *answer_texts(record))]
    return train_tokenizer(texts, vocab_size=1024)


@pytest.fixture(scope="module")
def validate(tokenizer):
    def run(**changes) -> ValidationReport:
        arguments = dict(world=WORLD, holdout=HOLDOUT, forget=FORGET, retain=RETAIN, request=REQUEST,
                         tokenizer=tokenizer, max_length=MAX_LENGTH, docs_dir=None)
        return validate_request_data(**(arguments | changes))

    return run


def only_failure(report: ValidationReport) -> dict:
    assert not report.passed
    assert len(report.failures) == 1, report.reason()
    return report.failures[0]


def long_version(record):
    """The record with an answer far longer than MAX_LENGTH tokens (a new record id)."""
    return replace(record, answer=record.answer + " It is a long story." * 60)


def test_good_request_passes_every_suite(validate):
    report = validate()
    assert report.passed, report.reason()
    assert report.failures == []
    assert [suite["name"] for suite in report.suites] == SUITES
    assert all(suite["success"] for suite in report.suites)
    assert report.reason().startswith("request req-1 passed validation")


def test_duplicate_world_record_is_reported_with_rows_and_id(validate):
    failure = only_failure(validate(world=WORLD + [WORLD[10]]))
    assert (failure["suite"], failure["expectation"], failure["column"]) == (
        "world", "expect_column_values_to_be_unique", "record_id")
    assert failure["rows"] == [11, len(WORLD) + 1]
    assert failure["ids"] == [WORLD[10].record_id] * 2


def test_empty_forget_set_is_reported(validate):
    report = validate(forget=[], retain=WORLD)
    empty = [f for f in report.failures if f["suite"] == "forget"]
    assert len(empty) == 1
    assert empty[0]["expectation"] == "expect_table_row_count_to_be_between"
    assert empty[0]["observed"] == {"observed_value": 0}
    assert "forget set: empty" in report.reason()


def test_record_longer_than_max_length_is_reported_with_a_fix(validate):
    long = long_version(FORGET[4])
    world = [long if record is FORGET[4] else record for record in WORLD]
    forget = [long if record is FORGET[4] else record for record in FORGET]
    report = validate(world=world, forget=forget)
    failure = only_failure(report)
    assert (failure["suite"], failure["expectation"], failure["column"]) == (
        "forget", "expect_column_values_to_be_between", "n_tokens")
    assert failure["rows"] == [5]
    assert failure["ids"] == [long.record_id]
    assert failure["observed"]["unexpected_values"][0]["value"] > MAX_LENGTH
    assert f"forget set: 1 record is longer than model.max_length={MAX_LENGTH} tokens" in report.reason()
    assert f"row 5; id {long.record_id}): raise model.max_length or shorten" in report.reason()


def test_duplicate_request_ids_in_a_batch_are_reported(validate):
    other = replace(REQUEST, subjects=(WORLD[-1].subject,))
    failure = only_failure(validate(request=[REQUEST, other]))
    assert (failure["suite"], failure["check"], failure["rows"]) == ("request", "request_id_unique", [1, 2])
    assert failure["ids"] == ["req-1", "req-1"]


def test_a_world_listing_a_record_twice_is_reported_in_the_retain_set_too(validate):
    copy = RETAIN[5]
    report = validate(world=WORLD + [copy], retain=RETAIN + [copy])
    assert {(f["suite"], f["check"]) for f in report.failures} == {("world", "unique"), ("retain", "unique")}


def test_empty_batch_of_requests_is_reported(validate):
    report = validate(request=[])
    assert [(f["suite"], f["check"]) for f in report.failures] == [("request", "non_empty")]


def test_holdout_record_in_world_is_reported(validate):
    failure = only_failure(validate(holdout=HOLDOUT + [WORLD[3]]))
    assert (failure["suite"], failure["column"], failure["rows"]) == ("holdout", "in_world", [len(HOLDOUT) + 1])
    assert failure["ids"] == [WORLD[3].record_id]


# --------------------------------------------------------------------------- the holdout's likeness


def _text_of(report: ValidationReport, log_text: str) -> str:
    return json.dumps(report.to_dict()) + report.reason() + log_text


def _no_record_text(text: str, records) -> None:
    secrets = {part for record in records for part in (record.subject, getattr(record, "question", ""),
                                                       getattr(record, "answer", ""), getattr(record, "text", ""))}
    assert [secret[:20] for secret in secrets if secret and secret in text] == []


def test_a_holdout_like_the_forget_set_gives_no_warning(validate, caplog):
    with caplog.at_level("WARNING", logger="components.validation"):
        report = validate()
    assert report.passed and report.warnings == []
    assert "warning" not in report.reason()
    assert caplog.records == []
    holdout = next(suite for suite in report.suites if suite["name"] == "holdout")
    assert holdout["success"] and holdout["warnings"] == 0


def test_a_holdout_of_longer_records_is_a_warning_not_a_failure(validate, caplog):
    longer = [replace(r, answer=r.answer + " It was a long and quiet life by the sea, far from the city." * 2)
              for r in HOLDOUT]
    with caplog.at_level("WARNING", logger="components.validation"):
        report = validate(holdout=longer)
    assert report.passed and report.failures == []
    assert [(w["suite"], w["check"], w["column"]) for w in report.warnings] == [
        ("holdout", "length_like_forget", "n_scored_tokens")]
    warning = report.warnings[0]
    assert warning["expectation"] == "expect_column_median_to_be_between"
    assert "more than 1.5x apart (warning)" in warning["message"]
    assert "with 1 warning:" in report.reason() and "same kind and length" in report.reason()
    assert len(caplog.records) == 1 and "length_like_forget" not in caplog.text and "1.5x apart" in caplog.text
    holdout = next(suite for suite in report.suites if suite["name"] == "holdout")
    assert holdout["success"] and (holdout["failed"], holdout["warnings"]) == (0, 1)
    report.raise_if_failed()  # a warning never stops a run
    _no_record_text(_text_of(report, caplog.text), longer + FORGET)


def test_a_holdout_of_another_kind_is_a_warning(validate, caplog):
    from components.data.records import TextRecord

    texts = [TextRecord(text=f"{r.question} {r.answer}", subject=r.subject) for r in HOLDOUT]
    with caplog.at_level("WARNING", logger="components.validation"):
        report = validate(holdout=texts)
    assert report.passed
    kinds = [w for w in report.warnings if w["check"] == "kind_like_forget"]
    assert len(kinds) == 1 and kinds[0]["rows"] == list(range(1, len(texts) + 1))
    assert kinds[0]["ids"] == [record.record_id for record in texts]
    assert kinds[0]["observed"]["unexpected_values"] == [{"value": "text", "count": len(texts)}]
    assert f"{len(texts)} records are of a kind the forget set has none of (the forget set's: qa)" in kinds[0]["message"]
    _no_record_text(_text_of(report, caplog.text), texts + FORGET)


def test_an_empty_forget_set_or_holdout_is_not_compared(validate):
    report = validate(forget=[], retain=WORLD)
    assert report.warnings == []
    assert [f["suite"] for f in report.failures] == ["forget"]
    report = validate(holdout=[])
    assert report.passed and report.warnings == []


def test_failed_report_raises_validation_failed_carrying_it(validate):
    report = validate(retain=[])
    with pytest.raises(ValidationFailed) as error:
        report.raise_if_failed()
    assert error.value.report is report
    assert str(error.value) == report.reason()
    assert "retain set: empty" in str(error.value)


# --------------------------------------------------------------------------- files written


@pytest.fixture(scope="module")
def documented_run(tokenizer, tmp_path_factory):
    """A run with several failures at once, Data Docs and JSON report, from a fresh cwd."""
    cwd = tmp_path_factory.mktemp("run")
    long = long_version(FORGET[1])
    world = [long if record is FORGET[1] else record for record in WORLD] + [WORLD[20]]
    forget = [long if record is FORGET[1] else record for record in FORGET]
    by_text = {"question": RETAIN[3].question, "answer": RETAIN[3].answer}  # text in the request
    request = replace(REQUEST, records=(by_text,), subjects=(SUBJECT, "Nobody Atall"))
    before = os.getcwd()
    os.chdir(cwd)
    try:
        report = validate_request_data(
            world=world, holdout=HOLDOUT + [WORLD[2]], forget=forget, retain=RETAIN + [WORLD[20]],
            request=[request, request], tokenizer=tokenizer, max_length=MAX_LENGTH,
            docs_dir=Path("reports/data_docs"), report_path=Path("reports/validation.json"),
        )
    finally:
        os.chdir(before)
    return cwd, report, world + HOLDOUT + [long]


def test_data_docs_html_is_written_under_docs_dir(documented_run):
    cwd, report, _ = documented_run
    docs = cwd / "reports" / "data_docs"
    assert report.data_docs == str(Path("reports/data_docs/index.html"))
    assert (docs / "index.html").is_file()
    for suite in SUITES:
        assert (docs / "expectations" / f"{suite}.html").is_file()
        assert list((docs / "validations" / suite).rglob("*.html")), suite
    written = json.loads((cwd / "reports" / "validation.json").read_text())
    assert written["passed"] is False and written["failures"] == report.failures


def test_no_record_text_in_report_or_data_docs(documented_run):
    cwd, report, records = documented_run
    secrets = {"Nobody Atall"}
    for record in records:
        secrets.update([record.subject, record.question, *answer_texts(record)])
    files = [path for path in (cwd / "reports").rglob("*") if path.is_file()]
    assert len(files) > 10
    contents = {path: html.unescape(path.read_bytes().decode("utf-8", "replace")) for path in files}
    contents["reason()"] = report.reason()
    leaks = [(str(where), secret[:20]) for where, text in contents.items() for secret in secrets if secret in text]
    assert leaks == []
    assert any(WORLD[20].record_id in text for text in contents.values())  # ids are there instead


def test_validation_leaves_no_gx_folder_behind(documented_run):
    cwd, _, _ = documented_run
    assert sorted(path.name for path in cwd.iterdir()) == ["reports"]
    assert not (Path(components.__file__).resolve().parents[1] / "gx").exists()


def test_a_new_run_replaces_the_data_docs_pages_of_the_last_one(validate, tmp_path):
    docs = tmp_path / "data_docs"
    stale = docs / "validations" / "world" / "old-request" / "page.html"
    stale.parent.mkdir(parents=True)
    stale.write_text("an earlier run")
    (docs / "notes.txt").write_text("not written by GX")
    validate(docs_dir=docs)
    assert not stale.exists()
    assert (docs / "notes.txt").exists()
    pages = list((docs / "validations" / "world").rglob("*.html"))
    assert [page.relative_to(docs / "validations" / "world").parts[0] for page in pages] == ["req-1"]


def test_importing_validation_does_not_import_great_expectations():
    code = "import sys, components.validation; print('great_expectations' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
