"""`blur certificate --verify` audits every erasure against three records that must agree: the
certificate chain, the processed results and MLflow (certificate.* tags, model versions). A real
MLflow SQLite registry, real certificates and results."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from components.data.inbox import Inbox
from components.erasure.certificates import (ErasureEvidence, certificates_dir, issue_certificate,
                                             log_certificate_to_mlflow)
from components.jsonfiles import write_json
from components.paths import Paths
from flows.cli import app
from registry_fixtures import (  # noqa: F401  (fixtures)
    migrated_mlflow_db,
    own_mlflow_env,
    register_sample,
    sample_metrics,
    tiny_model_dir,
)

pytestmark = pytest.mark.usefixtures("undrawn_plots")  # the registry's bookkeeping, not its pictures

GATE = {"passed": True, "reasons": [], "checks": []}
runner = CliRunner()


def verify(root: Path, *extra: str):
    return runner.invoke(app, ["certificate", "--verify", *extra, "--root", str(root)])


@pytest.fixture
def erased(tmp_path, migrated_mlflow_db, tiny_model_dir, monkeypatch) -> Path:
    """Two requests erased by versions 1 and 2, each with its result, certificate and MLflow tag."""
    from components.registry import connect, tracking_store

    own_mlflow_env(monkeypatch)
    root = tmp_path / "root"
    root.mkdir()
    shutil.copyfile(migrated_mlflow_db, root / "mlflow.db")
    store = tracking_store(root)
    client = connect(store)
    inbox = Inbox(Paths(root))
    for request_id in ("req-1", "req-2"):
        decision = register_sample(store, tiny_model_dir, tmp_path / request_id, gate={"max_forget_prob_ratio": 0.5},
                                   request_id=request_id, processed={})
        data = json.dumps({"request_id": request_id, "received_at": "2026-11-28T09:00:00Z", "subjects": ["A"]})
        (inbox.paths.inbox / f"{request_id}.json").write_text(data)
        (pending,), _ = inbox.take()
        path = issue_certificate(root, ErasureEvidence(
            request_id=request_id, request_sha256=hashlib.sha256(data.encode()).hexdigest(),
            forget_ids=["0123456789abcdef"], model_name="blur-test", model_version=str(decision.version),
            weights_sha256="ab" * 32, metrics=sample_metrics(), gate=GATE, run_id=decision.run_id))
        log_certificate_to_mlflow(client, "blur-test", str(decision.version), path)
        inbox.complete(pending, {"forget_ids": ["0123456789abcdef"], "model_version": str(decision.version)})
    return root


def test_verify_passes_when_chain_results_and_registry_agree_and_json_says_so(erased):
    result = verify(erased, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["intact"] and report["registry_checked"] and report["certificates"] == 2
    assert [(r["request_id"], r["certificate"], r["result"], r["registry_tag"], r["version_in_registry"])
            for r in report["requests"]] == [("req-1", True, True, True, True), ("req-2", True, True, True, True)]


def test_verify_fails_when_the_whole_chain_was_deleted(erased):
    shutil.rmtree(certificates_dir(erased))
    result = verify(erased)
    assert result.exit_code == 1 and "no certificate in data/certificates" in " ".join(result.output.split())


def test_verify_fails_on_a_chain_shortened_consistently_by_hand(erased):
    """The last certificate removed and the head moved back: the local chain is consistent, MLflow is not."""
    folder = certificates_dir(erased)
    for suffix in (".json", ".md"):
        (folder / f"req-2{suffix}").unlink()
    first = json.loads((folder / "req-1.json").read_text())
    write_json(Paths(erased).certificate_head, {"sequence": 1, "request_id": "req-1",
                                                "certificate_hash": first["certificate_hash"]})
    result = verify(erased, "--json")
    assert result.exit_code == 1
    assert any("req-2" in problem and "no certificate" in problem for problem in json.loads(result.output)["problems"])


def test_verify_fails_on_a_certificate_whose_model_version_is_not_in_the_registry(erased):
    from components.registry import connect, tracking_store

    client = connect(tracking_store(erased))
    client.delete_registered_model_alias("blur-test", "champion")
    client.delete_model_version("blur-test", "2")  # by hand, not by retention (no erasure_purged record)
    result = verify(erased)
    assert result.exit_code == 1 and "version 2, which is not in the registry" in " ".join(result.output.split())


def test_verify_accepts_a_version_that_retention_purged(erased):
    from components.registry import connect, tracking_store
    from components.registry.retention import purge_superseded_versions

    purge_superseded_versions(connect(tracking_store(erased)), "blur-test", "2", "delete")
    result = verify(erased)
    assert result.exit_code == 0, result.output
