"""A batch that keeps failing does not block the inbox: after flow.max_batch_failures runs its
requests go to failed/ with the reason, retriable, and the inbox is free for the next ones."""

from __future__ import annotations

import pytest

from pipeline_repo import make_flow_repo, request_json, tiny_subjects
from stub_stages import stubbed_stages

pytestmark = pytest.mark.slow


def stuck_repo(tmp_path, mlflow_db, seed_target):
    """A flow repository whose every run fails after unlearning (evaluation needs a utility set that is
    not there), with one request in its inbox; returns the repository and its inbox."""
    repo = make_flow_repo(tmp_path / "repo", {"flow.max_batch_failures": 2, "eval.utility_sets": ["missing.json"]},
                          mlflow_db=mlflow_db)
    seed_target(repo)
    inbox = repo / "data" / "requests" / "inbox"
    inbox.mkdir(parents=True)
    (inbox / "stuck.json").write_text(request_json("req-stuck", [tiny_subjects()[1]]))
    return repo, inbox


def test_a_batch_failing_after_unlearning_twice_sends_its_request_to_failed(tmp_path, prefect_server,
                                                                            migrated_mlflow_db, seed_target):
    from flows.pipeline import process_requests

    repo, inbox = stuck_repo(tmp_path, migrated_mlflow_db, seed_target)
    failed = repo / "data" / "requests" / "failed"

    with stubbed_stages(evaluate=False):  # the real evaluate stage fails at once, on the missing set
        with pytest.raises(Exception):
            process_requests(root=str(repo))
        assert (inbox / "stuck.json").exists() and not list(failed.glob("*.json"))  # one failure: still pending

        with pytest.raises(Exception):
            process_requests(root=str(repo))
    assert not (inbox / "stuck.json").exists()
    reason = (failed / "req-stuck.reason.txt").read_text()
    assert "failed 2 runs in a row" in reason and "blur request retry req-stuck" in reason


def test_a_retried_request_gets_fresh_runs_before_it_fails_again(tmp_path, prefect_server,
                                                                 migrated_mlflow_db, seed_target):
    """failures.json is spent when it sends a batch to failed/: after `blur request retry` one more
    transient error leaves the request pending, it does not fail the batch again at once."""
    from components.data.inbox import Inbox
    from components.paths import Paths
    from flows.pipeline import process_requests

    repo, inbox = stuck_repo(tmp_path, migrated_mlflow_db, seed_target)
    with stubbed_stages(evaluate=False):
        for _ in range(2):
            with pytest.raises(Exception):
                process_requests(root=str(repo))
        assert Inbox(Paths(repo)).status()["failed"] == ["req-stuck"]
        Inbox(Paths(repo)).retry("req-stuck")
        with pytest.raises(Exception):
            process_requests(root=str(repo))
    state = Inbox(Paths(repo)).status()
    assert state["pending"] == ["req-stuck"] and state["failed"] == [], "one failure after the retry: still pending"


def test_the_failure_count_is_kept_through_its_type_and_an_unreadable_one_starts_again(tmp_path):
    import json

    from components.artifacts import ArtifactError, BatchFailures
    from components.paths import Paths
    from flows.batch import count_failure

    paths = Paths(tmp_path / "batch")
    assert count_failure(paths, ValueError("x")) == 1 and count_failure(paths, KeyError("y")) == 2
    assert paths.failures.read_text() == json.dumps({"failures": 2, "last_error": "KeyError"}, indent=2) + "\n"
    paths.failures.write_text(json.dumps({"failures": "2"}))
    with pytest.raises(ArtifactError, match=r"failures\.json does not hold a valid BatchFailures: failures"):
        BatchFailures.load(paths.failures)
    assert count_failure(paths, ValueError("z")) == 1  # counting a failure never fails on its record
    assert BatchFailures.load(paths.failures) == BatchFailures(failures=1, last_error="ValueError")


def test_a_request_its_failed_batch_sent_to_failed_can_be_cancelled_once_retried(tmp_path, prefect_server,
                                                                                   migrated_mlflow_db, seed_target):
    """Issue 21: the run that sends a batch to failed/ raises, so its batch record (``.running.json``) stays.
    A request it failed before reaching the registry was decided by it (not erased: nothing was registered),
    so a person who retries it can cancel it; it used to be refused as "taken into a batch whose run
    stopped" until the next run, which takes it again."""
    from components.data.inbox import Inbox
    from components.paths import Paths
    from flows.pipeline import process_requests

    repo, _ = stuck_repo(tmp_path, migrated_mlflow_db, seed_target)
    inbox = Inbox(Paths(repo))
    with stubbed_stages(evaluate=False):
        for _ in range(2):
            with pytest.raises(Exception):
                process_requests(root=str(repo))
    assert inbox.status()["failed"] == ["req-stuck"]
    assert inbox.stopped_batch() is not None and "req-stuck" not in inbox.stopped_batch().request_ids
    inbox.retry("req-stuck")
    assert inbox.cancel("req-stuck").parent == inbox.cancelled
    assert inbox.status()["cancelled"] == ["req-stuck"] and inbox.status()["pending"] == []
