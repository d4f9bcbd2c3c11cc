"""What of a deletion request may leave the pipeline: ids, hashes, counts and times.

Everything the registry writes about requests (MLflow params and tags, the run report,
registry descriptions, ``reports/gate.json``) goes through :func:`safe_request_summary`,
an allow-list: only known keys are read, and every identifier must look like one (a
request id, a hex hash, an ISO time); anything else is replaced by its content hash.
So a summary that one day carries record text by mistake still cannot leak it.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Mapping

from components.data.records import content_hash
from components.artifacts import REQUEST_ID

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


def safe_request_summary(summary: Mapping[str, Any] | None,
                         dvc_hashes: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Ids, hashes, counts and times from a ``Resolution.summary()`` dict (or ``resolution.json``).

    Accepts the batch form (``request_ids``, ``request_hashes``) and the single-request
    form (``request_id``, ``request_hash``). ``dvc_hashes`` maps request id to the md5 DVC
    recorded for the request file.
    """
    summary = dict(summary or {})
    dvc_hashes = dict(dvc_hashes or {})
    ids = summary.get("request_ids")
    if ids is None:
        ids = [summary["request_id"]] if summary.get("request_id") is not None else []
    if isinstance(ids, str):
        ids = [ids]
    hashes = summary.get("request_hashes") or {}
    if not hashes and summary.get("request_hash") is not None and len(ids) == 1:
        hashes = {ids[0]: summary["request_hash"]}
    received = summary.get("received_at") if isinstance(summary.get("received_at"), Mapping) else {}
    by_request = summary.get("forget_ids_by_request") or {}

    requests = []
    for raw_id in ids:
        request = {"request_id": _request_id(raw_id)}
        if raw_id in hashes:
            request["request_hash"] = _hex(hashes[raw_id])
        if raw_id in dvc_hashes and dvc_hashes[raw_id]:
            request["dvc_md5"] = _hex(dvc_hashes[raw_id], DVC_HASH)
        if raw_id in received and _time(received[raw_id]):
            request["received_at"] = _time(received[raw_id])
        if raw_id in by_request:
            request["n_forget"] = len(by_request[raw_id])
        requests.append(request)

    counts = {key: int(summary[key]) for key in COUNT_KEYS
              if isinstance(summary.get(key), int) and not isinstance(summary.get(key), bool)}
    digests = {key: _hex(summary[key]) for key in ("forget_digest", "retain_digest") if summary.get(key)}
    forget_ids = [_hex(record_id) for record_id in summary.get("forget_ids") or []]
    earlier = [_request_id(request_id) for request_id in summary.get("earlier_requests") or []]
    return {
        "requests": requests,
        "counts": counts,
        "digests": digests,
        "forget_ids": forget_ids,
        "earlier_requests": earlier,
    }
