"""Deletion certificates: one per processed request, hash-chained, free of erased text.

A certificate says what was asked (the sha256 and the DVC md5 of the request file's bytes), what
was erased (how many records, the digest of their ids and the DVC md5 of the batch's forget set),
which model version forgot it (the sha256 of its weights), the measurements that show it, the gate's decision, the times, and which older versions holding the data were
purged. It holds ids, hashes, counts, numbers and times only: every field is checked
against an allow-list when it is issued, and a field that does not look like what it
should be is refused (the error names the field, never its value).

What a guess could be tested against is keyed by the deployment's secret (format 3, HMAC-SHA256 under
``data/.record-id-key``: :func:`certified_ids_digest`, :func:`certified_file_hash`): the ids digest, a
hash of one person's records, and the file hashes, since the request file's bytes and the batch's
``forget.jsonl`` (which the world determines) can be reproduced by whoever guesses them. Certificates
leave the machine (MLflow artifacts, the DVC remote). Those of formats 1 and 2 (issued before) keep
their bytes and verify in the same chain.

Certificates live in ``<root>/data/certificates/<request_id>.json`` with a Markdown
rendering beside it (``<request_id>.md``). Each holds its place in the chain
(``sequence``), the previous certificate's hash (``previous_hash``) and its own hash
(``certificate_hash``: sha256 of its canonical JSON without that field); the chain head
(``chain.head.json``: the last sequence and hash) closes the chain, so
:func:`verify_chain` finds an edited, deleted, reordered or appended-by-hand certificate.
Someone who rewrites every later certificate and the head can rebuild a consistent local
chain; the hash logged on the MLflow model version and its run
(:func:`log_certificate_to_mlflow`) is the copy outside this folder to compare with.
Issue certificates while holding the inbox lock: the chain is appended one at a time.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from pydantic import ValidationError

from components.artifacts import (HEX_ID, MD5, ROLES, SHA256, ArtifactError, Certificate, ChainHead, GateDecision,
                                  Metrics, is_request_id)
from components.data.versioning import file_md5  # noqa: F401  (a file's DVC md5, as callers knew it here)
from components.jsonfiles import write_json
from components.paths import RUN_ARTIFACTS, Paths
from components.registry.retention import RETENTION_POLICIES

if TYPE_CHECKING:
    from mlflow import MlflowClient

FORMAT_1 = "blur-deletion-certificate/1"  # everything plain (still verified)
FORMAT_2 = "blur-deletion-certificate/2"  # the ids digest keyed, the file hashes plain (still verified)
FORMAT = "blur-deletion-certificate/3"  # the ids digest and the file hashes keyed by the deployment's secret
HEAD_FILE = Paths().certificate_head.name  # the chain head's file name, beside the certificates
GENESIS_HASH = "0" * 64
# The metrics that show forgetting (and that the model still works), as metrics.json names them.
CERTIFIED_METRICS = ("forget_prob", "forget_truth_ratio", "forget_quality", "forget_holdout_ks_p",
                     "forget_holdout_auc", "mia_auc", "privleak", "relearn_forget_prob", "relearn_recovery",
                     "model_utility")

class CertificateError(ValueError):
    """A certificate could not be issued or read; the message names the field or file."""


@dataclass(frozen=True, kw_only=True)
class ErasureEvidence:
    """What one processed request leaves on record (ids, hashes, numbers, times; no text).

    ``metrics`` are the batch's :class:`Metrics` (measured on the batch's forget set, which
    holds this request's records) and ``gate`` its :class:`GateDecision`.
    ``forget_ids`` are the record ids this request erased (content hashes); only their
    count and digest go into the certificate.
    """

    # the request
    request_id: str
    request_sha256: str
    request_dvc_md5: str | None = None
    received_at: str | None = None
    forget_ids: Sequence[str]
    forget_dvc_md5: str | None = None
    # the model that erased it, and where
    model_name: str
    model_version: str
    weights_sha256: str
    batch_id: str | None = None
    run_id: str | None = None
    erased_at: str | None = None
    # the measurements
    metrics: Metrics
    gate: GateDecision
    request_forget_prob: float | None = None  # the unlearned forget_prob of this request's records alone
    # what happened to the older copies
    retention: str = "delete"
    versions_superseded: Sequence[str] = field(default_factory=tuple)
    versions_purged: Sequence[str] = field(default_factory=tuple)
    local_copies_removed: Sequence[str] = field(default_factory=tuple)


# --------------------------------------------------------------------------- hashes


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes (the request content hash)."""
    with Path(path).open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def weights_sha256(model_dir: str | Path) -> str:
    """One sha256 over every ``*.safetensors`` file of a model directory, sorted by path.

    Each file contributes its path relative to the directory, a NUL, its size and its
    bytes, so renaming or splitting shards changes the hash too.
    """
    model_dir = Path(model_dir)
    files = sorted(p for p in model_dir.rglob("*.safetensors") if p.is_file())
    if not files:
        raise CertificateError(f"{model_dir} holds no *.safetensors files: save the model with "
                               "safetensors (save_pretrained does by default) before issuing its certificate")
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.relative_to(model_dir).as_posix()}\0{path.stat().st_size}\0".encode())
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def ids_digest(record_ids: Iterable[str]) -> str:
    """The digest of a set of record ids (order-independent; what ``records_digest`` computes)."""
    blob = json.dumps(sorted(record_ids), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def certified_ids_digest(format: str, record_ids: Iterable[str], key: bytes | None) -> str:
    """The ``forget_set.ids_digest`` a certificate of ``format`` holds for ``record_ids``: formats 2 and 3
    key :func:`ids_digest` with the deployment's secret (``key``; a record id is a hash of a record's text,
    so a plain digest of a person's records can be checked against a guess, and certificates leave the
    machine: MLflow, the DVC remote); format 1 (certificates issued before) holds it plain."""
    return _keyed(format != FORMAT_1, ids_digest(record_ids), key, "ids digest")


def certified_file_hash(format: str, value: str | None, key: bytes | None) -> str | None:
    """What a certificate of ``format`` holds for a file's plain hash ``value`` (``request.content_sha256``,
    ``request.dvc_md5``, ``forget_set.batch_dvc_md5``): format 3 keys it with the deployment's secret
    (``key``: whoever can reproduce the file, a person's request or the batch's forget set, could test a
    guess against the plain hash); formats 1 and 2 hold it plain. None stays None."""
    return None if value is None else _keyed(format == FORMAT, value, key, "file hash")


def _keyed(keyed: bool, value: str, key: bytes | None, what: str) -> str:
    if not keyed:
        return value
    if key is None:
        raise CertificateError(f"the deployment's record-id key is missing: a keyed {what} cannot be computed")
    from components.erasure.safe import keyed_hash

    return keyed_hash(key, value)


def canonical_json(data: Any) -> str:
    """The one serialisation a certificate hash is taken over (sorted keys, no spaces)."""
    return json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def certificate_hash(certificate: Mapping[str, Any]) -> str:
    """sha256 of the certificate's canonical JSON without its own ``certificate_hash``."""
    body = {key: value for key, value in certificate.items() if key != "certificate_hash"}
    return hashlib.sha256(canonical_json(body).encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- the allow-list


def _request_id(value: Any) -> str:
    """``value`` if it is a well-formed request id (it names the certificate's file)."""
    if value is None or value == "":
        raise CertificateError("certificate field 'request_id' is missing")
    if not is_request_id(value):
        raise CertificateError("certificate field 'request_id' does not look like a request id; "
                               "certificates hold ids, hashes and numbers only")
    return value


def _text(value: Any) -> str | None:
    """An evidence value as the certificate's string (None for an absent or empty one)."""
    return None if value is None or value == "" else str(value)


# Where a certificate field comes from in ErasureEvidence, for errors that name the caller's field.
_EVIDENCE_NAMES = {("request", "request_id"): "request_id", ("request", "content_sha256"): "request_sha256",
                   ("request", "dvc_md5"): "request_dvc_md5", ("forget_set", "batch_id"): "batch_id",
                   ("forget_set", "batch_dvc_md5"): "forget_dvc_md5", ("model", "name"): "model_name",
                   ("model", "version"): "model_version", ("model", "run_id"): "run_id",
                   ("model", "weights_sha256"): "weights_sha256"}


def _validated(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` checked against :class:`~components.artifacts.Certificate`; the error names the field
    and what it should look like, never its value."""
    try:
        Certificate.model_validate(body)
    except ValidationError as error:
        item = error.errors()[0]
        loc = tuple(part for part in item["loc"] if not isinstance(part, int))
        name = _EVIDENCE_NAMES.get(loc[:2]) or (loc[-1] if loc[:1] == ("retention",) else ".".join(map(str, loc)))
        if item.get("input") is None:
            raise CertificateError(f"certificate field '{name}' is missing") from None
        kind = _field_kind(loc)
        raise CertificateError(f"certificate field '{name}' does not look like {kind}; "
                               "certificates hold ids, hashes and numbers only") from None
    return body


def _field_kind(loc: tuple) -> str:
    """The description of the certificate field at ``loc`` (what it should look like)."""
    model: Any = Certificate
    field = None
    for part in loc:
        field = model.model_fields.get(str(part)) if hasattr(model, "model_fields") else None
        if field is None:
            break
        annotation = field.annotation
        inner = [a for a in getattr(annotation, "__args__", ()) if hasattr(a, "model_fields")]
        model = inner[0] if inner else annotation
    described = field.description if field is not None else None
    if described is None and field is not None:  # a list of constrained strings
        described = next((m.description for a in getattr(field.annotation, "__args__", ())
                          for m in getattr(a, "__metadata__", ()) if getattr(m, "description", None)), None)
    return described or "an id"


def _plain_hash(value: Any, name: str, pattern: str) -> str | None:
    """An evidence hash checked for its shape (``pattern``) before it is keyed; the error names the field."""
    value = _text(value)
    if value is None and name == "request_sha256":
        raise CertificateError(f"certificate field '{name}' is missing")
    if value is not None and not re.fullmatch(pattern, value):
        raise CertificateError(f"certificate field '{name}' does not look like a hash; "
                               "certificates hold ids, hashes and numbers only")
    return value


def _time(value: Any, name: str) -> str | None:
    if value is None or value == "":
        return None
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        raise CertificateError(f"certificate field '{name}' is not an ISO 8601 time") from None
    return moment.isoformat()


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _path(value: Any, name: str) -> str:
    parts = Path(str(value)).parts
    if not parts or any(part in ("..", "/") for part in parts):
        raise CertificateError(f"certificate field '{name}' must be a path relative to the pipeline root")
    return "/".join(parts)


def certified_metrics(metrics: Metrics) -> dict[str, dict[str, float]]:
    """The :data:`CERTIFIED_METRICS` of each model, numbers only (absent ones left out)."""
    out: dict[str, dict[str, float]] = {}
    for key in CERTIFIED_METRICS:
        values = {}
        for role in ROLES:
            value = metrics.value(role, key)
            if value is not None:
                values[role] = float(value)
        if values:
            out[key] = values
    return out


def certified_gate(gate: GateDecision) -> dict[str, Any]:
    """The gate's verdict and its checks (names, operators, thresholds, values); no free text."""
    checks = []
    for check in gate.checks:
        checks.append({
            "metric": check.metric,
            "op": check.op,
            "setting": _text(check.setting),
            "threshold": _number(check.threshold),
            "value": _number(check.value),
            "passed": check.passed,
        })
    if gate.passed is not True:
        raise CertificateError("certificate field 'gate.passed' is not true: a candidate that did not pass its "
                               "gate was not promoted, so nothing was erased and no certificate is issued")
    return {"passed": True, "checks": checks}


# --------------------------------------------------------------------------- building one


def _body(evidence: ErasureEvidence, issued_at: str, key: bytes) -> dict[str, Any]:
    """The certificate's content from ``evidence``, every field through the allow-list (``key``: the
    deployment's record-id secret the ids digest is keyed with)."""
    e = evidence
    if e.retention not in RETENTION_POLICIES:
        raise CertificateError(f"certificate field 'retention' must be one of {list(RETENTION_POLICIES)}")
    forget_ids = [str(record_id) for record_id in e.forget_ids]
    if not all(re.fullmatch(HEX_ID, record_id) for record_id in forget_ids):
        raise CertificateError("certificate field 'forget_ids' does not look like a hex hash; "
                               "certificates hold ids, hashes and numbers only")
    metrics = certified_metrics(Metrics.parse(e.metrics))
    hashes = {name: _plain_hash(getattr(e, name), name, pattern)  # checked before keying hides what they were
              for name, pattern in (("request_sha256", SHA256), ("request_dvc_md5", MD5), ("forget_dvc_md5", MD5))}
    keyed = {name: certified_file_hash(FORMAT, value, key) for name, value in hashes.items()}
    return _validated({
        "format": FORMAT,
        "request": {"request_id": _text(e.request_id), "content_sha256": keyed["request_sha256"],
                    "dvc_md5": keyed["request_dvc_md5"]},
        "forget_set": {"n_records": len(forget_ids), "ids_digest": certified_ids_digest(FORMAT, forget_ids, key),
                       "batch_id": _text(e.batch_id), "batch_dvc_md5": keyed["forget_dvc_md5"]},
        "model": {"name": _text(e.model_name), "version": _text(e.model_version), "run_id": _text(e.run_id),
                  "weights_sha256": _text(e.weights_sha256)},
        "evidence": {"measured_on": "the batch's forget set (this request's records and those erased with it)",
                     "oracle": "forget_quality" in metrics, "metrics": metrics,
                     "request_forget_prob": _number(e.request_forget_prob)},
        "gate": certified_gate(e.gate if isinstance(e.gate, GateDecision) else GateDecision.model_validate(e.gate)),
        "retention": {"policy": e.retention,
                      "versions_superseded": [str(v) for v in e.versions_superseded],
                      "versions_purged": [str(v) for v in e.versions_purged],
                      "local_copies_removed": [_path(p, "local_copies_removed") for p in e.local_copies_removed]},
        "times": {"received_at": _time(e.received_at, "received_at"), "erased_at": _time(e.erased_at, "erased_at"),
                  "issued_at": issued_at},
    })


def render_markdown(certificate: Mapping[str, Any]) -> str:
    """The human-readable rendering of a certificate (what ``blur certificate ID`` prints)."""
    # Read by key from the stored content, not from a Certificate: the rendering must match what the hash
    # covers (times as the strings they were issued as), and verify_chain renders files that do not validate.
    c = certificate
    request, forget, model, retention = c["request"], c["forget_set"], c["model"], c["retention"]
    lines = [
        f"# Deletion certificate: {request['request_id']}", "",
        f"Certificate {c['sequence']} of the chain; hash `{c['certificate_hash']}`, "
        f"previous `{c['previous_hash']}`.", "",
        "## What was asked and erased", "",
        *_request_lines(c),
        f"- records erased: {forget['n_records']} (ids digest `{forget['ids_digest']}`"
        + (")" if c["format"] == FORMAT_1 else ", keyed by this deployment's secret)"),
        f"- batch: {forget['batch_id'] or '-'}; forget set DVC md5 `{forget['batch_dvc_md5'] or '-'}`"
        + (" (keyed by this deployment's secret)" if c["format"] == FORMAT and forget["batch_dvc_md5"] else ""),
        "", "## Which model forgot it", "",
        f"- `{model['name']}` version {model['version']} (run `{model['run_id'] or '-'}`)",
        f"- weights sha256: `{model['weights_sha256']}`",
        "", f"## Measurements ({c['evidence']['measured_on']})", "",
        "| metric | " + " | ".join(ROLES) + " |", "|---|" + "---|" * len(ROLES),
    ]
    for key, values in c["evidence"]["metrics"].items():
        lines.append(f"| {key} | " + " | ".join(_cell(values.get(role)) for role in ROLES) + " |")
    if c["evidence"].get("request_forget_prob") is not None:  # absent from certificates issued before it
        lines.append(f"\nThis request's records alone: unlearned forget_prob "
                     f"{_cell(c['evidence']['request_forget_prob'])} (what later batches must stay near).")
    if not c["evidence"]["oracle"]:
        lines.append("\nNo oracle model: forget quality was not measured.")
    gate = c["gate"]
    lines += ["", f"## Gate: {'passed' if gate['passed'] else 'FAILED'}", ""]
    lines += [f"- {k['metric']} {k['op']} {_cell(k['threshold'])}: value {_cell(k['value'])}, "
              f"{'passed' if k['passed'] else 'skipped' if k['passed'] is None else 'failed'}" for k in gate["checks"]]
    lines += ["", f"## Older copies (retention: {retention['policy']})", "",
              f"- versions superseded: {', '.join(retention['versions_superseded']) or 'none'}",
              f"- versions purged: {', '.join(retention['versions_purged']) or 'none'}",
              f"- local copies removed: {', '.join(retention['local_copies_removed']) or 'none'}",
              "", "## Times", ""]
    lines += [f"- {key.replace('_', ' ')}: {value or '-'}" for key, value in c["times"].items()]
    return "\n".join(lines) + "\n"


def _request_lines(certificate: Mapping[str, Any]) -> list[str]:
    """The request file's hashes as the rendering shows them (formats 1 and 2 as they always were)."""
    request = certificate["request"]
    if certificate["format"] != FORMAT:
        return [f"- request file sha256: `{request['content_sha256']}`"
                + (f" (DVC md5 `{request['dvc_md5']}`)" if request["dvc_md5"] else "")]
    return [f"- request file sha256 `{request['content_sha256']}`"
            + (f", DVC md5 `{request['dvc_md5']}`" if request["dvc_md5"] else "")
            + " (keyed by this deployment's secret)"]


def _cell(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


# --------------------------------------------------------------------------- the chain


def certificates_dir(root: str | Path) -> Path:
    """The folder of the certificates of the pipeline at ``root``."""
    return Paths(Path(root)).certificates


_RESTORE = "restore it from the DVC/git history or the MLflow run's certificates/ folder"


def _read(path: Path) -> dict[str, Any]:
    """A certificate file's stored content, as its hash and its rendering were made from (not validated:
    :func:`verify_chain` reports what is wrong with it; :func:`_stored` validates too)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise CertificateError(f"{path} cannot be read as JSON ({type(error).__name__}); {_RESTORE}") from None


def _stored(path: Path) -> tuple[dict[str, Any], Certificate]:
    """A certificate file's stored content (what its hash covers) and the same validated as a
    :class:`~components.artifacts.Certificate` (:class:`CertificateError` naming the file if it is not one)."""
    stored = _read(path)
    try:
        return stored, Certificate.parse_stored(stored, path)
    except ArtifactError as error:
        raise CertificateError(f"{error}; {_RESTORE}") from None


def chain_head(root: str | Path) -> ChainHead:
    """The chain head (:class:`~components.artifacts.ChainHead`); sequence 0 and the genesis hash when
    there is no certificate yet. :class:`CertificateError` naming the file when it does not load."""
    path = Paths(Path(root)).certificate_head
    if not path.exists():
        return ChainHead(sequence=0, request_id=None, certificate_hash=GENESIS_HASH)
    try:
        return ChainHead.load(path)
    except (OSError, ArtifactError) as error:
        raise CertificateError(f"{error}; {_RESTORE}") from None


def load_certificate(root: str | Path, request_id: str) -> dict[str, Any]:
    """The certificate of ``request_id`` as stored (what its hash and its rendering are made from),
    checked against :class:`~components.artifacts.Certificate`; :class:`FileNotFoundError` when there
    is none, :class:`CertificateError` naming the file when it is not a certificate."""
    _request_id(request_id)
    path = Paths(Path(root)).certificate(request_id)
    if not path.exists():
        raise FileNotFoundError(f"no certificate for request '{request_id}' in {path.parent}: "
                                "certificates are issued when a request's batch is promoted")
    return _stored(path)[0]


def issue_certificate(root: str | Path, evidence: ErasureEvidence, *, now: datetime | None = None) -> Path:
    """Append the certificate of one processed request to the chain; returns its JSON path.

    Writes ``<request_id>.json``, then ``<request_id>.md``, then the chain head, each
    atomically. The ids digest and the file hashes are keyed with the deployment's secret (created if it is
    the first). Idempotent: a request that already has a certificate keeps it (one per
    request; a retried flow gets the same path back), and a certificate written just
    before a crash, with the head not yet moved, is completed rather than written again.
    """
    paths = Paths(Path(root))
    path = paths.certificate(_request_id(evidence.request_id))
    head = chain_head(root)
    if path.exists():
        existing, certified = _stored(path)
        if certified.sequence == head.sequence + 1 and certified.previous_hash == head.certificate_hash:
            _write_rendering_and_head(paths, existing)
        return path
    issued_at = (now or datetime.now(timezone.utc)).isoformat(timespec="seconds")
    from components.erasure.safe import record_id_key

    certificate = {**_body(evidence, issued_at, record_id_key(paths)), "sequence": head.sequence + 1,
                   "previous_hash": head.certificate_hash}
    certificate["certificate_hash"] = certificate_hash(certificate)
    write_json(path, certificate)
    _write_rendering_and_head(paths, certificate)
    return path


def _write_rendering_and_head(paths: Paths, certificate: Mapping[str, Any]) -> None:
    """The Markdown of ``certificate`` (its stored content) beside it, then the chain head on it."""
    certified = Certificate.model_validate(certificate)
    markdown = paths.rendering(paths.certificate(certified.request.request_id))
    tmp = markdown.with_name(markdown.name + ".tmp")
    tmp.write_text(render_markdown(certificate), encoding="utf-8")
    tmp.replace(markdown)
    ChainHead(sequence=certified.sequence, request_id=certified.request.request_id,
              certificate_hash=certified.certificate_hash).save(paths.certificate_head)


def missing_certificates(root: str | Path, request_ids: Iterable[str]) -> list[str]:
    """The request ids among ``request_ids`` that have no certificate file."""
    paths = Paths(Path(root))
    return [rid for rid in request_ids if not paths.certificate(rid).exists()]


def verify_chain(root: str | Path) -> list[str]:
    """Every problem with the certificate chain at ``root``; an empty list when it is intact.

    Finds an edited certificate (its hash no longer matches its content, or its Markdown
    no longer matches it), a deleted one (a gap in the sequence, or the head names a
    later one), a reordered or renamed one (a previous hash that is not its
    predecessor's; a file named for another request) and a missing or stale head.
    """
    paths = Paths(Path(root))
    files = paths.certificate_files()
    problems: list[str] = []
    chain: list[tuple[Path, dict]] = []
    for path in files:
        try:
            certificate = _read(path)
        except CertificateError as error:
            problems.append(str(error))
            continue
        if isinstance(certificate, dict):
            chain.append((path, certificate))
        else:
            problems.append(f"{path.name}: not a certificate (a JSON {type(certificate).__name__})")
    chain.sort(key=lambda item: item[1].get("sequence") if isinstance(item[1].get("sequence"), int) else -1)
    previous = GENESIS_HASH
    for expected, (path, certificate) in enumerate(chain, start=1):
        problems += _certificate_problems(path, certificate, expected, previous)
        previous = certificate.get("certificate_hash")
    problems += _head_problems(paths.certificate_head, chain, previous)
    return problems


def _certificate_problems(path: Path, certificate: Mapping[str, Any], expected: int, previous: str) -> list[str]:
    # The stored content, read by key: the hash covers exactly what was written, and a damaged file that
    # fails Certificate's validation must still have its sequence and hashes checked.
    problems = []
    name = path.name
    if certificate.get("sequence") != expected:
        problems.append(f"{name}: sequence {certificate.get('sequence')} where {expected} was expected "
                        "(a certificate before it was deleted, or the sequence was edited)")
    try:
        actual = certificate_hash(certificate)
    except ValueError:
        actual = None
    if actual != certificate.get("certificate_hash"):
        problems.append(f"{name}: its content does not match its certificate_hash (it was edited)")
    if certificate.get("previous_hash") != previous:
        problems.append(f"{name}: previous_hash is not the hash of certificate {expected - 1} "
                        "(the chain was reordered, or an earlier certificate was edited or deleted)")
    request_id = (certificate.get("request") or {}).get("request_id")
    if path.stem != request_id:
        problems.append(f"{name}: holds the certificate of request '{request_id}' (renamed file)")
    try:
        Certificate.parse_stored(certificate, name)
    except ArtifactError as error:  # names the keys, never their values
        problems.append(str(error))
        return problems
    markdown = Paths.rendering(path)
    if actual is not None and actual == certificate.get("certificate_hash"):
        if not markdown.exists() or markdown.read_text(encoding="utf-8") != render_markdown(certificate):
            problems.append(f"{markdown.name}: missing or does not match {name} (edited rendering)")
    return problems


def _head_problems(head_path: Path, chain: Sequence[tuple[Path, dict]], last_hash: str) -> list[str]:
    if not chain and not head_path.exists():
        return []
    if not head_path.exists():
        return [f"{head_path.name} is missing: the chain's end cannot be checked (was it deleted?)"]
    try:
        head = ChainHead.load(head_path)
    except (OSError, ArtifactError) as error:
        return [f"{error}; {_RESTORE}"]
    if head.sequence != len(chain) or head.certificate_hash != last_hash:
        return [f"{head_path.name} names certificate {head.sequence} ({head.request_id}), but the chain "
                f"ends at certificate {len(chain)}: the last certificate(s) were deleted or added by hand"]
    return []


# --------------------------------------------------------------------------- MLflow


def log_certificate_to_mlflow(client: "MlflowClient", model_name: str, version: str, cert_path: str | Path) -> str:
    """Attach a certificate to the model version that forgot the request; returns its hash.

    The JSON and its Markdown go to the version's run under ``certificates/``; the hash
    becomes the tag ``certificate.<request_id>`` on the model version and on the run (the
    run keeps it if a later erasure deletes the version under ``registry.retention: delete``).
    """
    cert_path = Path(cert_path)
    certificate = _stored(cert_path)[1]
    request_id = certificate.request.request_id
    if certificate.model.version != str(version) or certificate.model.name != model_name:
        raise CertificateError(f"{cert_path.name} certifies {certificate.model.name} version "
                               f"{certificate.model.version}, not {model_name} version {version}")
    digest = certificate.certificate_hash
    if digest is None:
        raise CertificateError(f"{cert_path.name} has no certificate_hash: it was not issued into the chain")
    run_id = client.get_model_version(model_name, str(version)).run_id
    for path in (cert_path, Paths.rendering(cert_path)):
        if path.exists():
            client.log_artifact(run_id, str(path), RUN_ARTIFACTS.certificates)
    client.set_model_version_tag(model_name, str(version), f"certificate.{request_id}", digest)
    client.set_tag(run_id, f"certificate.{request_id}", digest)
    return digest
