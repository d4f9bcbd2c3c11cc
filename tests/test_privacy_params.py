"""What MLflow records of a request: its id and content hash, never its file's path or name
(``jane-doe.json`` names a person). A real MLflow SQLite store."""

from __future__ import annotations

from components.registry import Candidate, register_candidate
from registry_fixtures import (  # noqa: F401  (fixtures)
    migrated_mlflow_db,
    mlflow_store,
    registry_config,
    sample_diagnostics,
    sample_metrics,
    sample_summary,
    tiny_model_dir,
)


def test_mlflow_params_name_the_request_by_id_never_by_its_file_path(mlflow_store, tiny_model_dir, tmp_path):
    config = registry_config(max_forget_prob_ratio=0.5).with_overrides({"request": "data/requests/jane-doe.json"})
    candidate = Candidate(sample_metrics(), sample_diagnostics(3), sample_summary("req-0001"), {}, tiny_model_dir)
    decision = register_candidate(config, candidate, tmp_path / "reports", store=mlflow_store, processed_requests={})
    run = mlflow_store.client().get_run(decision.run_id)
    recorded = " ".join(f"{k}={v}" for k, v in {**run.data.params, **run.data.tags}.items())
    assert "jane" not in recorded.lower()
    assert run.data.params["request.ids"] == "req-0001" and "request.req-0001.request_hash" in run.data.tags


def test_dvc_errors_name_a_request_file_by_a_hash_never_by_its_path(tmp_path):
    """DVC's errors quote the paths it was given; the error goes into Prefect states and logs. The failure is
    DVC's own: the request's ``.dvc`` file fails DVC's schema (a size that is not a number), and DVC's message
    names that file by its path, which holds the person's name."""
    import pytest

    from components.data import versioning
    from components.paths import Paths
    from pipeline_repo import dvc_init

    dvc_init(tmp_path, no_scm=True)
    source = Paths(tmp_path).inbox / "jane-doe.json"
    source.parent.mkdir(parents=True)
    source.write_text("{}")
    (tmp_path / "data" / "requests" / "inbox" / "jane-doe.json.dvc").write_text(
        "outs:\n- md5: 99914b932bd37a50b983c5e7c90ae93b\n  path: jane-doe.json\n  size: many\n")
    with pytest.raises(versioning.VersioningError) as raised:
        versioning.move(tmp_path, source, Paths(tmp_path).processed / "req-1.json")
    message = str(raised.value)
    assert message.startswith("dvc move failed: ERROR: ") and "validation failed" in message, message
    assert "jane" not in message.lower() and "file-" in message, message
    assert source.exists(), "nothing moved"


def test_record_ids_leave_for_mlflow_keyed_by_the_deployments_secret(mlflow_store, tiny_model_dir, tmp_path):
    """Issue 21, privacy: a record id is a hash of the record's text, so anyone who can guess a person's
    facts could find them in MLflow's ``requests.json``. What leaves is an HMAC of the id under a secret of
    this deployment (``Paths.record_id_key``: created once, owner-only, ignored by git and DVC); the ids
    inside the pipeline, and so sampling, caches and metrics, are unchanged."""
    import hmac
    import json
    import stat
    import subprocess
    from pathlib import Path

    from components.erasure.safe import keyed_hash, record_id_key
    from components.paths import Paths

    root = tmp_path / "deployment"
    key = record_id_key(Paths(root))
    assert len(key) >= 32 and record_id_key(Paths(root)) == key, "created once, then read"
    assert stat.S_IMODE(Paths(root).record_id_key.stat().st_mode) == 0o600
    assert record_id_key(Paths(tmp_path / "other")) != key, "each deployment has its own"
    ignored = subprocess.run(["git", "check-ignore", "-q", "data/.record-id-key"], cwd=Paths().root.resolve())
    assert ignored.returncode == 0, "the key is git-ignored"

    summary = sample_summary("req-0001")
    inside = list(summary.forget_ids)
    config = registry_config(max_forget_prob_ratio=0.5)
    candidate = Candidate(sample_metrics(), sample_diagnostics(3), summary, {}, tiny_model_dir)
    decision = register_candidate(config, candidate, tmp_path / "reports", store=mlflow_store, processed_requests={},
                                  record_id_key=key)
    client = mlflow_store.client()
    logged = json.loads(Path(client.download_artifacts(decision.run_id, "requests.json", str(tmp_path))).read_text())
    assert logged["forget_ids"] == [keyed_hash(key, record_id) for record_id in inside]
    assert not set(logged["forget_ids"]) & set(inside), "no record id leaves unkeyed"
    assert logged["forget_ids"][0] == hmac.new(key, inside[0].encode(), "sha256").hexdigest()[:16]
    assert logged["digests"] == {k: keyed_hash(key, getattr(summary, k)) for k in ("forget_digest", "retain_digest")}
    run = client.get_run(decision.run_id)
    assert run.data.params["request.forget_digest"] == logged["digests"]["forget_digest"]
    assert key.hex() not in json.dumps(logged) + json.dumps(run.data.params) + json.dumps(run.data.tags)
    assert summary.forget_ids == inside, "the pipeline's own ids are not changed"


def test_request_file_hashes_leave_for_mlflow_keyed_by_the_deployments_secret(mlflow_store, tiny_model_dir, tmp_path):
    """Issue 21, privacy: a request's content hash (``request_hash``, a hash of its id, subjects and records)
    and its file's DVC md5 can be checked against a guessed request; in MLflow's ``requests.json``, the run's
    ``request.<id>.*`` tags and the run report they are keyed like the record ids."""
    import json
    from pathlib import Path

    from components.erasure.safe import keyed_hash, record_id_key
    from components.paths import Paths

    key = record_id_key(Paths(tmp_path / "deployment"))
    summary, md5 = sample_summary("req-0001"), "0123456789abcdef0123456789abcdef"
    plain = summary.request_hashes["req-0001"]
    candidate = Candidate(sample_metrics(), sample_diagnostics(3), summary, {"req-0001": md5}, tiny_model_dir)
    decision = register_candidate(registry_config(max_forget_prob_ratio=0.5), candidate, tmp_path / "reports",
                                  store=mlflow_store, processed_requests={}, record_id_key=key)
    client = mlflow_store.client()
    logged = json.loads(Path(client.download_artifacts(decision.run_id, "requests.json", str(tmp_path))).read_text())
    assert logged["requests"][0]["request_hash"] == keyed_hash(key, plain)
    assert logged["requests"][0]["dvc_md5"] == keyed_hash(key, md5)
    run = client.get_run(decision.run_id)
    assert run.data.tags["request.req-0001.request_hash"] == keyed_hash(key, plain)
    assert run.data.tags["request.req-0001.dvc_md5"] == keyed_hash(key, md5)
    report = (tmp_path / "reports" / "run_report.md").read_text()
    everything = json.dumps(logged) + json.dumps(run.data.params) + json.dumps(run.data.tags) + report
    assert plain not in everything and md5 not in everything


def test_prefect_never_stores_a_pipeline_tasks_return_value():
    """Task results can carry request file names (track-requests returns {file name: md5}); with result
    persistence on by default (PREFECT_RESULTS_PERSIST_BY_DEFAULT) Prefect would write them to its storage."""
    from prefect import Task

    from flows import pipeline

    tasks = {name: value for name, value in vars(pipeline).items() if isinstance(value, Task)}
    assert "track_requests" in tasks and len(tasks) >= 10
    assert {name: task.persist_result for name, task in tasks.items()} == {name: False for name in tasks}
