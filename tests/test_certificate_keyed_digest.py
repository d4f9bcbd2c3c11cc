"""Issue 21, privacy: a certificate's ids digest is keyed by the deployment's secret (format 2).

A record id is a hash of a record's text, and a request's records are a person's facts: a plain digest
of them (format 1) lets anyone who can guess those facts check whom a certificate names, and certificates
leave the machine (MLflow artifacts, the DVC remote). Format 1 certificates, issued before, still verify
and still check a recovered request against its digest."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from components.config import Config
from components.data.inbox import Inbox
from components.erasure.certificates import (FORMAT, FORMAT_1, ids_digest, issue_certificate, load_certificate,
                                             verify_chain)
from components.erasure.ledger import LedgerError, erased_forget_ids
from components.erasure.safe import keyed_hash, record_id_key
from components.paths import Paths
from test_erasure_invariants import certify, forget_ids_of, request_bytes, subject_of, waiting

FORMAT_1_CHAIN = Path(__file__).parent / "fixtures" / "certificates-format-1"  # issued by the code before format 2


def lose_note(inbox: Inbox, request_id: str, subject: str) -> None:
    """``request_id`` certified and settled, then its result note deleted (its file stays in processed/)."""
    (pending,), _ = inbox.take()
    inbox.complete(pending, {"forget_ids": forget_ids_of(subject)})
    (inbox.paths.processed / f"{request_id}.result.json").unlink()


def test_a_new_certificates_ids_digest_is_keyed_by_the_deployments_secret(tmp_path):
    ids = forget_ids_of(subject_of())
    certificates = {}
    for deployment in ("one", "two"):
        root = tmp_path / deployment
        certify(root, "req-r", request_bytes("req-r", subject_of()), ids)
        certificates[deployment] = load_certificate(root, "req-r")
        assert verify_chain(root) == []
    one = certificates["one"]
    assert one["format"] == FORMAT == "blur-deletion-certificate/3"  # keyed from format 2 on
    assert one["forget_set"]["ids_digest"] == keyed_hash(record_id_key(Paths(tmp_path / "one")), ids_digest(ids))
    assert ids_digest(ids) not in (tmp_path / "one" / "data" / "certificates" / "req-r.json").read_text()
    assert ids_digest(ids) not in (tmp_path / "one" / "data" / "certificates" / "req-r.md").read_text()
    assert one["forget_set"]["ids_digest"] != certificates["two"]["forget_set"]["ids_digest"], "each its own key"


def test_a_lost_note_is_recovered_against_a_keyed_certificate_and_other_records_fail_closed(tmp_path):
    inbox = Inbox(Paths(tmp_path))
    subject = subject_of()
    certify(tmp_path, "req-r", waiting(inbox, "req-r", subject), forget_ids_of(subject))
    lose_note(inbox, "req-r", subject)
    assert erased_forget_ids(Config(), inbox.paths, inbox, registry=()) == {"req-r": forget_ids_of(subject)}

    other = Inbox(Paths(tmp_path / "other"))
    certify(other.paths.root, "req-r", waiting(other, "req-r", subject_of(1)), forget_ids_of(subject))
    with pytest.raises(LedgerError, match="other records than its certificate"):
        erased_forget_ids(Config(), other.paths, other, registry=())


def test_a_keyed_certificate_whose_key_is_lost_fails_closed_naming_the_key(tmp_path):
    inbox = Inbox(Paths(tmp_path))
    subject = subject_of()
    certify(tmp_path, "req-r", waiting(inbox, "req-r", subject), forget_ids_of(subject))
    lose_note(inbox, "req-r", subject)
    inbox.paths.record_id_key.unlink()
    with pytest.raises(LedgerError, match=r"req-r.*record-id-key.*restore the key"):
        erased_forget_ids(Config(), inbox.paths, inbox, registry=())
    assert not inbox.paths.record_id_key.exists(), "checking never makes a new key"


def test_a_format_1_chain_still_verifies_recovers_lost_notes_and_takes_format_2_certificates_after_it(tmp_path):
    """The chain issued before format 2 (tests/fixtures, written by that code): intact, its plain digests
    still check a recovered request, without any key; a format 2 certificate continues the same chain."""
    inbox = Inbox(Paths(tmp_path))
    shutil.copytree(FORMAT_1_CHAIN / "certificates", inbox.paths.certificates)
    assert verify_chain(tmp_path) == []
    assert {load_certificate(tmp_path, r)["format"] for r in ("req-old-1", "req-old-2")} == {FORMAT_1}
    for index, request_id in enumerate(("req-old-1", "req-old-2")):
        shutil.copy(FORMAT_1_CHAIN / "requests" / f"{request_id}.json", inbox.paths.processed / f"{request_id}.json")
        assert load_certificate(tmp_path, request_id)["forget_set"]["ids_digest"] == \
            ids_digest(forget_ids_of(subject_of(index)))
    expected = {"req-old-1": forget_ids_of(subject_of(0)), "req-old-2": forget_ids_of(subject_of(1))}
    assert erased_forget_ids(Config(), inbox.paths, inbox, registry=()) == expected
    assert not inbox.paths.record_id_key.exists(), "format 1 needs no key"

    certify(tmp_path, "req-new", waiting(inbox, "req-new", subject_of(2)), forget_ids_of(subject_of(2)))
    assert load_certificate(tmp_path, "req-new")["format"] == FORMAT and load_certificate(tmp_path, "req-new")["sequence"] == 3
    assert verify_chain(tmp_path) == []
    lose_note(inbox, "req-new", subject_of(2))
    assert erased_forget_ids(Config(), inbox.paths, inbox, registry=()) == expected | {
        "req-new": forget_ids_of(subject_of(2))}
