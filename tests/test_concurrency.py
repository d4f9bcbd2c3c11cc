"""Two `blur process` started at the same moment on one repository and one Prefect server:
every request is processed exactly once and the registry gets one version for the batch."""

from __future__ import annotations

import json

import pytest

from reliability_runs import batch_requests, registry

pytestmark = pytest.mark.slow

REQUEST_IDS = sorted(request["request_id"] for request in batch_requests().values())


@pytest.fixture(scope="module")
def two_at_once(concurrent_run):
    return concurrent_run


def test_both_processes_succeed(two_at_once):
    for code, output in two_at_once["outcomes"]:
        assert code == 0, output[-3000:]


def test_the_two_flow_runs_overlapped_in_time(two_at_once):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["process-deletion-requests"])))
    ours = [run for run in runs if run.parameters.get("root") == str(two_at_once["repo"])]
    assert len(ours) == 2 and all(run.state.is_completed() for run in ours)
    assert max(run.start_time for run in ours) < min(run.end_time for run in ours)


def test_one_process_does_the_batch_and_the_other_finds_nothing_left(two_at_once):
    outputs = [output for _, output in two_at_once["outcomes"]]
    assert sorted("Batch (none)" in output for output in outputs) == [False, True]
    assert sum("Batch batch-" in output for output in outputs) == 1


def test_every_request_is_processed_exactly_once(two_at_once):
    requests = two_at_once["repo"] / "data" / "requests"
    results = [json.loads(p.read_text()) for p in sorted((requests / "processed").glob("*.result.json"))]
    assert sorted(result["request_id"] for result in results) == REQUEST_IDS
    assert len({result["batch_id"] for result in results}) == 1
    assert {result["model_version"] for result in results} == {"1"}
    tracked = sorted(p.name for p in (requests / "processed").glob("*.json.dvc"))  # each request and its result note
    assert tracked == sorted([f"{i}.json.dvc" for i in REQUEST_IDS] + [f"{i}.result.json.dvc" for i in REQUEST_IDS])
    for folder in ("inbox", "rejected", "failed"):
        assert not [p for p in (requests / folder).iterdir() if not p.name.startswith(".")], folder


def test_the_registry_gets_one_run_and_one_version_for_the_batch(two_at_once):
    held = registry(two_at_once["repo"])
    assert held["versions"] == ["1"] and held["champion"] == "1"
    assert len(held["runs"]) == 1
    assert held["run_tags"][0]["requests"] == ",".join(REQUEST_IDS)


# --------------------------------------------------------------------------- a person's commands mid-batch
# The flow's own body with the doubles of tests/test_lifecycle_state_machine.py (real inbox, locks, moves,
# ledger and certificates): a person's command runs at a fault point while the batch holds the run lock.

from test_lifecycle_state_machine import DATES, LifecycleMachine, patched_flow  # noqa: E402,F401  (a fixture)


@pytest.fixture
def machine(patched_flow):  # noqa: F811
    LifecycleMachine.process = staticmethod(patched_flow)
    lifecycle = LifecycleMachine()
    yield lifecycle
    lifecycle.mid_run = None
    lifecycle.teardown()


def test_blur_request_add_cancel_and_retry_work_while_a_batch_holds_the_run_lock(machine):
    """Issue 21 item 5: the inbox lock is held only while files move. While a batch trains (the run lock
    held), `blur request add` of a new request succeeds and waits for the next batch, `blur request
    retry` works, and `blur request cancel` of a request taken into the batch is refused naming it."""
    from typer.testing import CliRunner

    from components.data.inbox import Inbox
    from components.data.world import load_world
    from flows.cli import app

    machine.add_valid_request(subject=0, received=DATES[0])  # req-1: will fail its gate, then be retried
    machine.process_batch(gate_passes=False)
    machine.add_valid_request(subject=1, received=DATES[1])  # req-2: the batch below takes it
    world = load_world(machine.config.world, machine.config.seed, machine.root).records
    new = machine.outside / "req-new.json"
    new.write_text(json.dumps({"request_id": "req-new", "received_at": DATES[0],
                               "subjects": [list(dict.fromkeys(r.subject for r in world))[3]]}))
    said = {}

    def person(point: str) -> None:
        if point != "unlearn" or said:
            return
        runner, root = CliRunner(), ["--root", str(machine.root)]
        said["add"] = runner.invoke(app, ["request", "add", str(new), *root])
        said["cancel"] = runner.invoke(app, ["request", "cancel", "req-2", *root])
        said["retry"] = runner.invoke(app, ["request", "retry", "req-1", *root])

    machine.mid_run = person
    machine.process_batch(gate_passes=True)
    machine.mid_run = None
    assert said["add"].exit_code == 0, said["add"].output
    assert said["retry"].exit_code == 0, said["retry"].output
    assert said["cancel"].exit_code == 1
    refusal = " ".join(said["cancel"].output.split())
    assert "taken into batch batch-" in refusal and "being processed" in refusal, refusal
    assert (machine.paths.processed / "req-2.json").exists(), "the batch finished its request"
    waiting = sorted(Inbox._peek_id(p) for p in machine.inbox.files())
    assert waiting == ["req-1", "req-new"], "what was added or retried mid-batch waits for the next batch"
    machine.process_batch(gate_passes=True)
    assert machine.inbox.files() == [] and (machine.paths.processed / "req-new.json").exists()
