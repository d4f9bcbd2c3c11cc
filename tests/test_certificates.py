"""Deletion certificates: what they record, what they never hold, and the hash chain."""

from __future__ import annotations

import hashlib
import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

import pytest
from typer.testing import CliRunner

from components.data.demo_world import generate_world
from components.registry import Candidate, register_candidate
from components.erasure.certificates import (
    HEAD_FILE,
    CertificateError,
    ErasureEvidence,
    certificate_hash,
    certificates_dir,
    chain_head,
    issue_certificate,
    load_certificate,
    log_certificate_to_mlflow,
    missing_certificates,
    verify_chain,
    weights_sha256,
)
from components.erasure.safe import keyed_hash, record_id_key
from components.paths import Paths
from flows.cli import app
from registry_fixtures import (  # noqa: F401  (fixtures)
    migrated_mlflow_db,
    mlflow_store,
    registry_config,
    sample_diagnostics,
    sample_metrics,
    sample_summary,
    tiny_model_dir,
)

WEIGHTS = "ab" * 32
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)


def gate_dict(passed: bool = True) -> dict:
    return {"passed": passed, "reasons": [], "checks": [
        {"metric": "forget_prob_ratio", "op": "<=", "threshold": 0.5, "value": 0.125, "passed": passed,
         "setting": "gate.max_forget_prob_ratio", "reason": None}]}


def evidence(request_id: str = "req-1", **changes) -> ErasureEvidence:
    values = dict(request_id=request_id, request_sha256=hashlib.sha256(request_id.encode()).hexdigest(),
                  forget_ids=["0123456789abcdef", "fedcba9876543210"], model_name="blur-test",
                  model_version="2", weights_sha256=WEIGHTS, metrics=sample_metrics(), gate=gate_dict(),
                  received_at="2026-11-28T09:30:00+00:00", erased_at="2026-12-01T11:59:00+00:00",
                  request_dvc_md5="0123456789abcdef0123456789abcdef", batch_id="batch-0123456789ab",
                  versions_superseded=["1"], versions_purged=["1"], local_copies_removed=["runs/batch-0123456789ab"])
    return ErasureEvidence(**(values | changes))


def issue_chain(root: Path, ids=("req-1", "req-2", "req-3")) -> list[Path]:
    return [issue_certificate(root, evidence(request_id), now=NOW) for request_id in ids]


# --------------------------------------------------------------------------- content


def test_certificate_of_a_request_naming_a_subject_holds_no_name_and_no_record_text(tmp_path):
    world, _ = generate_world(seed=3, n_subjects=3, n_holdout_subjects=0, facts_per_subject=8)
    subject = world[0].subject
    records = [record for record in world if record.subject == subject]
    request_file = tmp_path / "request.json"
    request_file.write_text(json.dumps({
        "request_id": "erase-subject", "received_at": "2026-11-30T08:00:00+00:00", "subjects": [subject],
        "records": [{"question": records[0].question, "answer": records[0].answer}],
        "reason": f"{subject} asked for erasure under GDPR Art. 17"}))
    path = issue_certificate(tmp_path, evidence(
        "erase-subject", request_sha256=hashlib.sha256(request_file.read_bytes()).hexdigest(),
        forget_ids=[record.record_id for record in records]))

    written = path.read_text() + path.with_suffix(".md").read_text()
    pieces = {subject, *subject.split()} | {text for r in records for text in (r.question, r.answer)}
    assert [piece for piece in pieces if len(piece) > 3 and piece in written] == []
    certificate = load_certificate(tmp_path, "erase-subject")
    key = record_id_key(Paths(tmp_path))  # format 3: the file hash keyed, so a guessed file cannot be tested
    assert certificate["request"]["content_sha256"] == keyed_hash(key, hashlib.sha256(request_file.read_bytes()).hexdigest())
    assert certificate["forget_set"]["n_records"] == len(records)


def test_certificate_records_the_metrics_that_show_forgetting_before_and_after(tmp_path):
    metrics = sample_metrics()
    metrics["unlearned"] |= {"forget_holdout_ks_p": 0.62, "forget_holdout_auc": 0.51}
    certificate = load_certificate(tmp_path, Path(issue_certificate(tmp_path, evidence(metrics=metrics))).stem)

    shown = certificate["evidence"]["metrics"]
    assert shown["forget_prob"] == {"target": 0.8, "oracle": 0.05, "unlearned": 0.1}
    assert shown["forget_holdout_ks_p"] == {"unlearned": 0.62}
    assert shown["forget_holdout_auc"] == {"unlearned": 0.51}
    assert shown["mia_auc"]["unlearned"] == 0.7 and shown["forget_quality"]["unlearned"] == 0.4
    assert certificate["evidence"]["oracle"] is True
    assert certificate["gate"]["passed"] is True and certificate["gate"]["checks"][0]["value"] == 0.125
    assert certificate["retention"]["versions_purged"] == ["1"]
    assert certificate["model"] == {"name": "blur-test", "version": "2", "run_id": None, "weights_sha256": WEIGHTS}
    assert set(certificate["times"]) == {"received_at", "erased_at", "issued_at"}


def test_certificate_without_an_oracle_says_forget_quality_was_not_measured(tmp_path):
    path = issue_certificate(tmp_path, evidence(metrics=sample_metrics(oracle=False)))
    certificate = json.loads(path.read_text())
    assert "forget_quality" not in certificate["evidence"]["metrics"]
    assert certificate["evidence"]["oracle"] is False
    assert "forget quality was not measured" in path.with_suffix(".md").read_text()


@pytest.mark.parametrize("field", ["request_sha256", "weights_sha256", "model_version", "batch_id", "forget_ids"])
def test_text_in_an_id_or_hash_field_is_refused_without_repeating_it(tmp_path, field):
    text = "Jane Q. Doe was born in Springfield on 3 May 1961"
    with pytest.raises(CertificateError) as raised:
        issue_certificate(tmp_path, evidence(**{field: [text] if field == "forget_ids" else text}))
    assert field in str(raised.value) and "Springfield" not in str(raised.value)
    assert not certificates_dir(tmp_path).exists() or not list(certificates_dir(tmp_path).iterdir())


def test_no_certificate_for_a_candidate_that_failed_its_gate(tmp_path):
    with pytest.raises(CertificateError, match="gate.passed"):
        issue_certificate(tmp_path, evidence(gate=gate_dict(passed=False)))
    assert chain_head(tmp_path).sequence == 0


def test_weights_hash_covers_every_safetensors_file_and_changes_with_one_byte(tiny_model_dir, tmp_path):
    copy = Path(shutil.copytree(tiny_model_dir, tmp_path / "copy"))
    assert weights_sha256(copy) == weights_sha256(tiny_model_dir)
    shard = next(copy.glob("*.safetensors"))
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1
    shard.write_bytes(bytes(data))
    assert weights_sha256(copy) != weights_sha256(tiny_model_dir)
    with pytest.raises(CertificateError, match="safetensors"):
        weights_sha256(tmp_path / "empty")


# --------------------------------------------------------------------------- the chain


def test_each_certificate_holds_the_previous_ones_hash_and_the_head_the_last(tmp_path):
    paths = issue_chain(tmp_path)
    chain = [json.loads(path.read_text()) for path in paths]
    assert [c["sequence"] for c in chain] == [1, 2, 3]
    assert chain[0]["previous_hash"] == "0" * 64
    assert [c["previous_hash"] for c in chain[1:]] == [c["certificate_hash"] for c in chain[:-1]]
    assert all(certificate_hash(c) == c["certificate_hash"] for c in chain)
    assert chain_head(tmp_path).certificate_hash == chain[-1]["certificate_hash"]
    assert verify_chain(tmp_path) == []


def test_verify_finds_an_edited_certificate(tmp_path):
    path = issue_chain(tmp_path)[1]
    certificate = json.loads(path.read_text())
    certificate["evidence"]["metrics"]["forget_prob"]["unlearned"] = 0.01
    path.write_text(json.dumps(certificate, indent=2))
    problems = verify_chain(tmp_path)
    assert any("req-2.json" in p and "edited" in p for p in problems), problems


def test_verify_finds_an_edited_markdown_rendering(tmp_path):
    path = issue_chain(tmp_path)[0].with_suffix(".md")
    path.write_text(path.read_text().replace("passed", "waived"))
    assert any("req-1.md" in p for p in verify_chain(tmp_path))


@pytest.mark.parametrize("deleted", ["req-1", "req-2", "req-3"])
def test_verify_finds_a_deleted_certificate(tmp_path, deleted):
    issue_chain(tmp_path)
    (certificates_dir(tmp_path) / f"{deleted}.json").unlink()
    assert verify_chain(tmp_path) != []


def test_verify_finds_reordered_certificates(tmp_path):
    first, second, _ = issue_chain(tmp_path)
    one, two = first.read_text(), second.read_text()
    first.write_text(two)
    second.write_text(one)
    assert any("renamed" in p for p in verify_chain(tmp_path))
    # renumbered to match the new order: the hashes and links break instead
    a, b = json.loads(two), json.loads(one)
    a["sequence"], b["sequence"] = 1, 2
    first.write_text(json.dumps(a))
    second.write_text(json.dumps(b))
    assert any("previous_hash" in p for p in verify_chain(tmp_path))


def test_verify_finds_a_missing_head(tmp_path):
    issue_chain(tmp_path, ids=("req-1",))
    (certificates_dir(tmp_path) / HEAD_FILE).unlink()
    assert any(HEAD_FILE in p for p in verify_chain(tmp_path))


def test_the_head_is_written_as_before_and_a_broken_one_is_named(tmp_path):
    last = json.loads(issue_chain(tmp_path, ids=("req-1", "req-2"))[-1].read_text())
    head = certificates_dir(tmp_path) / HEAD_FILE
    assert head.read_text() == json.dumps({"sequence": 2, "request_id": "req-2",
                                           "certificate_hash": last["certificate_hash"]}, indent=2) + "\n"
    head.write_text(json.dumps({"sequence": "2", "request_id": "req-2", "certificate_hash": last["certificate_hash"]}))
    with pytest.raises(CertificateError, match=rf"{HEAD_FILE} does not hold a valid ChainHead: sequence"):
        chain_head(tmp_path)
    with pytest.raises(CertificateError, match="ChainHead"):
        issue_certificate(tmp_path, evidence("req-3"), now=NOW)
    assert any(f"{HEAD_FILE} does not hold a valid ChainHead" in p for p in verify_chain(tmp_path))


def test_a_certificate_that_is_not_one_is_named_by_load_verify_and_the_ledger(tmp_path):
    """Its hash recomputed after the edit (so the chain's hashes hold): the schema check still finds it,
    naming the key, never the value; the ledger counts it as erased but unreadable (fail closed)."""
    from components.erasure.ledger import certified_requests

    path = issue_chain(tmp_path, ids=("req-1",))[0]
    assert certified_requests(tmp_path)["req-1"].readable
    assert certified_requests(tmp_path)["req-1"].erased_forget_prob == 0.1  # sample_metrics()
    certificate = json.loads(path.read_text())
    certificate["model"]["version"] = "Jane Doe"
    certificate["certificate_hash"] = certificate_hash(certificate)
    path.write_text(json.dumps(certificate, indent=2))
    (certificates_dir(tmp_path) / HEAD_FILE).write_text(json.dumps(
        {"sequence": 1, "request_id": "req-1", "certificate_hash": certificate["certificate_hash"]}))
    problems = verify_chain(tmp_path)
    assert problems == ["req-1.json does not hold a valid Certificate: model.version: String should match pattern "
                        "'^(?:[0-9]{1,12})$'"], problems
    with pytest.raises(CertificateError, match=r"req-1\.json does not hold a valid Certificate: model\.version"):
        load_certificate(tmp_path, "req-1")
    assert not certified_requests(tmp_path)["req-1"].readable


def test_issuing_again_keeps_the_one_certificate_of_a_request(tmp_path):
    first = issue_certificate(tmp_path, evidence("req-1"), now=NOW)
    text = first.read_text()
    again = issue_certificate(tmp_path, evidence("req-1", model_version="9"))
    assert again == first and first.read_text() == text and chain_head(tmp_path).sequence == 1


def test_a_certificate_written_before_a_crash_is_completed_not_duplicated(tmp_path):
    issue_certificate(tmp_path, evidence("req-1"), now=NOW)
    head_before = (certificates_dir(tmp_path) / HEAD_FILE).read_text()
    path = issue_certificate(tmp_path, evidence("req-2"), now=NOW)
    (certificates_dir(tmp_path) / HEAD_FILE).write_text(head_before)  # the crash: head not yet moved
    path.with_suffix(".md").unlink()
    assert verify_chain(tmp_path) != []
    assert issue_certificate(tmp_path, evidence("req-2"), now=NOW) == path
    assert verify_chain(tmp_path) == [] and chain_head(tmp_path).sequence == 2


def test_missing_certificates_lists_processed_requests_without_one(tmp_path):
    issue_chain(tmp_path, ids=("req-1",))
    assert missing_certificates(tmp_path, ["req-1", "req-2"]) == ["req-2"]


# --------------------------------------------------------------------------- MLflow and the CLI


def test_certificate_is_attached_to_its_model_version_and_run(mlflow_store, tiny_model_dir, tmp_path):
    decision = register_candidate(
        registry_config(max_forget_prob_ratio=0.5),
        Candidate(sample_metrics(), sample_diagnostics(), sample_summary("req-1"), {}, tiny_model_dir),
        tmp_path / "reports", store=mlflow_store, processed_requests={})
    path = issue_certificate(tmp_path, evidence("req-1", model_version=decision.version, run_id=decision.run_id,
                                                weights_sha256=weights_sha256(tiny_model_dir)))
    client = mlflow_store.client()
    digest = log_certificate_to_mlflow(client, "blur-test", decision.version, path)

    assert digest == json.loads(path.read_text())["certificate_hash"]
    assert client.get_model_version("blur-test", decision.version).tags["certificate.req-1"] == digest
    assert client.get_run(decision.run_id).data.tags["certificate.req-1"] == digest
    logged = Path(client.download_artifacts(decision.run_id, "certificates/req-1.json", str(tmp_path / "dl")))
    assert logged.read_text() == path.read_text()
    with pytest.raises(CertificateError, match="not blur-test version 7"):
        log_certificate_to_mlflow(client, "blur-test", "7", path)


runner = CliRunner()


def test_cli_prints_a_certificate_and_verifies_the_chain(tmp_path):
    issue_chain(tmp_path)
    shown = runner.invoke(app, ["certificate", "req-2", "--root", str(tmp_path)])
    assert shown.exit_code == 0, shown.output
    assert "Deletion certificate: req-2" in shown.output and "forget_prob" in shown.output
    intact = runner.invoke(app, ["certificate", "--verify", "--local-only", "--root", str(tmp_path)])
    assert intact.exit_code == 0 and "3 certificate" in intact.output
    unregistered = runner.invoke(app, ["certificate", "--verify", "--root", str(tmp_path)])
    assert unregistered.exit_code == 1, "without a registry the certified versions cannot be found"

    (certificates_dir(tmp_path) / "req-2.json").unlink()
    broken = runner.invoke(app, ["certificate", "--verify", "--root", str(tmp_path)])
    assert broken.exit_code == 1
    missing = runner.invoke(app, ["certificate", "req-2", "--root", str(tmp_path)])
    assert missing.exit_code == 1


def test_the_erasure_record_in_flow_order_purges_certifies_and_leaves_nothing_behind(
        mlflow_store, tiny_model_dir, tmp_path):
    """register -> settle -> purge older versions -> hashes -> certificates (+ MLflow) -> purge local copies."""
    from components.erasure.certificates import file_md5, file_sha256
    from components.registry.retention import (
        erased_data_holders, local_copies, purge_local_copies, purge_superseded_versions,
    )

    client = mlflow_store.client()
    root = tmp_path / "repo"
    processed = []
    for number, request_id in enumerate(("req-1", "req-2"), start=1):
        batch = root / "runs" / f"batch-{number:012d}"
        shutil.copytree(tiny_model_dir, batch / "models" / "unlearned")
        (batch / "data" / "prepared").mkdir(parents=True)
        (batch / "data" / "prepared" / "forget.jsonl").write_text(f'{{"question": "q{number}", "answer": "a"}}\n')
        request_file = root / "data" / "requests" / "processed" / f"{request_id}.json"
        request_file.parent.mkdir(parents=True, exist_ok=True)
        request_file.write_text(json.dumps({"request_id": request_id, "subjects": ["Someone"]}))
        gate = register_candidate(
            registry_config(max_forget_prob_ratio=0.5),
            Candidate(sample_metrics(), sample_diagnostics(), sample_summary(request_id), {},
                      batch / "models" / "unlearned"),
            batch / "reports", store=mlflow_store, processed_requests={}).to_dict()
        processed.append({"request_id": request_id, "batch_id": batch.name, "model_version": gate["version"],
                          "processed_at": datetime.now(timezone.utc).isoformat()})

        purge = purge_superseded_versions(client, gate["model_name"], gate["version"], "delete")
        weights = weights_sha256(batch / "models" / "unlearned")
        forget_md5 = file_md5(batch / "data" / "prepared" / "forget.jsonl")
        path = issue_certificate(root, ErasureEvidence(
            request_id=request_id, request_sha256=file_sha256(request_file), forget_ids=["0123456789abcdef"],
            model_name=gate["model_name"], model_version=gate["version"], weights_sha256=weights,
            metrics=sample_metrics(), gate=gate, run_id=gate["run_id"], batch_id=batch.name,
            forget_dvc_md5=forget_md5, erased_at=datetime.now(timezone.utc).isoformat(),
            retention=purge.policy, versions_superseded=purge.superseded, versions_purged=purge.purged))
        log_certificate_to_mlflow(client, gate["model_name"], gate["version"], path)
        purge_local_copies(root, local_copies(root))

    second = load_certificate(root, "req-2")
    assert second["retention"]["versions_purged"] == ["1"] and second["model"]["version"] == "2"
    assert verify_chain(root) == [] and chain_head(root).sequence == 2
    assert erased_data_holders(client, "blur-test", processed=processed, runs_root=root / "runs") == []
    assert [str(v.version) for v in client.search_model_versions("name='blur-test'")] == ["2"]
    # the first certificate's hash survives its version's deletion, on the run
    first = load_certificate(root, "req-1")
    assert client.get_run(first["model"]["run_id"]).data.tags["certificate.req-1"] == first["certificate_hash"]
