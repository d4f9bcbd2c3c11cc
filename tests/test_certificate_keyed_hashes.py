"""Issue 21, privacy: a certificate keys its file hashes too (format 3).

A certificate's ``request.content_sha256`` and ``request.dvc_md5`` are hashes of the request file's bytes,
and ``forget_set.batch_dvc_md5`` is the md5 of the batch's ``forget.jsonl``, which the world determines:
plain, anyone who can reproduce a person's request file or forget set could test a guess against them,
and certificates leave the machine (MLflow artifacts, the DVC remote). Format 3 keys them like the ids
digest (HMAC-SHA256 under ``data/.record-id-key``). Formats 1 and 2 still verify, in one chain with 3,
and whatever compares a file with its certificate reads the key without creating it and fails closed
naming it when it is gone."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from components.config import Config
from components.data.inbox import Inbox
from components.erasure.certificates import (FORMAT, FORMAT_1, FORMAT_2, ErasureEvidence, issue_certificate,
                                             load_certificate, verify_chain)
from components.erasure.ledger import LedgerError, certified_requests, erased_forget_ids, same_request_file
from components.erasure.safe import keyed_hash, record_id_key
from components.paths import Paths
from test_certificate_keyed_digest import FORMAT_1_CHAIN, lose_note
from test_erasure_invariants import GATE, forget_ids_of, request_bytes, subject_of, waiting
from registry_fixtures import sample_metrics

MIXED_CHAIN = Path(__file__).parent / "fixtures" / "certificates-format-2"  # formats 1, 1, 2: issued by the code before 3
FORGET_MD5 = "5d41402abc4b2a76b9719d911017c592"


def certify_file(root: Path, request_id: str, data: bytes, forget_ids: list[str]) -> Path:
    """The real certificate of an erasure of ``request_id``, with the request file's DVC md5 and the
    batch forget set's md5 as the flow passes them."""
    return issue_certificate(root, ErasureEvidence(
        request_id=request_id, request_sha256=hashlib.sha256(data).hexdigest(), forget_ids=forget_ids,
        model_name="blur-test", model_version="4", weights_sha256="ef" * 32, metrics=sample_metrics(),
        gate=GATE, batch_id="batch-0123456789ab", request_dvc_md5=hashlib.md5(data).hexdigest(),
        forget_dvc_md5=FORGET_MD5))


def test_a_new_certificate_keys_the_request_file_and_forget_set_hashes(tmp_path):
    data = request_bytes("req-r", subject_of())
    plain = {"content_sha256": hashlib.sha256(data).hexdigest(), "dvc_md5": hashlib.md5(data).hexdigest(),
             "batch_dvc_md5": FORGET_MD5}
    path = certify_file(tmp_path, "req-r", data, forget_ids_of(subject_of()))
    certificate, key = load_certificate(tmp_path, "req-r"), record_id_key(Paths(tmp_path))
    assert certificate["format"] == FORMAT == "blur-deletion-certificate/3"
    assert certificate["request"]["content_sha256"] == keyed_hash(key, plain["content_sha256"])
    assert certificate["request"]["dvc_md5"] == keyed_hash(key, plain["dvc_md5"])
    assert certificate["forget_set"]["batch_dvc_md5"] == keyed_hash(key, FORGET_MD5)
    written = path.read_text() + path.with_suffix(".md").read_text()
    assert [name for name, value in plain.items() if value in written] == []
    assert "keyed by this deployment's secret" in path.with_suffix(".md").read_text()
    assert verify_chain(tmp_path) == []


def test_a_mixed_chain_of_formats_1_and_2_verifies_recovers_and_takes_format_3_after_it(tmp_path):
    """The chain of tests/fixtures/certificates-format-2 (two format-1 certificates, then one of format 2,
    written by the code before format 3, with the key it was issued under): intact; each lost note is
    recovered against its own format's digest; a format-3 certificate continues the chain."""
    inbox = Inbox(Paths(tmp_path))
    shutil.copytree(MIXED_CHAIN / "certificates", inbox.paths.certificates)
    inbox.paths.record_id_key.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(MIXED_CHAIN / "record-id-key", inbox.paths.record_id_key)
    assert verify_chain(tmp_path) == []
    assert [load_certificate(tmp_path, r)["format"] for r in ("req-old-1", "req-old-2", "req-mid-3")] == [
        FORMAT_1, FORMAT_1, FORMAT_2]
    for request_id in ("req-old-1", "req-old-2", "req-mid-3"):
        shutil.copy(MIXED_CHAIN / "requests" / f"{request_id}.json", inbox.paths.processed / f"{request_id}.json")
    expected = {"req-old-1": forget_ids_of(subject_of(0)), "req-old-2": forget_ids_of(subject_of(1)),
                "req-mid-3": forget_ids_of(subject_of(2))}
    assert erased_forget_ids(Config(), inbox.paths, inbox, registry=()) == expected
    certified = certified_requests(tmp_path)
    for request_id in expected:  # format 1 and 2 hold the file's sha256 plain
        assert same_request_file(inbox.paths, certified[request_id], inbox.paths.processed / f"{request_id}.json")

    certify_file(tmp_path, "req-new", waiting(inbox, "req-new", subject_of(3)), forget_ids_of(subject_of(3)))
    assert load_certificate(tmp_path, "req-new")["format"] == FORMAT
    assert load_certificate(tmp_path, "req-new")["sequence"] == 4 and verify_chain(tmp_path) == []
    lose_note(inbox, "req-new", subject_of(3))
    assert erased_forget_ids(Config(), inbox.paths, inbox, registry=()) == expected | {
        "req-new": forget_ids_of(subject_of(3))}


def test_a_waiting_file_is_matched_against_its_keyed_certificate(tmp_path):
    """What `_settle_certified` asks before settling a waiting file from its certificate (same bytes) or
    rejecting it (another file reusing the id)."""
    inbox = Inbox(Paths(tmp_path))
    data = waiting(inbox, "req-r", subject_of())
    certify_file(tmp_path, "req-r", data, forget_ids_of(subject_of()))
    certificate = certified_requests(tmp_path)["req-r"]
    assert certificate.format == FORMAT
    assert same_request_file(inbox.paths, certificate, inbox.paths.inbox / "req-r.json")
    other = inbox.paths.inbox / "other.json"
    other.write_bytes(request_bytes("req-r", subject_of(1)))
    assert not same_request_file(inbox.paths, certificate, other)


def test_a_keyed_request_hash_whose_key_is_lost_fails_closed_naming_the_key(tmp_path):
    inbox = Inbox(Paths(tmp_path))
    certify_file(tmp_path, "req-r", waiting(inbox, "req-r", subject_of()), forget_ids_of(subject_of()))
    inbox.paths.record_id_key.unlink()
    with pytest.raises(LedgerError, match=r"req-r.*record-id-key.*restore the key"):
        same_request_file(inbox.paths, certified_requests(tmp_path)["req-r"], inbox.paths.inbox / "req-r.json")
    assert not inbox.paths.record_id_key.exists(), "checking never makes a new key"


def test_a_format_1_certificate_is_matched_without_any_key(tmp_path):
    inbox = Inbox(Paths(tmp_path))
    shutil.copytree(FORMAT_1_CHAIN / "certificates", inbox.paths.certificates)
    source = FORMAT_1_CHAIN / "requests" / "req-old-1.json"
    assert same_request_file(inbox.paths, certified_requests(tmp_path)["req-old-1"], source)
    assert not inbox.paths.record_id_key.exists()


@pytest.mark.parametrize("field", ["request_sha256", "request_dvc_md5", "forget_dvc_md5"])
def test_text_in_a_keyed_hash_field_is_refused_not_keyed(tmp_path, field):
    """Keying hides what a value was, so the allow-list checks its shape before: text in a hash field is
    refused (naming the field, not the text), never turned into a plausible keyed hash."""
    from components.erasure.certificates import CertificateError

    text = "Jane Q. Doe was born in Springfield"
    data = request_bytes("req-r", subject_of())
    evidence = dict(request_id="req-r", request_sha256=hashlib.sha256(data).hexdigest(),
                    forget_ids=forget_ids_of(subject_of()), model_name="blur-test", model_version="4",
                    weights_sha256="ef" * 32, metrics=sample_metrics(), gate=GATE, request_dvc_md5=FORGET_MD5,
                    forget_dvc_md5=FORGET_MD5) | {field: text}
    with pytest.raises(CertificateError) as raised:
        issue_certificate(tmp_path, ErasureEvidence(**evidence))
    assert field in str(raised.value) and "Springfield" not in str(raised.value)
