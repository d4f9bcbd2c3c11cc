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
    assert sorted(p.name for p in (requests / "processed").glob("*.json.dvc")) == [f"{i}.json.dvc" for i in REQUEST_IDS]
    for folder in ("inbox", "rejected", "failed"):
        assert not [p for p in (requests / folder).iterdir() if not p.name.startswith(".")], folder


def test_the_registry_gets_one_run_and_one_version_for_the_batch(two_at_once):
    held = registry(two_at_once["repo"])
    assert held["versions"] == ["1"] and held["champion"] == "1"
    assert len(held["runs"]) == 1
    assert held["run_tags"][0]["requests"] == ",".join(REQUEST_IDS)
