"""Erase from every copy: older model versions, failed candidates and local work folders."""

from __future__ import annotations

import os
import time
from functools import partial
from pathlib import Path

import pytest

from components.registry import Candidate, champion, register_candidate
from components.registry.retention import (
    PURGED_TAG,
    SUPERSEDED_TAG,
    RetentionError,
    erased_data_holders,
    local_copies,
    purge_local_copies,
    purge_superseded_versions,
    stale_run_folders,
)
from registry_fixtures import (  # noqa: F401  (fixtures)
    migrated_mlflow_db,
    mlflow_store,
    register_sample,
    registry_config,
    sample_diagnostics,
    sample_metrics,
    sample_summary,
    tiny_model_dir,
)

pytestmark = pytest.mark.usefixtures("undrawn_plots")  # the registry's bookkeeping, not its pictures

MODEL = "blur-test"
GATE = {"max_forget_prob_ratio": 0.5}


register = partial(register_sample, gate=GATE, steps=3, processed={})


@pytest.fixture
def history(mlflow_store, tiny_model_dir, tmp_path):
    """Versions 1 and 2, a candidate that failed its gate, then version 3 (the new champion)."""
    decisions = [register(mlflow_store, tiny_model_dir, tmp_path / "r1", request_id="req-1"),
                 register(mlflow_store, tiny_model_dir, tmp_path / "r2", request_id="req-2"),
                 register(mlflow_store, tiny_model_dir, tmp_path / "rf", request_id="req-f",
                          metrics=sample_metrics(forget_prob=0.79)),  # forget ratio 0.99 > 0.5: fails
                 register(mlflow_store, tiny_model_dir, tmp_path / "r3", request_id="req-3")]
    client = mlflow_store.client()
    client.set_registered_model_alias(MODEL, "previous", "2")
    failed_model = client.search_logged_models([client.get_run(decisions[2].run_id).info.experiment_id],
                                               filter_string="tags.gate = 'failed'")[0]
    return client, decisions, failed_model


def weights_present(location: str) -> bool:
    folder = Path(location.removeprefix("file://"))
    return folder.is_dir() and any(folder.rglob("*.safetensors"))


def aliases(client) -> dict[str, str]:
    return {name: str(version) for name, version in client.get_registered_model(MODEL).aliases.items()}


def processed(version: str, batch: str = "batch-aaa", request_id: str = "req-3") -> list[dict]:
    return [{"request_id": request_id, "model_version": version, "batch_id": batch,
             "processed_at": "2026-12-01T12:00:00+00:00"}]


def test_delete_removes_earlier_versions_their_weights_and_failed_candidates(history, mlflow_store, tmp_path):
    client, decisions, failed_model = history
    sources = {v: client.get_model_version(MODEL, v).source for v in ("1", "2")}
    assert all(weights_present(source) for source in sources.values())

    result = purge_superseded_versions(client, MODEL, "3", "delete")

    assert result.superseded == ("1", "2") and result.purged == ("1", "2")
    assert result.aliases_removed == ("previous@2",) and result.candidates_purged == (failed_model.model_id,)
    assert [str(v.version) for v in client.search_model_versions(f"name='{MODEL}'")] == ["3"]
    assert not any(weights_present(source) for source in sources.values())
    assert not weights_present(failed_model.artifact_location)
    for decision in decisions[:2]:
        tags = client.get_run(decision.run_id).data.tags
        assert tags[SUPERSEDED_TAG] == "3" and PURGED_TAG in tags
    assert aliases(client) == {"champion": "3"}
    served = champion(MODEL, store=mlflow_store, dst=tmp_path / "served")
    assert served.version == "3" and any(served.model_dir.glob("*.safetensors"))
    assert erased_data_holders(client, MODEL, processed=processed("3"), runs_root=tmp_path / "runs") == []


def test_delete_again_after_it_finished_changes_nothing(history):
    client, _, _ = history
    purge_superseded_versions(client, MODEL, "3", "delete")
    again = purge_superseded_versions(client, MODEL, "3", "delete")
    assert again.superseded == () and again.purged == () and again.candidates_purged == ()


def test_archive_tags_and_unaliases_earlier_versions_but_keeps_their_weights(history, tmp_path):
    client, _, failed_model = history
    result = purge_superseded_versions(client, MODEL, "3", "archive")

    assert result.superseded == ("1", "2") and result.purged == () and result.candidates_purged == ()
    assert aliases(client) == {"champion": "3"}
    for version in ("1", "2"):
        found = client.get_model_version(MODEL, version)
        assert found.tags[SUPERSEDED_TAG] == "3" and found.tags["erasure_retention"] == "archive"
        assert weights_present(found.source)
    assert client.get_logged_model(failed_model.model_id).tags[SUPERSEDED_TAG] == "3"
    holders = erased_data_holders(client, MODEL, processed=processed("3"), runs_root=tmp_path / "runs")
    assert [h.kind for h in holders] == ["model version", "model version", "logged model"]
    assert "version 1 (archive)" in holders[0].what and "req-3" in holders[0].why


def test_keep_changes_nothing_and_status_lists_what_still_holds_the_data(history, tmp_path):
    client, _, _ = history
    result = purge_superseded_versions(client, MODEL, "3", "keep")
    assert result.superseded == ("1", "2") and result.purged == () and result.aliases_removed == ()
    assert aliases(client) == {"champion": "3", "previous": "2"}
    assert SUPERSEDED_TAG not in client.get_model_version(MODEL, "1").tags
    holders = erased_data_holders(client, MODEL, processed=processed("3"), runs_root=tmp_path / "runs")
    assert len([h for h in holders if h.kind == "model version"]) == 2


def test_unknown_policy_or_version_is_refused_before_anything_changes(history):
    client, _, _ = history
    with pytest.raises(RetentionError, match="registry.retention"):
        purge_superseded_versions(client, MODEL, "3", "shred")
    with pytest.raises(RetentionError, match="no version 9"):
        purge_superseded_versions(client, MODEL, "9", "delete")
    assert len(client.search_model_versions(f"name='{MODEL}'")) == 3


# --------------------------------------------------------------------------- local copies


def make_batch(root: Path, name: str) -> Path:
    folder = root / "runs" / name
    (folder / "data" / "prepared").mkdir(parents=True)
    (folder / "data" / "prepared" / "forget.jsonl").write_text('{"question": "q", "answer": "a"}\n')
    (folder / "data" / "prepared" / "resolution.json").write_text("{}")
    (folder / "checkpoints" / "unlearn").mkdir(parents=True)
    (folder / "checkpoints" / "unlearn" / "state.pt").write_bytes(b"x")
    return folder


def test_purge_local_copies_removes_batch_data_and_the_old_champion_and_keeps_reports(tmp_path):
    make_batch(tmp_path, "batch-aaa")
    make_batch(tmp_path, "batch-bbb")
    (tmp_path / "runs" / "batch-aaa" / "reports").mkdir()
    (tmp_path / "runs" / "batch-aaa" / "reports" / "metrics.json").write_text("{}")
    (tmp_path / "models" / "champion").mkdir(parents=True)
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (tmp_path / "runs" / "link").symlink_to(outside)

    removed = purge_local_copies(tmp_path, local_copies(tmp_path))

    assert removed == ["runs/batch-aaa/data", "runs/batch-aaa/checkpoints", "runs/batch-bbb/data",
                       "runs/batch-bbb/checkpoints", "runs/link", "models/champion"]
    assert [p.name for p in (tmp_path / "runs").rglob("*") if p.is_file()] == ["metrics.json"]
    assert outside.is_dir()
    assert purge_local_copies(tmp_path, local_copies(tmp_path)) == []


def test_purge_local_copies_refuses_paths_outside_the_root_and_removes_nothing(tmp_path):
    batch = make_batch(tmp_path, "batch-aaa")
    for bad in (tmp_path, tmp_path.parent, tmp_path / "runs" / ".." / ".."):
        with pytest.raises(RetentionError, match="refusing"):
            purge_local_copies(tmp_path, [batch, bad])
    assert batch.is_dir()


def test_stale_run_folders_are_processed_batches_and_folders_older_than_the_last_erasure(tmp_path):
    done = make_batch(tmp_path, "batch-done")
    old = make_batch(tmp_path, "batch-old")
    stamp = time.time() - 3600
    os.utime(old / "data" / "prepared" / "resolution.json", (stamp, stamp))
    make_batch(tmp_path, "batch-new")  # prepared after the erasure: a failed batch waiting to be retried
    erased_at = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() - 60))
    results = [{"request_id": "req-1", "batch_id": "batch-done", "model_version": "2", "processed_at": erased_at}]

    assert stale_run_folders(tmp_path / "runs", results) == [done, old]
    assert stale_run_folders(tmp_path / "runs", []) == []
    holders = erased_data_holders(None, MODEL, processed=results, runs_root=tmp_path / "runs")
    assert [(h.kind, Path(h.what).name) for h in holders] == [("folder", "batch-done"), ("folder", "batch-old")]


def test_status_shows_what_still_holds_erased_data_and_requests_without_a_certificate(
        mlflow_store, tmp_path, monkeypatch):
    import json
    import shutil

    from typer.testing import CliRunner

    from flows.cli import app

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store.tracking_uri)
    shutil.copyfile(Path(__file__).parents[1] / "params.yaml", tmp_path / "params.yaml")
    make_batch(tmp_path, "batch-done")
    processed_dir = tmp_path / "data" / "requests" / "processed"
    processed_dir.mkdir(parents=True)
    (processed_dir / "req-1.result.json").write_text(json.dumps(
        {"request_id": "req-1", "forget_ids": ["0123456789abcdef"], "batch_id": "batch-done",
         "model_version": "1", "processed_at": "2026-12-01T12:00:00+00:00"}))

    shown = CliRunner().invoke(app, ["status", "--root", str(tmp_path)])

    assert shown.exit_code == 0, shown.output
    assert "Still holding erased data" in shown.output and "runs/batch-done" in shown.output
    assert "without a deletion certificate: req-1" in shown.output
    shutil.rmtree(tmp_path / "runs" / "batch-done")
    cleaned = CliRunner().invoke(app, ["status", "--root", str(tmp_path)])
    assert "no older model version or batch folder holds it" in cleaned.output


def test_delete_names_the_evaluation_cache_entries_of_the_models_it_deleted(mlflow_store, tiny_model_dir, tmp_path):
    """Each logged model carries its evaluation-cache fingerprint; purging it hands the fingerprint back,
    so the flow drops its cached outputs with the weights (components.evaluation.cache)."""
    from components.evaluation.cache import EvalCache

    def with_fp(request_id, fp, passing=True):
        metrics = sample_metrics() if passing else sample_metrics(forget_prob=0.79)
        candidate = Candidate(metrics, sample_diagnostics(3), sample_summary(request_id), {}, tiny_model_dir, fp)
        return register_candidate(registry_config(**GATE), candidate, tmp_path / request_id, store=mlflow_store,
                                  processed_requests={})

    with_fp("req-1", "a" * 64)
    with_fp("req-f", "f" * 64, passing=False)
    with_fp("req-2", "b" * 64)
    cache = EvalCache(tmp_path / "cache")
    for fp in ("a" * 64, "f" * 64, "b" * 64):
        (cache.root / fp).mkdir(parents=True)
        (cache.root / fp / "targets-x.npz").write_bytes(b"0")

    result = purge_superseded_versions(mlflow_store.client(), MODEL, "2", "delete")
    assert sorted(result.eval_fingerprints) == ["a" * 64, "f" * 64]
    assert sorted(cache.purge(result.eval_fingerprints)) == ["a" * 64, "f" * 64]
    assert [p.name for p in cache.root.iterdir()] == ["b" * 64]  # the new champion's entries stay


def test_delete_never_removes_a_hand_registered_versions_folder(mlflow_store, tiny_model_dir, tmp_path):
    """A baseline registered by hand points at its own folder outside the pipeline's model folders:
    retention tags it and takes its aliases, but deletes only what this pipeline created."""
    import shutil

    baseline = tmp_path / "baselines" / "original"
    shutil.copytree(tiny_model_dir, baseline)
    client = mlflow_store.client()
    client.create_registered_model(MODEL)
    client.create_model_version(MODEL, str(baseline))  # by hand: no run of this pipeline
    client.set_registered_model_alias(MODEL, "baseline", "1")
    register(mlflow_store, tiny_model_dir, tmp_path / "r2", request_id="req-2")

    result = purge_superseded_versions(client, MODEL, "2", "delete")

    assert result.superseded == ("1",) and result.purged == () and result.not_ours == ("1",)
    assert baseline.is_dir() and any(baseline.glob("*.safetensors")), "the hand-registered folder is untouched"
    assert client.get_model_version(MODEL, "1").tags[SUPERSEDED_TAG] == "2"
    assert aliases(client) == {"champion": "2"}
