"""The production flow with real Prefect, MLflow (SQLite), DVC and Great Expectations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline_repo import make_flow_repo, request_json, tiny_subjects

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_batches(tmp_path_factory, prefect_server, migrated_mlflow_db, seed_target):
    """Batch 1: a good and a bad request; batch 2: a second good request; then an empty run (with the session's
    demo target: the flow's own training of it is tested by `blur process`, tests/reliability_runs.py)."""
    from flows.pipeline import process_requests

    repo = make_flow_repo(tmp_path_factory.mktemp("flow") / "repo", mlflow_db=migrated_mlflow_db)
    seed_target(repo)
    subjects = tiny_subjects()
    inbox = repo / "data" / "requests" / "inbox"
    inbox.mkdir(parents=True)
    (inbox / "good.json").write_text(request_json("req-good", [subjects[1]]))
    (inbox / "bad.json").write_text(request_json("req-bad", ["Nobody Anybody"]))
    first = process_requests(root=str(repo))
    (inbox / "second.json").write_text(request_json("req-second", [subjects[3]]))
    second = process_requests(root=str(repo))
    third = process_requests(root=str(repo))
    return {"repo": repo, "first": first, "second": second, "third": third}


def _client(repo: Path):
    from components.registry import connect, tracking_store

    return connect(tracking_store(repo))


def test_good_request_is_processed_with_its_result(two_batches):
    processed = two_batches["repo"] / "data" / "requests" / "processed"
    assert two_batches["first"]["processed"] == ["req-good"]
    result = json.loads((processed / "req-good.result.json").read_text())
    assert result["model_version"] == "1" and len(result["forget_ids"]) == 8
    assert result["dvc_md5"] and (processed / "req-good.json.dvc").exists()


def test_bad_request_is_rejected_with_a_reason_and_kept(two_batches):
    rejected = two_batches["repo"] / "data" / "requests" / "rejected"
    assert two_batches["first"]["rejected"] == ["req-bad"]  # its request id, never its file name
    assert json.loads((rejected / "bad.json").read_text())["request_id"] == "req-bad"
    assert "unknown subject 'Nobody Anybody'" in (rejected / "bad.json.reason.txt").read_text()


def test_second_request_starts_from_the_first_champion(two_batches):
    repo = two_batches["repo"]
    batch = repo / "runs" / two_batches["second"]["batch_id"]
    start = json.loads((batch / "reports" / "unlearn.json").read_text())["start_model"]
    assert Path(start).is_relative_to(repo / "models" / "champion")
    assert not (batch / "models").exists() and not (batch / "data").exists()  # purged once it served
    client = _client(repo)
    assert str(client.get_model_version_by_alias("blur-demo", "champion").version) == "2"


def test_both_requests_stay_forgotten(two_batches):
    batch = two_batches["repo"] / "runs" / two_batches["second"]["batch_id"]
    metrics = json.loads((batch / "reports" / "metrics.json").read_text())
    earlier = metrics["unlearned"]["earlier"]["req-good"]
    assert earlier["forget_prob"] < 0.5 * metrics["target"]["earlier"]["req-good"]["forget_prob"]
    assert metrics["unlearned"]["forget_prob"] < 0.5 * metrics["target"]["forget_prob"]


def test_processing_again_processes_nothing_new(two_batches):
    assert two_batches["third"] == {"batch_id": None, "processed": [], "rejected": [], "failed": []}
    versions = _client(two_batches["repo"]).search_model_versions("name='blur-demo'")
    assert [str(v.version) for v in versions] == ["2"]  # version 1 held req-second's records: purged (retention: delete)


def test_each_processed_request_has_a_certificate_in_one_verified_chain(two_batches):
    from components.erasure.certificates import load_certificate, verify_chain

    repo = two_batches["repo"]
    assert verify_chain(repo) == []
    first, second = load_certificate(repo, "req-good"), load_certificate(repo, "req-second")
    assert second["previous_hash"] == first["certificate_hash"]
    assert str(second["model"]["version"]) == "2" and "1" in [str(v) for v in second["retention"]["versions_purged"]]


def test_results_are_prefect_artifacts(two_batches):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["deletion-batch", "deletion-metrics"])))
    kinds = {a.type for a in artifacts}
    assert {"markdown", "table"} <= kinds
    assert any("req-second" in str(a.data) for a in artifacts)
