"""Issue 21, liveness: the record of the batch under way (``data/requests/.running.json``) when its run
stopped. It keeps what that run took uncancellable (its alias may have moved), but it must never block
the service without saying what to do: `blur status` shows it, a record that cannot be read names the
one safe action (`blur process`, never "delete it"), and the next run recognises the stopped batch and
takes the inbox again under its own record."""

from __future__ import annotations

import json
import os
import socket

import pytest

from components.data.inbox import Inbox, InboxError
from components.paths import Paths
from test_erasure_invariants import blur, request_bytes, subject_of, waiting


@pytest.fixture
def inbox(tmp_path) -> Inbox:
    from pipeline_repo import write_params

    write_params(tmp_path, {})
    return Inbox(Paths(tmp_path))


def stopped_batch(inbox: Inbox, request_id: str = "req-r", name: str = "jane-doe.json") -> None:
    """A run took ``request_id`` (its file named after a person), chose its batch, and stopped."""
    waiting(inbox, request_id, subject_of(), name=name)
    inbox.take(claim=True)
    inbox.name_batch("batch-0123456789ab")


def test_the_record_names_the_process_that_took_the_batch(inbox):
    stopped_batch(inbox)
    taken = inbox.running()
    assert taken.pid == os.getpid() and taken.host == socket.gethostname()
    assert taken.request_ids == ["req-r"] and taken.batch_id == "batch-0123456789ab"


def test_a_batch_is_stopped_only_while_no_run_holds_the_run_lock(inbox):
    assert inbox.stopped_batch() is None, "no record, nothing stopped"
    stopped_batch(inbox)
    assert inbox.stopped_batch().batch_id == "batch-0123456789ab"
    with inbox.run_lock(timeout=0):
        assert inbox.stopped_batch() is None, "a run holds the lock: it is under way, not stopped"


def test_blur_status_shows_a_stopped_batch_and_what_to_do(inbox):
    stopped_batch(inbox)
    shown = blur("status", root=inbox.paths.root)
    assert shown.exit_code == 0, shown.output
    text = " ".join(shown.output.split())
    assert "batch-0123456789ab" in text and "stopped before it was decided" in text
    assert "req-r" in text and "blur process" in text and "cannot be cancelled" in text
    assert "jane-doe" not in text[text.index("Stopped:"):], "the record's file names are never shown"


def test_blur_status_shows_a_batch_under_way_as_such(inbox):
    stopped_batch(inbox)
    with inbox.run_lock(timeout=0):
        shown = blur("status", root=inbox.paths.root)
    text = " ".join(shown.output.split())
    assert shown.exit_code == 0 and "batch-0123456789ab" in text and "being processed" in text, text
    assert "stopped" not in text


def test_an_unreadable_record_refuses_cancels_with_the_safe_action_and_the_next_take_replaces_it(inbox):
    """A truncated record cannot say what its run took, so every cancel is refused (a request it took may
    be erased by the champion already); the message says to run `blur process` (which takes the inbox again
    under a new record), never to delete it. `blur status` names it too."""
    waiting(inbox, "req-p", subject_of(1))
    inbox.paths.running_batch.write_text('{"taken_at": "2026-12-')
    with pytest.raises(InboxError) as refused:
        inbox.cancel("req-p", timeout=1)
    assert "blur process" in str(refused.value) and "do not delete it" in str(refused.value)
    assert inbox.files() == [inbox.paths.inbox / "req-p.json"], "nothing moved"
    shown = blur("status", root=inbox.paths.root)
    text = " ".join(shown.output.split())
    assert shown.exit_code == 0 and ".running.json" in text.replace(" ", "") and "blur process" in text, text

    with inbox.run_lock(timeout=0), inbox.batch_run():  # the next run
        assert inbox.stopped_batch() is None
        (taken,), _ = inbox.take(claim=True)
        assert inbox.running().request_ids == ["req-p"]
    assert not inbox.paths.running_batch.exists(), "decided: the record goes"
    assert inbox.cancel("req-p", timeout=1).parent == inbox.paths.cancelled


def test_a_record_written_before_it_named_its_process_still_loads(inbox):
    waiting(inbox, "req-r", subject_of())
    inbox.paths.running_batch.write_text(json.dumps(
        {"taken_at": "2026-12-01T12:00:00+00:00", "request_ids": ["req-r"], "files": ["req-r.json"],
         "batch_id": None}))
    assert inbox.stopped_batch().request_ids == ["req-r"] and inbox.stopped_batch().pid is None
    with pytest.raises(InboxError, match="stopped before deciding it"):
        inbox.cancel("req-r", timeout=1)


def test_the_next_run_recognises_the_stopped_batch_and_takes_the_inbox_again(inbox, monkeypatch, caplog):
    """What the flow does before its take (it holds the run lock): a record there is a stopped run's; it is
    logged by ids (never a file name), named in the summary, and replaced by this run's own record."""
    import logging

    from flows import pipeline

    stopped_batch(inbox)
    monkeypatch.setattr(pipeline, "get_run_logger", lambda: logging.getLogger("blur-test"))
    batch = pipeline.Batch(pipeline.flow_context(str(inbox.paths.root)))
    with inbox.run_lock(timeout=0), caplog.at_level(logging.WARNING, "blur-test"):
        pipeline._recognise_stopped_batch(batch, inbox)
        (taken,), _ = inbox.take(claim=True)
    assert batch.summary["stopped_batch"] == "batch-0123456789ab"
    assert "stopped before deciding batch batch-0123456789ab" in caplog.text and "req-r" in caplog.text
    assert "jane-doe" not in caplog.text
    assert inbox.running().batch_id is None and inbox.running().request_ids == ["req-r"], "this run's record"

    inbox.paths.running_batch.write_text("{")
    caplog.clear()
    with inbox.run_lock(timeout=0), caplog.at_level(logging.WARNING, "blur-test"):
        pipeline._recognise_stopped_batch(batch, inbox)
    assert batch.summary["stopped_batch"] == "unreadable" and "cannot be read" in caplog.text


def test_a_request_failed_after_its_batch_reached_the_registry_stays_refused_and_the_message_says_why(inbox):
    """Issue 21: a request the run sent to failed/ after its batch reached the registry (where the alias may
    have moved) stays in the stopped batch's record. A person who retries it cannot cancel it until a run
    reads the registry; the refusal says so, and what `blur process` will do with it (take it again), not
    that it can be cancelled once that run is over."""
    stopped_batch(inbox)
    (pending,) = inbox.take(claim=False)[0]
    inbox.fail(pending, "after the registry", release=False)
    inbox.retry("req-r")
    with pytest.raises(InboxError) as refused:
        inbox.cancel("req-r")
    message = str(refused.value)
    assert "batch-0123456789ab" in message and "registry" in message and "takes it again" in message
    assert "can be cancelled then" not in message


def test_a_request_failed_before_its_batch_reached_the_registry_leaves_the_record(inbox):
    """The flow fails a request with ``release=True`` when its batch never reached the registry: the record
    lets it go in the same hold of the inbox lock as the move, so after a retry it can be cancelled."""
    stopped_batch(inbox)
    (pending,) = inbox.take(claim=False)[0]
    inbox.fail(pending, "unlearning diverged", release=True)
    assert inbox.running().request_ids == [] and "jane-doe.json" not in inbox.running().files
    inbox.retry("req-r")
    assert inbox.cancel("req-r").parent == inbox.cancelled
