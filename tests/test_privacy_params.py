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


def test_dvc_errors_name_a_request_file_by_a_hash_never_by_its_path(tmp_path, monkeypatch):
    """DVC's stderr quotes the paths it was given (the message below is what `dvc move -q` printed);
    the error goes into Prefect states and logs. The failure is injected, DVC's words are real."""
    import subprocess
    import sys

    import pytest

    from components.data import versioning
    from components.paths import Paths

    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "--quiet"], cwd=tmp_path, check=True)
    source = Paths(tmp_path).inbox / "jane-doe.json"
    source.parent.mkdir(parents=True)
    source.write_text("{}")
    (tmp_path / "data" / "requests" / "inbox" / "jane-doe.json.dvc").write_text("outs:\n- md5: 99914b932bd37a50b983c5e7c90ae93b\n  path: jane-doe.json\n")
    said = ("ERROR: failed to move 'data/requests/inbox/jane-doe.json' -> 'data/requests/processed/req-1.json' - "
            f"[Errno 2] No such file or directory: '{tmp_path}/data/requests/inbox/jane-doe.json'")
    monkeypatch.setattr(versioning.subprocess, "run",
                        lambda args, **kw: subprocess.CompletedProcess(args, 1, stdout="", stderr=said))
    with pytest.raises(versioning.VersioningError) as raised:
        versioning.move(tmp_path, source, Paths(tmp_path).processed / "req-1.json")
    message = str(raised.value)
    assert "jane" not in message.lower() and message.startswith("dvc move failed: ERROR: failed to move 'file-")
