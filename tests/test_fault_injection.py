"""SIGKILL at each named point of the flow, then the next run: the erasure invariants still hold.

One flow repository; at every point a new one-record request arrives and a run is killed there
(in a forked child: no clean-up, like a crash); the next run picks up what the killed one left.
A last run without a kill finishes everything. Then: every request ends in exactly one place,
one model version per batch, the alias points at the newest erasure, every erasure has a
certificate in one verified chain, and no batch retrained on a record erased before it.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import signal
from datetime import datetime, timezone
from pathlib import Path

import pytest

from components.faults import POINTS
from pipeline_repo import make_flow_repo
from stub_stages import stubbed_stages

pytestmark = pytest.mark.slow


def _import_what_each_run_imports() -> None:
    """Import here what a flow run imports on first use (Great Expectations alone takes seconds of CPU),
    so each forked run inherits it instead of importing it again; what the runs do is unchanged."""
    import great_expectations  # noqa: F401  (components/validation/gx_run.py)
    import matplotlib.figure  # noqa: F401  (components/reports/plots.py)

    import components.erasure.certificates  # noqa: F401  (components/erasure/record.py)
    import components.evaluation.cache  # noqa: F401
    import components.registry.retention  # noqa: F401


def _run(repo: Path, point: str | None) -> int:
    def target() -> None:
        if point:
            os.environ["BLUR_KILL_AT"] = point
        from flows.pipeline import process_requests

        process_requests(root=str(repo))

    child = multiprocessing.get_context("fork").Process(target=target)
    child.start()
    child.join(600)
    return child.exitcode


def _free_slot(name: str) -> None:
    """What an operator does after a crash when the Prefect server does not reclaim leases (the
    test server runs no lease reaper): free the killed run's concurrency slot."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(active_slots=0))
        except ObjectNotFound:
            pass


def _request(repo: Path, index: int, record) -> None:
    inbox = repo / "data" / "requests" / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    (inbox / f"r{index}.json").write_text(json.dumps({
        "request_id": f"req-{index}", "received_at": f"2026-12-01T00:00:{index:02d}Z",
        "records": [{"question": record.question}]}))


def _retain_ids(batch: Path) -> set[str]:
    with (batch / "reports" / "per_item" / "unlearned_retain.csv").open() as handle:
        return {row["record_id"] for row in csv.DictReader(handle)}


def test_sigkill_at_every_point_then_a_rerun_keeps_every_invariant(tmp_path, prefect_server, migrated_mlflow_db,
                                                                     seed_target):
    from components.data.demo_world import generate_world
    from components.registry import connect, tracking_store
    from components.erasure.certificates import load_certificate, verify_chain

    limit = "blur-faults"  # this test's own slot, freed after each kill
    repo = make_flow_repo(tmp_path / "repo", {"flow.concurrency_limit": limit}, mlflow_db=migrated_mlflow_db)
    seed_target(repo)
    world, _ = generate_world(seed=0, n_subjects=6, n_holdout_subjects=2, facts_per_subject=8)
    _import_what_each_run_imports()
    with stubbed_stages():  # the invariants are about orchestration: no training in the forked runs
        for index, point in enumerate(POINTS):
            _request(repo, index, world[index * 5])
            assert _run(repo, point) == -signal.SIGKILL, f"the run did not reach the point '{point}'"
            _free_slot(limit)
        assert _run(repo, None) == 0

    requests = repo / "data" / "requests"
    ids = [f"req-{i}" for i in range(len(POINTS))]
    results = {json.loads(p.read_text())["request_id"]: json.loads(p.read_text())
               for p in (requests / "processed").glob("*.result.json")}
    failed = [p.name.removesuffix(".reason.txt") for p in (requests / "failed").glob("*.reason.txt")]
    waiting = [p.name for folder in ("inbox", "rejected") for p in (requests / folder).glob("*.json")]
    assert waiting == [] and sorted(list(results) + failed) == sorted(ids), "a request is lost or in two places"
    assert results, "nothing was processed"

    client = connect(tracking_store(repo))
    runs = client.search_runs([client.get_experiment_by_name("blur-unlearning").experiment_id])
    by_batch: dict[str, list] = {}
    for run in runs:
        if run.data.tags.get("batch_id"):
            by_batch.setdefault(run.data.tags["batch_id"], []).append(run)
    assert all(len(found) == 1 for found in by_batch.values()), "a batch made more than one run"
    versions = {result["batch_id"]: result["model_version"] for result in results.values()}
    assert len(set(versions.values())) == len(versions), "two batches share a model version"
    champion = client.get_model_version_by_alias("blur-demo", "champion")
    assert str(champion.version) == str(max(int(v) for v in versions.values()))

    assert verify_chain(repo) == []
    assert all(load_certificate(repo, request_id) for request_id in results)

    # A request is erased from its certificate on, also while its file still waited to settle (a kill at
    # 'settle' or 'push' leaves it certified, and the next run settles it): the earlier of the two times.
    erased_since = {request_id: min(datetime.fromisoformat(result["processed_at"]),
                                    datetime.fromisoformat(load_certificate(repo, request_id)["times"]["erased_at"]))
                    for request_id, result in results.items()}
    assert any(erased_since[r] < datetime.fromisoformat(results[r]["processed_at"]) for r in results), \
        "no erasure was certified before it settled: the window is not exercised"
    for batch in (repo / "runs").iterdir():  # no batch trained on a record erased by an earlier run
        retain = batch / "reports" / "per_item" / "unlearned_retain.csv"
        if not retain.exists():
            continue
        started = datetime.fromtimestamp((batch / "reports" / "unlearn_log.jsonl").stat().st_mtime, timezone.utc)
        erased = {record for request_id, result in results.items()
                  if erased_since[request_id] < started for record in result["forget_ids"]}
        assert not (_retain_ids(batch) & erased), f"batch {batch.name} retrained on erased records"
