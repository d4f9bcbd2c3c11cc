"""One inbox file never stops the others (issue 21): a file the service cannot read, one that
vanishes mid-take, and one over the size limit are quarantined in rejected/ with a reason (or
skipped, when gone), never `dvc add`-ed, and never raise out of ``take()``; the other requests
go on. A real DVC repository; faults are injected where the operating system cannot make them
(the tests may run as root, for whom ``chmod 000`` does not stop reading)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from components.config import Config
from components.context import run_context
from components.data.inbox import Inbox, Unversionable
from components.paths import Paths
from pipeline_repo import dvc_init

GOOD = json.dumps({"request_id": "req-good", "received_at": "2026-11-28T09:00:00Z", "subjects": ["Ada"]})


def unreadable(monkeypatch, path: Path) -> None:
    """``chmod 000``, and for root (who reads it anyway) the PermissionError it gives everyone else."""
    path.chmod(0)
    if os.geteuid() == 0:
        real_open = Path.open

        def refuse(self, *args, **kwargs):
            if self.name == path.name and self.parent == path.parent:
                raise PermissionError(13, "Permission denied")
            return real_open(self, *args, **kwargs)

        monkeypatch.setattr(Path, "open", refuse)


@pytest.fixture
def inbox(tmp_path) -> Inbox:
    return Inbox(Paths(tmp_path))


@pytest.fixture
def dvc_inbox(tmp_path) -> Inbox:
    dvc_init(tmp_path, no_scm=True)
    return Inbox(Paths(tmp_path))


def test_take_never_raises_for_an_unreadable_file_and_takes_the_others(inbox, monkeypatch):
    (inbox.paths.inbox / "good.json").write_text(GOOD)
    locked = inbox.paths.inbox / "jane-doe.json"
    locked.write_text(GOOD.replace("req-good", "req-locked"))
    unreadable(monkeypatch, locked)
    valid, invalid = inbox.take()
    assert [p.request_id for p in valid] == ["req-good"]
    assert [(path, type(error)) for path, error in invalid] == [(locked, Unversionable)]
    assert "cannot be read (PermissionError)" in invalid[0][1].reasons[0]


def test_blur_request_cancel_works_beside_an_unreadable_file(inbox, monkeypatch):
    (inbox.paths.inbox / "good.json").write_text(GOOD)
    locked = inbox.paths.inbox / "locked.json"
    locked.write_text(GOOD.replace("req-good", "req-locked"))
    unreadable(monkeypatch, locked)
    assert inbox.cancel("req-good") == inbox.cancelled / "good.json"


# --------------------------------------------------------------------------- the flow's take


def take_in_flow(root: Path) -> tuple[list[str], dict]:
    """The flow's take step (`_take`) alone, in a Prefect flow run: the ids taken and the summary."""
    from prefect import flow

    from flows.pipeline import Batch, _take

    @flow(name="take-only")
    def take_only() -> tuple[list[str], dict]:
        batch = Batch(run_context(Config(), Paths(root)))
        taken = _take(batch, Inbox(Paths(root)))
        return [p.request_id for p in taken], batch.summary

    return take_only()


def dvc_pointers(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in (root / "data").rglob("*.dvc"))


@pytest.mark.slow
def test_an_oversized_file_is_quarantined_without_dvc_add(dvc_inbox, prefect_server):
    root = dvc_inbox.paths.root
    (dvc_inbox.paths.inbox / "good.json").write_text(GOOD)
    huge = dvc_inbox.paths.inbox / "huge.json"
    with huge.open("wb") as handle:  # sparse: 2 MB of nothing on disk
        handle.truncate(2_000_000)
    taken, summary = take_in_flow(root)
    assert taken == ["req-good"] and len(summary["rejected"]) == 1
    assert not huge.exists() and (dvc_inbox.paths.rejected / "huge.json").exists()
    assert "2,000,000 bytes" in (dvc_inbox.paths.rejected / "huge.json.reason.txt").read_text()
    assert dvc_pointers(root) == ["data/requests/inbox/good.json.dvc"], "the huge file was never `dvc add`-ed"


@pytest.mark.slow
def test_an_unreadable_file_is_quarantined_and_the_others_are_taken(dvc_inbox, prefect_server, monkeypatch):
    root = dvc_inbox.paths.root
    (dvc_inbox.paths.inbox / "good.json").write_text(GOOD)
    locked = dvc_inbox.paths.inbox / "jane-doe.json"
    locked.write_text(GOOD.replace("req-good", "req-locked"))
    unreadable(monkeypatch, locked)
    taken, summary = take_in_flow(root)
    assert taken == ["req-good"] and len(summary["rejected"]) == 1 and "jane" not in json.dumps(summary)
    assert (dvc_inbox.paths.rejected / "jane-doe.json").exists() and not locked.exists()
    assert "PermissionError" in (dvc_inbox.paths.rejected / "jane-doe.json.reason.txt").read_text()
    assert dvc_pointers(root) == ["data/requests/inbox/good.json.dvc"]


@pytest.mark.slow
def test_a_file_that_vanishes_mid_take_is_skipped_and_the_others_are_taken(dvc_inbox, prefect_server, monkeypatch):
    root = dvc_inbox.paths.root
    (dvc_inbox.paths.inbox / "good.json").write_text(GOOD)
    ghost = dvc_inbox.paths.inbox / "ghost.json"
    listed = Inbox.files
    monkeypatch.setattr(Inbox, "files", lambda self: sorted([*listed(self), ghost]))  # deleted right after listing
    taken, summary = take_in_flow(root)
    assert taken == ["req-good"] and len(summary["skipped"]) == 1 and summary["rejected"] == []
    assert list(dvc_inbox.paths.rejected.iterdir()) == []
