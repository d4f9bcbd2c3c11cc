"""What of a deletion request may leave the pipeline: ids, hashes, counts and times.

Everything the registry writes about requests (MLflow params and tags, the run report,
registry descriptions, ``reports/gate.json``) goes through :func:`safe_request_summary`,
an allow-list: only known fields are read, and every identifier must look like one (a
request id, a hex hash, an ISO time); anything else is replaced by its content hash.
So a summary that one day carries record text by mistake still cannot leak it.

A record id is a hash of the record's text, so anyone who can guess a person's facts could
compute it and find it in MLflow. Record ids therefore leave keyed by a secret of this
deployment (:func:`record_id_key`, :func:`keyed_hash`), and so do the digests of sets of them,
a certificate's ids digest included (it is logged to MLflow and pushed with the batch), and the hashes of
a request (its content hash, its file's DVC md5), which anyone who can reproduce a guessed request could
compute; inside the pipeline (notes, sampling, caches, DVC's own ``.dvc`` files) they stay as they are.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any, Mapping

from components.data.records import content_hash
from components.artifacts import REQUEST_ID

if TYPE_CHECKING:
    from components.artifacts import Resolution
    from components.paths import Paths

HEX_ID = re.compile(r"\A[0-9a-f]{8,64}\Z")  # \Z, not $: "$" also matches before a trailing newline
DVC_HASH = re.compile(r"\A[0-9a-f]{32}(\.dir)?\Z")
COUNT_KEYS = ("n_subjects", "n_forget", "n_retain", "n_previously_forgotten", "n_world", "n_holdout")


def _request_id(value: Any) -> str:
    value = str(value)
    return value if REQUEST_ID.fullmatch(value) else f"hashed-{content_hash(value)}"


def _hex(value: Any, pattern: re.Pattern = HEX_ID) -> str:
    value = str(value)
    return value if pattern.fullmatch(value) else content_hash(value)


def _time(value: Any) -> str | None:
    try:
        return datetime.fromisoformat(str(value)).isoformat()
    except ValueError:
        return None


def record_id_key(paths: "Paths") -> bytes:
    """This deployment's secret for the record ids that leave it (``paths.record_id_key``): 32 random
    bytes, created once (owner-only, appearing whole or not at all), then read. Never logged; git- and
    DVC-ignored. Losing it changes the ids MLflow shows from then on, and a certificate's keyed ids digest
    (format 2) can no longer be checked: a lost result note is then not recovered (fail closed)."""
    path = paths.record_id_key
    if stored_record_id_key(paths) is None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        handle = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(handle, secrets.token_hex(32).encode())
        finally:
            os.close(handle)
        try:
            os.link(tmp, path)  # atomic, never replaces a key another process made first
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return bytes.fromhex(path.read_text().strip())


def stored_record_id_key(paths: "Paths") -> bytes | None:
    """This deployment's secret if it exists (never created here: what checks a keyed digest must not
    make a new key that matches nothing); None when ``paths.record_id_key`` is missing."""
    try:
        return bytes.fromhex(paths.record_id_key.read_text().strip())
    except FileNotFoundError:
        return None


def keyed_hash(key: bytes, value: str) -> str:
    """How a record id (or a digest of record ids) is shown outside the pipeline: an HMAC-SHA256 of it
    under ``key``, 16 hex digits."""
    return hmac.new(key, str(value).encode("utf-8"), hashlib.sha256).hexdigest()[:16]


def safe_request_summary(resolution: "Resolution | None",
                         dvc_hashes: Mapping[str, str] | None = None, *,
                         record_id_key: bytes | None = None) -> dict[str, Any]:
    """Ids, hashes, counts and times of a batch's :class:`~components.artifacts.Resolution`.

    ``dvc_hashes`` maps request id to the md5 DVC recorded for the request file. ``record_id_key``: the
    deployment's secret (:func:`record_id_key`); the forget set's record ids, the forget and retain digests
    and each request's content hash and DVC md5 are keyed with it (:func:`keyed_hash`). Every value is checked for its shape again, although
    the model validated the file: this is the last gate before MLflow.
    """
    if resolution is None:
        return {"requests": [], "counts": {}, "digests": {}, "forget_ids": [], "earlier_requests": []}
    dvc_hashes = dict(dvc_hashes or {})
    requests = []
    for raw_id in resolution.request_ids:
        request = {"request_id": _request_id(raw_id)}
        if raw_id in resolution.request_hashes:
            request["request_hash"] = _hex(resolution.request_hashes[raw_id])
        if dvc_hashes.get(raw_id):
            request["dvc_md5"] = _hex(dvc_hashes[raw_id], DVC_HASH)
        if record_id_key is not None:  # a hash of the request's content can be checked against a guessed request
            request.update({k: keyed_hash(record_id_key, request[k]) for k in ("request_hash", "dvc_md5") if k in request})
        if raw_id in resolution.received_at and _time(resolution.received_at[raw_id]):
            request["received_at"] = _time(resolution.received_at[raw_id])
        if raw_id in resolution.forget_ids_by_request:
            request["n_forget"] = len(resolution.forget_ids_by_request[raw_id])
        requests.append(request)

    counts = {key: getattr(resolution, key) for key in COUNT_KEYS if getattr(resolution, key) is not None}
    digests = {key: _hex(getattr(resolution, key)) for key in ("forget_digest", "retain_digest")}
    forget_ids = [_hex(record_id) for record_id in resolution.forget_ids]
    if record_id_key is not None:  # a digest of the ids can be checked against a guess as well as the ids
        forget_ids = [keyed_hash(record_id_key, record_id) for record_id in forget_ids]
        digests = {key: keyed_hash(record_id_key, value) for key, value in digests.items()}
    earlier = [_request_id(request_id) for request_id in resolution.earlier_requests]
    return {
        "requests": requests,
        "counts": counts,
        "digests": digests,
        "forget_ids": forget_ids,
        "earlier_requests": earlier,
    }
