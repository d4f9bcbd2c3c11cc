"""`blur process` killed with SIGKILL in the middle of unlearning, then started again: the
requests stay pending, the new run resumes from the last checkpoint and ends with exactly
the metrics of an uninterrupted run on an identical repository.

Both runs use Prefect's embedded ephemeral API, the default when no Prefect server is
configured (with a server, a killed run's concurrency slot is freed when its lease,
``flow.lease_seconds``, expires; the test server never frees one).
"""

from __future__ import annotations

import json
import os
import shutil
import signal

import pytest

from components.data.inbox import Inbox
from components.paths import Paths
from reliability_runs import (
    RELIABILITY_PARAMS,
    batch_dir,
    batch_requests,
    finish,
    metrics_of,
    new_repo,
    registry,
    start_blur,
    wait_for,
)

pytestmark = pytest.mark.slow

STEPS = RELIABILITY_PARAMS["unlearn.steps"]


def _checkpoint(repo, process, log):
    if process.poll() is not None:
        raise AssertionError(f"blur exited ({process.returncode}) before its first checkpoint:\n{log.read_text()[-3000:]}")
    return next(repo.glob("runs/batch-*/checkpoints/unlearn/last.pt"), None)


@pytest.fixture(scope="module")
def crash(tmp_path_factory, prefect_server, migrated_mlflow_db, concurrent_run, prefect_database):
    import torch

    from prefect_database import copy_database

    # An uninterrupted run on an identical repository; the production model is trained once
    # (the crash is in unlearning, and training it in the killed run would only add time).
    uninterrupted = concurrent_run["repo"]
    repo = new_repo(tmp_path_factory.mktemp("crash"), migrated_mlflow_db, name="crash")
    shutil.copytree(uninterrupted / "models" / "target", repo / "models" / "target")
    copy_database(prefect_database, repo / ".prefect" / "prefect.db")  # the embedded API's, migrated already

    killed_log = repo.parent / "blur-process-killed.log"
    killed = start_blur(repo, killed_log, "process", server=False)
    checkpoint = wait_for(lambda: _checkpoint(repo, killed, killed_log), 600, "the first unlearning checkpoint")
    os.killpg(killed.pid, signal.SIGKILL)  # blur and anything it started, with no chance to clean up
    killed.wait()
    batch = batch_dir(repo)
    after_kill = {
        "code": killed.returncode,
        "step": torch.load(checkpoint, weights_only=False)["step"],
        "status": Inbox(Paths(repo)).status(),
        "unlearned": (batch / "models" / "unlearned").exists(),
        "registry": registry(repo),
    }

    resumed_log = repo.parent / "blur-process-resumed.log"
    code, output = finish(start_blur(repo, resumed_log, "process", server=False), resumed_log)
    return {"repo": repo, "uninterrupted": uninterrupted, "after_kill": after_kill, "code": code, "output": output}


def test_the_run_was_killed_between_checkpoints_before_unlearning_finished(crash):
    after_kill = crash["after_kill"]
    assert after_kill["code"] == -signal.SIGKILL
    assert 0 < after_kill["step"] < STEPS
    assert not after_kill["unlearned"], "no unlearned model was written"


def test_the_requests_stay_pending_after_the_kill(crash):
    status = crash["after_kill"]["status"]
    assert status["pending"] == sorted(request["request_id"] for request in batch_requests().values())
    assert status["processed"] == [] and status["failed"] == [] and status["rejected"] == []


def test_nothing_is_registered_by_the_killed_run(crash):
    held = crash["after_kill"]["registry"]
    assert held["versions"] == [] and held["champion"] is None and held["runs"] == []


def test_blur_process_again_finishes_the_batch(crash):
    assert crash["code"] == 0, crash["output"][-3000:]
    status = Inbox(Paths(crash["repo"])).status()
    assert status["pending"] == [] and status["processed"] == ["req-alpha", "req-beta"]
    assert registry(crash["repo"])["champion"] == "1"


def test_unlearning_resumes_from_the_last_checkpoint(crash):
    summary = json.loads((batch_dir(crash["repo"]) / "reports" / "unlearn.json").read_text())
    assert summary["resumed_from"] == crash["after_kill"]["step"]
    assert summary["steps"] == STEPS


def test_the_resumed_run_logs_the_same_steps_as_an_uninterrupted_run(crash):
    def steps(repo):
        return (batch_dir(repo) / "reports" / "unlearn_log.jsonl").read_text().splitlines()

    assert steps(crash["repo"]) == steps(crash["uninterrupted"])


def test_the_resumed_run_ends_with_the_metrics_of_an_uninterrupted_run(crash):
    assert metrics_of(crash["repo"]) == metrics_of(crash["uninterrupted"])
