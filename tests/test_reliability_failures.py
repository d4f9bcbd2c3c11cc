"""Failures the flow must survive without losing a request or promoting a model:
the MLflow store unreachable, unlearning diverging to NaN, and a candidate failing the gate.

All three happen, in that order, to one request (``req-delta``) on a copy of a repository
that already processed a batch and has a champion (version 1).
"""

from __future__ import annotations

import itertools
import socket
import threading

import pytest
from typer.testing import CliRunner

from components.data.inbox import Inbox
from components.paths import Paths
from pipeline_repo import request_json, tiny_subjects
from reliability_runs import copy_repo, registry
from stub_stages import stubbed_stages

pytestmark = pytest.mark.slow

RETRIES = 2


class CountingListener:
    """A TCP port that accepts connections and hangs up at once: an MLflow server that is
    down, which still counts how often the pipeline tried to reach it."""

    def __init__(self):
        self.connections = 0
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(16)
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:
                return
            self.connections += 1
            connection.close()

    def close(self):
        self._socket.close()


def _nan_at_call(loss, call: int):
    """``loss``, except that its ``call``-th evaluation (the step of that number) is NaN."""
    calls = itertools.count(1)

    def wrapped(model, batch, context):
        value = loss(model, batch, context)
        return value * float("nan") if next(calls) == call else value

    return wrapped


def _task_runs(flow_run_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        return client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))


def _snapshot(repo, state) -> dict:
    inbox = Inbox(Paths(repo))
    return {"state": state, "status": inbox.status(), "registry": registry(repo),
            "task_runs": _task_runs(state.state_details.flow_run_id)}


@pytest.fixture(scope="module")
def failures(tmp_path_factory, prefect_server, concurrent_run):
    from components.unlearning.losses import FORGET_LOSSES
    from flows.cli import app
    from flows.pipeline import process_requests

    source = concurrent_run["repo"]
    repo = copy_repo(source, tmp_path_factory.mktemp("failures") / "repo")
    (repo / "data" / "requests" / "inbox" / "delta.json").write_text(request_json("req-delta", [tiny_subjects()[3]]))
    runs = {"before": {"registry": registry(repo), "batches": set((repo / "runs").iterdir())}}

    # 1. the tracking store is down for the whole run
    listener = CountingListener()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", listener.url)
        patch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        patch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        state = process_requests(root=str(repo), overrides={"flow.retries": RETRIES}, return_state=True)
    listener.close()
    runs["unreachable"] = _snapshot(repo, state) | {"attempts": listener.connections}

    # 2. the forget loss turns NaN at step 2 (real unlearning; the batch's oracle is a test double)
    with pytest.MonkeyPatch.context() as patch, stubbed_stages(unlearn=False, evaluate=False):
        patch.setitem(FORGET_LOSSES, "npo", _nan_at_call(FORGET_LOSSES["npo"], 2))
        state = process_requests(root=str(repo), return_state=True)
    runs["nan"] = _snapshot(repo, state)
    runs["nan"]["reason"] = (repo / "data" / "requests" / "failed" / "req-delta.reason.txt").read_text()
    runs["nan"]["new_batches"] = set((repo / "runs").iterdir()) - runs["before"]["batches"]
    runs["nan"]["unlearned_written"] = any((b / "models" / "unlearned").exists() for b in runs["nan"]["new_batches"])

    # 3. retried, then unlearned again against a threshold no model can meet (the gate's verdict is what
    # counts here: oracle, unlearn and evaluate are test doubles)
    retried = CliRunner().invoke(app, ["request", "retry", "req-delta", "--root", str(repo)])
    runs["retry"] = {"code": retried.exit_code, "output": retried.output, "status": Inbox(Paths(repo)).status()}
    with stubbed_stages():
        state = process_requests(root=str(repo), overrides={"gate.min_utility_ratio": 100.0}, return_state=True)
    runs["gate"] = _snapshot(repo, state)
    runs["gate"]["summary"] = state.result(raise_on_failure=False)
    runs["gate"]["reason"] = (repo / "data" / "requests" / "failed" / "req-delta.reason.txt").read_text()
    return runs


# --------------------------------------------------------------------------- MLflow unreachable


def test_unreachable_store_fails_the_flow_after_its_retries(failures):
    run = failures["unreachable"]
    assert run["state"].is_failed()
    assert "TrackingUnavailableError" in run["state"].message and "is unreachable" in run["state"].message
    assert run["attempts"] == RETRIES + 1, "one connection per attempt: the first try and each retry"
    # the run's first registry read, retried and failed: the champion's lookup or the ledger's read of the erasures
    lookups = [t for t in run["task_runs"] if t.name.startswith(("find-champion", "registry-erasures"))]
    assert len(lookups) == 1 and lookups[0].run_count == RETRIES + 1 and lookups[0].state.is_failed()


def test_unreachable_store_promotes_nothing(failures):
    assert failures["unreachable"]["registry"] == failures["before"]["registry"]


def test_unreachable_store_leaves_the_request_pending(failures):
    status = failures["unreachable"]["status"]
    assert status["pending"] == ["req-delta"] and "req-delta" not in status["failed"] + status["processed"]


# --------------------------------------------------------------------------- NaN during unlearning


def test_nan_fails_the_flow_with_the_reason(failures):
    run = failures["nan"]
    assert run["state"].is_failed() and "unlearning diverged at step 2" in run["state"].message
    unlearn = [t for t in run["task_runs"] if t.name.startswith("unlearn")]
    assert len(unlearn) == 1 and unlearn[0].state.is_failed()


def test_nan_writes_no_model_and_registers_nothing(failures):
    assert len(failures["nan"]["new_batches"]) == 1 and not failures["nan"]["unlearned_written"]
    assert failures["nan"]["registry"] == failures["before"]["registry"]


def test_nan_moves_the_request_to_failed_with_the_reason_and_how_to_retry(failures):
    status = failures["nan"]["status"]
    assert status["failed"] == ["req-delta"] and status["pending"] == []
    reason = failures["nan"]["reason"]
    assert "UnlearningDivergedError: unlearning diverged at step 2" in reason
    assert "blur request retry req-delta" in reason


def test_a_failed_request_can_be_retried(failures):
    retry = failures["retry"]
    assert retry["code"] == 0, retry["output"]
    assert retry["status"]["pending"] == ["req-delta"] and retry["status"]["failed"] == []


# --------------------------------------------------------------------------- a failing gate in the flow


def test_the_retried_request_is_unlearned_again(failures):
    names = [t.name for t in failures["gate"]["task_runs"]]
    assert any(name.startswith("unlearn") for name in names) and any(name.startswith("register") for name in names)


def test_a_candidate_failing_the_gate_is_recorded_but_the_alias_does_not_move(failures):
    before, after = failures["before"]["registry"], failures["gate"]["registry"]
    assert after["versions"] == before["versions"] and after["champion"] == before["champion"] == "1"
    new_runs = [tags for tags in after["run_tags"] if tags.get("requests") == "req-delta"]
    assert len(new_runs) == 1 and new_runs[0]["gate"] == "failed"


def test_a_request_whose_candidate_fails_the_gate_is_failed_with_the_gate_reasons(failures):
    status = failures["gate"]["status"]
    assert status["failed"] == ["req-delta"] and status["pending"] == [] and "req-delta" not in status["processed"]
    assert "gate failed" in failures["gate"]["reason"] and "gate.min_utility_ratio" in failures["gate"]["reason"]
    assert failures["gate"]["summary"]["failed"] == ["req-delta"]
