"""`blur status` names requests by id, never by file name (issue 21, privacy): a file name can be a
person's name (``jane-doe.json``). Only ``--show-files`` prints file names, and says that it does."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from components.data.inbox import Inbox
from components.data.requests import RequestError
from components.paths import Paths
from flows.cli import app
from pipeline_repo import write_params

NAMES = ("jane-doe", "john-roe", "mary-major")


def request(request_id: str) -> bytes:
    return json.dumps({"request_id": request_id, "received_at": "2026-11-28T09:00:00Z",
                       "subjects": ["Someone"]}).encode()


def an_inbox(tmp_path) -> Inbox:
    """A pending file, a rejected file without a request id and a cancelled file, each named after a person."""
    inbox = Inbox(Paths(tmp_path))
    (inbox.paths.inbox / "jane-doe.json").write_bytes(request("req-0001"))
    rejected = inbox.paths.inbox / "john-roe.json"
    rejected.write_bytes(b"{ not json")
    inbox.reject(rejected, RequestError(["not JSON"]))
    (inbox.paths.inbox / "mary-major.json").write_bytes(request("req-0002"))
    inbox.cancel("req-0002")
    write_params(tmp_path, {})
    return inbox


def test_blur_status_lists_requests_by_id_and_count_never_by_file_name(tmp_path):
    inbox = an_inbox(tmp_path)
    state = inbox.status()
    assert state["pending"] == ["req-0001"] and state["cancelled"] == ["req-0002"]
    assert len(state["rejected"]) == 1 and state["rejected"][0].startswith("file-"), "no id: a hash of its name"
    shown = CliRunner().invoke(app, ["status", "--root", str(tmp_path)])
    assert shown.exit_code == 0, shown.output
    assert [name for name in NAMES if name.split("-")[0] in shown.output.lower()] == [], shown.output
    assert "req-0001" in shown.output and "req-0002" in shown.output


def test_blur_status_show_files_prints_the_file_names_and_says_they_can_name_a_person(tmp_path):
    an_inbox(tmp_path)
    shown = CliRunner().invoke(app, ["status", "--show-files", "--root", str(tmp_path)])
    assert shown.exit_code == 0, shown.output
    assert all(f"{name}.json" in shown.output for name in NAMES), shown.output
    assert "can name a person" in shown.output
