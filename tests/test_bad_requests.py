"""Malformed deletion requests are refused with a clear reason and kept; nothing else changes.

One catalogue of bad requests goes two ways a request enters the pipeline:

- dropped straight into the inbox and taken by the production flow, all in ONE flow run
  (every request is bad, so nothing is unlearned), on a copy of a repository that already
  processed a batch (``req-alpha``, ``req-beta``) and has a champion;
- handed in with ``blur request add`` while a good request waits in the inbox.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from components.data.inbox import label
from components.data.requests import MAX_REQUEST_BYTES
from pipeline_repo import make_pipeline_repo, tiny_subjects
from reliability_runs import copy_repo, forgotten_subject, registry, world_records

pytestmark = pytest.mark.slow

PROCESSED_ID = "req-alpha"  # processed by the shared concurrent run
WHEN = "2026-11-28T09:00:00Z"


@dataclass(frozen=True)
class Case:
    """A request file (its name and bytes) and what the reason for refusing it must say."""

    name: str
    content: bytes
    reason: str


def _json(**fields) -> bytes:
    return json.dumps(fields).encode("utf-8")


def _request(request_id: str, **fields) -> bytes:
    return _json(request_id=request_id, received_at=WHEN, **fields)


def _catalogue() -> list[Case]:
    subjects = tiny_subjects()
    bad_id = "'request_id' must be 1 to 128 letters, digits, '-' or '_'"
    a_record = world_records()[-1]
    return [
        Case("invalid-json.json", b'{"request_id": "bad-json", "received_at": ', "invalid JSON at line 1"),
        Case("empty.json", b"", "the file is empty"),
        Case("a-list.json", json.dumps([subjects[3]]).encode(), "the request must be a JSON object"),
        Case("json-null.json", b"null", "the request must be a JSON object"),
        Case("missing-id.json", _json(received_at=WHEN, subjects=[subjects[3]]), "missing 'request_id'"),
        Case("missing-time.json", _json(request_id="no-time", subjects=[subjects[3]]), "missing 'received_at'"),
        Case("bad-time.json", _json(request_id="bad-time", received_at="last Tuesday", subjects=[subjects[3]]),
             "'received_at' is not an ISO 8601 time"),
        Case("number-time.json", _json(request_id="num-time", received_at=20261128, subjects=[subjects[3]]),
             "'received_at' must be an ISO 8601 string"),
        Case("nothing.json", _request("nothing", subjects=[]), "nothing to erase"),
        Case("subjects-string.json", _request("subj-str", subjects=subjects[3]), "'subjects' must be a list, got str"),
        Case("subject-number.json", _request("subj-num", subjects=[42]), "subjects[0] must be a non-empty string"),
        Case("subject-blank.json", _request("subj-blank", subjects=["   "]), "subjects[0] must be a non-empty string"),
        Case("id-number.json", _json(request_id=12345, received_at=WHEN, subjects=[subjects[3]]), bad_id),
        Case("id-dotdot.json", _request("../../processed/req-alpha", subjects=[subjects[3]]), bad_id),
        Case("id-path.json", _request("requests/2026 01;rm", subjects=[subjects[3]]), bad_id),
        Case("id-too-long.json", _request("r" * 129, subjects=[subjects[3]]), bad_id),
        Case("id-empty.json", _request("", subjects=[subjects[3]]), bad_id),
        Case("unknown-key.json", _request("typo-key", subject=[subjects[3]]), "unknown keys ['subject']"),
        Case("reason-number.json", _request("reason-num", subjects=[subjects[3]], reason=5), "'reason' must be a string"),
        Case("unknown-subject.json", _request("nobody", subjects=["Nobody Anybody"]),
             "unknown subject 'Nobody Anybody': no record in the world is about it"),
        Case("markup-subject.json", _request("markup", subjects=["[/bold]"]), "unknown subject '[/bold]'"),
        Case("record-not-in-world.json",
             _request("no-record", records=[{"question": "What is the capital of Atlantis?"}]), "is not in the world"),
        Case("record-id-not-in-world.json", _request("no-record-id", records=["0000000000000000"]),
             "records[0] (record_id 0000000000000000) is not in the world"),
        Case("wrong-answer.json",
             _request("wrong-answer", records=[{"question": a_record.question, "answer": "Nobody knows."}]),
             "is not in the world"),
        Case("record-number.json", _request("rec-num", records=[7]),
             "records[0] must be an object or a record id string, got int"),
        Case("record-unknown-key.json", _request("rec-key", records=[{"questoin": a_record.question}]),
             "records[0] has unknown keys ['questoin']"),
        Case("record-empty.json", _request("rec-empty", records=[{"question": ""}]),
             "records[0].question must be a non-empty string"),
        Case("record-answer-only.json", _request("rec-answer", records=[{"answer": a_record.answer}]),
             "records[0] needs 'question'"),
        Case("whole-world.json", _request("everything", subjects=subjects), "would erase the whole world"),
        Case("rest-of-world.json",
             _request("everyone-else", subjects=[s for s in subjects if s != forgotten_subject()]),
             "would erase the whole world"),
        Case("duplicate-id.json", _request(PROCESSED_ID, subjects=[subjects[3]]),
             f"duplicate request_id '{PROCESSED_ID}'"),
        Case("huge.json", _request("huge", subjects=[subjects[3]], reason="x" * 1_000_100),
             "requests are limited to 1,000,000 bytes"),
        Case("latin-1.json", json.dumps({"request_id": "latin", "received_at": WHEN, "subjects": [subjects[3]],
                                         "reason": "café"}, ensure_ascii=False).encode("latin-1"), "not valid UTF-8"),
        Case("utf-16.json", _request("utf16", subjects=[subjects[3]]).decode().encode("utf-16"), "not valid UTF-8"),
        Case("deeply-nested.json", b"[" * 100_000 + b"]" * 100_000, "invalid JSON: nested too deeply"),
        Case("huge-number.json", b'{"request_id": "big", "received_at": ' + b"1" * 5000 + b"}",
             "invalid JSON: Exceeds the limit"),
        Case("request.txt", _request("txt-file", subjects=[subjects[3]]), "request files must be .json files"),
    ]


CATALOGUE = _catalogue()


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by relative path, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _requests_kept(folder: Path) -> list[bytes]:
    """The request files under data/requests (not DVC files, reasons or results), as bytes."""
    notes = (".dvc", ".reason.txt", ".result.json", ".retried.txt", ".gitignore", ".lock")
    return sorted(p.read_bytes() for p in folder.rglob("*") if p.is_file() and not p.name.endswith(notes))


# --------------------------------------------------------------------------- through the flow


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory, prefect_server, concurrent_run):
    """The whole catalogue in the inbox of a repository with a champion, then one flow run."""
    from flows.pipeline import process_requests

    source = concurrent_run["repo"]
    repo = copy_repo(source, tmp_path_factory.mktemp("bad-flow") / "repo")
    requests = repo / "data" / "requests"
    for case in CATALOGUE:
        (requests / "inbox" / case.name).write_bytes(case.content)
    before = {"files": _files(requests), "kept": _requests_kept(requests), "registry": registry(repo),
              "labels": sorted(label(requests / "inbox" / case.name) for case in CATALOGUE)}
    summary = process_requests(root=str(repo))
    after = {"files": _files(requests), "kept": _requests_kept(requests), "registry": registry(repo)}
    return {"repo": repo, "summary": summary, "before": before, "after": after}


def test_flow_rejects_every_bad_request_and_processes_none(flow_run):
    summary = flow_run["summary"]
    assert sorted(summary["rejected"]) == flow_run["before"]["labels"], "named by request id or hash"
    assert not {case.name for case in CATALOGUE} & set(summary["rejected"]), "never by file name"
    assert summary["processed"] == [] and summary["failed"] == [] and summary["batch_id"] is None
    assert not list((flow_run["repo"] / "data" / "requests" / "inbox").glob("*.json"))


@pytest.mark.parametrize("case", CATALOGUE, ids=lambda case: case.name)
def test_flow_keeps_each_bad_request_in_rejected_with_a_clear_reason(flow_run, case):
    rejected = flow_run["repo"] / "data" / "requests" / "rejected"
    assert (rejected / case.name).read_bytes() == case.content
    reason = (rejected / (case.name + ".reason.txt")).read_text()
    assert case.reason in reason, reason


@pytest.mark.parametrize("case", CATALOGUE, ids=lambda case: case.name)
def test_flow_versions_each_rejected_request_with_dvc(flow_run, case):
    """Except a file over the size limit: it is quarantined unversioned (a sparse 1 TB file would
    otherwise be hashed, cached and pushed on every run)."""
    dvc_file = flow_run["repo"] / "data" / "requests" / "rejected" / (case.name + ".dvc")
    if len(case.content) > MAX_REQUEST_BYTES:
        assert not dvc_file.exists()
        return
    recorded = yaml.safe_load(dvc_file.read_text())["outs"][0]
    assert recorded["md5"] == hashlib.md5(case.content).hexdigest()


def test_flow_deletes_no_request_file(flow_run):
    before, after = flow_run["before"], flow_run["after"]
    assert after["kept"] == before["kept"], "every request file is still there, byte for byte"
    processed = {k: v for k, v in before["files"].items() if k.startswith("processed/")}
    assert {k: after["files"][k] for k in processed} == processed, "processed requests are untouched"


def test_flow_leaves_the_champion_and_the_registry_unchanged(flow_run):
    assert flow_run["before"]["registry"]["champion"] == "1"
    assert flow_run["after"]["registry"] == flow_run["before"]["registry"]


# --------------------------------------------------------------------------- through `blur request add`

runner = CliRunner()


def _blur(*args: str, root: Path):
    """``blur ARGS --root ROOT`` in this process. `blur` sets these variables when they are
    unset; given here, they are restored afterwards instead of leaking into later tests."""
    from flows.cli import app

    env = {"PREFECT_HOME": str(root / ".prefect"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    return runner.invoke(app, [*args, "--root", str(root)], env=env)


def _said(result) -> str:
    return " ".join(result.output.split())  # the console wraps long lines


@pytest.fixture(scope="module")
def cli_repo(tmp_path_factory, prefect_server, concurrent_run):
    """A copy of the processed repository with one good request waiting, handed in by the CLI."""
    source = concurrent_run["repo"]
    repo = copy_repo(source, tmp_path_factory.mktemp("bad-cli") / "repo")
    good = repo.parent / "gamma.json"
    good.write_bytes(_request("req-gamma", subjects=[tiny_subjects()[4]]))
    added = _blur("request", "add", str(good), root=repo)
    assert added.exit_code == 0, added.output
    return repo


CLI_CASES = CATALOGUE + [
    Case("duplicate-pending.json", _request("req-gamma", subjects=[tiny_subjects()[5]]),
         "duplicate request_id 'req-gamma': already waiting in the inbox"),
]


@pytest.mark.parametrize("case", CLI_CASES, ids=lambda case: case.name)
def test_request_add_refuses_each_bad_request_and_changes_nothing(cli_repo, case, tmp_path):
    requests = cli_repo / "data" / "requests"
    before = _files(requests)
    handed_in = tmp_path / case.name
    handed_in.write_bytes(case.content)

    result = _blur("request", "add", str(handed_in), root=cli_repo)

    assert result.exit_code == 1, result.output
    assert "Refused" in result.output and case.reason in _said(result), result.output
    assert _files(requests) == before, "the inbox (with its pending request) and every other folder are unchanged"
    assert handed_in.read_bytes() == case.content, "the handed-in file is left as it was"


def test_request_add_refuses_a_file_that_does_not_exist(cli_repo, tmp_path):
    result = _blur("request", "add", str(tmp_path / "missing.json"), root=cli_repo)
    assert result.exit_code == 1 and "file not found" in _said(result)


def test_request_retry_refuses_a_path_instead_of_a_request_id(cli_repo):
    requests = cli_repo / "data" / "requests"
    before = _files(requests)
    result = _blur("request", "retry", f"../processed/{PROCESSED_ID}", root=cli_repo)
    assert result.exit_code == 1 and "request ids are letters, digits" in _said(result)
    assert _files(requests) == before


# --------------------------------------------------------------------------- one record spec, many records


@pytest.fixture(scope="module")
def shared_question_repo(tmp_path_factory, prefect_server, tiny_model_dir):
    """A user's own world (a file) where two authors were asked the same question."""
    repo = make_pipeline_repo(tmp_path_factory.mktemp("many") / "repo", {
        "world.source": "file", "world.path": "data/world/authors.jsonl", "model.base": str(tiny_model_dir),
        "flow.retries": 0, "flow.concurrency_limit": "blur-test-many"})
    rows = [{"question": question, "answer": f"{author} {answer}", "subject": author}
            for author in ("Ana Ortiz", "Ben Ruiz", "Cy Vega")
            for question, answer in (("What was the author's first book?", "wrote The Quiet Tide first."),
                                     (f"Where does {author} live?", "lives by the sea."))]
    (repo / "data" / "world" / "authors.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return repo


MATCHES_MANY = Case("first-book.json", _request("first-book", records=[{"question": "What was the author's first book?"}]),
                    "records[0] (content hash")


def test_request_add_refuses_a_record_spec_that_matches_several_records(shared_question_repo, tmp_path):
    handed_in = tmp_path / MATCHES_MANY.name
    handed_in.write_bytes(MATCHES_MANY.content)
    result = _blur("request", "add", str(handed_in), root=shared_question_repo)
    assert result.exit_code == 1
    assert "matches 3 records; add 'answer' or 'subject'" in _said(result)
    assert "What was the author" not in result.output, "the reason names the spec by hash, not by its text"


def test_flow_rejects_a_record_spec_that_matches_several_records(shared_question_repo):
    from flows.pipeline import process_requests

    inbox = shared_question_repo / "data" / "requests" / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    (inbox / MATCHES_MANY.name).write_bytes(MATCHES_MANY.content)
    summary = process_requests(root=str(shared_question_repo))
    rejected = shared_question_repo / "data" / "requests" / "rejected"
    assert summary["rejected"] == ["first-book"]
    assert (rejected / MATCHES_MANY.name).read_bytes() == MATCHES_MANY.content
    assert "matches 3 records" in (rejected / "first-book.json.reason.txt").read_text()


# --------------------------------------------------------------------------- fine alone, not together


def test_a_request_is_checked_together_with_those_accepted_before_it_in_the_batch(tmp_path_factory,
                                                                                    concurrent_run):
    """Two requests that each leave something to retain, but not both: the flow's check of
    the second counts the first, so the batch never erases the whole world."""
    from components.config import load_config
    from components.context import run_context
    from components.data.inbox import Inbox, Pending
    from components.data.requests import read_request
    from components.paths import Paths
    from flows.pipeline import check_request

    source = concurrent_run["repo"]
    repo = copy_repo(source, tmp_path_factory.mktemp("bad-together") / "repo")
    config, paths, inbox = load_config(repo / "params.yaml"), Paths(repo), repo / "data" / "requests" / "inbox"
    remaining = [s for s in tiny_subjects() if s != forgotten_subject()]
    (inbox / "first.json").write_bytes(_request("req-first", subjects=remaining[:2]))
    (inbox / "second.json").write_bytes(_request("req-second", subjects=remaining[2:]))
    first, second = (Pending(inbox / n, read_request(inbox / n)) for n in ("first.json", "second.json"))
    earlier = Inbox(paths).earlier()  # what req-alpha and req-beta erased

    ctx = run_context(config, paths)
    alone = check_request.fn(ctx, second, earlier, {})
    accepted = check_request.fn(ctx, first, earlier, {})
    together = check_request.fn(ctx, second, earlier, {"req-first": accepted["forget_ids"]})

    assert alone["accepted"] and accepted["accepted"] and not together["accepted"]
    reason = (repo / "data" / "requests" / "rejected" / "second.json.reason.txt").read_text()
    assert "would erase the whole world" in reason and "accepted before it in this batch: req-first" in reason
