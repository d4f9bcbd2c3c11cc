"""Deletion requests: parse the JSON file, then resolve it against the world.

A request names subjects (everything about a person) and/or explicit records. Resolving
gives the forget set and the retain set (the world minus everything ever forgotten).
Every problem becomes a :class:`RequestError` carrying all the reasons at once, worded
for the person who has to fix the request. Reasons never quote record text.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from pydantic import ValidationError

from components.artifacts import NOTHING_TO_ERASE, DeletionRequest, is_request_id  # noqa: F401  (is_request_id: for the inbox)
from components.data.records import QARecord, Record, TextRecord, content_hash, records_digest

MAX_REQUEST_BYTES = 1_000_000


class RequestError(ValueError):
    """A deletion request that cannot be processed, with every reason found."""

    def __init__(self, reasons: Sequence[str], *, source: str | None = None):
        self.reasons = list(reasons)
        self.source = source
        head = f"deletion request {source} rejected" if source else "deletion request rejected"
        super().__init__(head + ":\n" + "\n".join(f"  - {reason}" for reason in self.reasons))


@dataclass(frozen=True)
class Resolution:
    """What a batch of requests means for the world: the forget set and the retain set."""

    requests: tuple[DeletionRequest, ...]
    forget: list[Record]
    retain: list[Record]
    forget_ids_by_request: dict[str, list[str]] = field(default_factory=dict)
    previously_forgotten: int = 0
    subjects: tuple[str, ...] = field(default_factory=tuple)

    @property
    def request_ids(self) -> list[str]:
        return [request.request_id for request in self.requests]

    def summary(self) -> dict[str, Any]:
        """Counts and hashes only: safe for logs, MLflow and reports."""
        return {
            "request_ids": self.request_ids,
            "request_hashes": {r.request_id: r.fingerprint() for r in self.requests},
            "received_at": {r.request_id: r.received_at.isoformat() for r in self.requests},
            "n_subjects": len(self.subjects),
            "n_forget": len(self.forget),
            "n_retain": len(self.retain),
            "n_previously_forgotten": self.previously_forgotten,
            "forget_digest": records_digest(self.forget),
            "retain_digest": records_digest(self.retain),
            "forget_ids": [record.record_id for record in self.forget],
            "forget_ids_by_request": self.forget_ids_by_request,
        }


def parse_request(data: Any, *, source: str | None = None) -> DeletionRequest:
    """Validate the JSON content of a request; raise :class:`RequestError` with every reason."""
    if not isinstance(data, dict):
        raise RequestError([f"the request must be a JSON object, got {type(data).__name__}"], source=source)
    try:
        return DeletionRequest.parse(data)
    except ValidationError as error:
        reasons = DeletionRequest.reasons(error)
        if not data.get("subjects") and not data.get("records") and NOTHING_TO_ERASE not in reasons:
            reasons.append(NOTHING_TO_ERASE)  # the model checks it only once every field is valid
        raise RequestError(reasons, source=source) from None


def read_request(path: str | Path) -> DeletionRequest:
    """Read and validate a request file (size, encoding, JSON, fields)."""
    path = Path(path)
    source = path.name
    try:
        size = path.stat().st_size
        _check_size(size, source)
        raw = path.read_bytes()
    except FileNotFoundError:
        raise RequestError([f"file not found: {path}"], source=source) from None
    except OSError as error:  # unreadable (permissions, I/O): a reason, not a crash of the caller
        raise RequestError([f"the file cannot be read ({type(error).__name__})"], source=source) from None
    return parse_request_bytes(raw, source=source)


def _check_size(size: int, source: str | None) -> None:
    if size > MAX_REQUEST_BYTES:
        raise RequestError(
            [f"file is {size:,} bytes; requests are limited to {MAX_REQUEST_BYTES:,} bytes "
             "(name subjects instead of listing many records)"],
            source=source,
        )


def parse_request_bytes(raw: bytes, *, source: str | None = None) -> DeletionRequest:
    """Validate a request from the bytes of its file (size, encoding, JSON, fields): what
    :func:`read_request` checks after reading, for bytes a caller already holds."""
    _check_size(len(raw), source)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise RequestError([f"not valid UTF-8 (byte {error.start}); save the file as UTF-8"], source=source)
    if not text.strip():
        raise RequestError(["the file is empty"], source=source)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise RequestError([f"invalid JSON at line {error.lineno}, column {error.colno}: {error.msg}"],
                           source=source) from None
    except RecursionError:  # raised by the parser itself, not a crash: the file is refused like any other
        raise RequestError(["invalid JSON: nested too deeply; a request is one flat JSON object"],
                           source=source) from None
    except ValueError as error:  # e.g. an integer too long to convert
        raise RequestError([f"invalid JSON: {str(error).split(':')[0]}"], source=source) from None
    return parse_request(data, source=source)


def _matches(record: Record, spec: dict[str, str]) -> bool:
    if "record_id" in spec and record.record_id != spec["record_id"]:
        return False
    if "subject" in spec and record.subject != spec["subject"]:
        return False
    if "text" in spec:
        return isinstance(record, TextRecord) and record.text.strip() == spec["text"].strip()
    if "question" in spec:
        if not isinstance(record, QARecord) or record.question.strip() != spec["question"].strip():
            return False
        return "answer" not in spec or record.answer.strip() == spec["answer"].strip()
    return True


def _describe_spec(index: int, spec: dict[str, str]) -> str:
    if "record_id" in spec:
        return f"records[{index}] (record_id {spec['record_id']})"
    return f"records[{index}] (content hash {content_hash(spec)})"


def _select(request: DeletionRequest, world: Sequence[Record], by_subject: dict[str, list[Record]],
            suggestable: Sequence[str]) -> tuple[dict[str, Record], list[str]]:
    """The records one request names, and a reason for each subject or spec that names none
    (or, for a spec, more than one). ``suggestable``: the subjects a "did you mean" may name."""
    reasons: list[str] = []
    chosen: dict[str, Record] = {}
    for subject in request.subjects:
        if subject not in by_subject:
            close = difflib.get_close_matches(subject, suggestable, n=3)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            reasons.append(f"unknown subject '{subject}': no record in the world is about it{hint}")
            continue
        chosen.update((record.record_id, record) for record in by_subject[subject])
    for index, spec in enumerate(request.records):
        hits = [record for record in world if _matches(record, spec)]
        if not hits:
            reasons.append(f"{_describe_spec(index, spec)} is not in the world")
        elif len({record.record_id for record in hits}) > 1:
            reasons.append(
                f"{_describe_spec(index, spec)} matches {len(hits)} records; add 'answer' or "
                "'subject', or name the record by 'record_id'"
            )
        else:
            chosen[hits[0].record_id] = hits[0]
    return chosen, reasons


def _still_known(by_subject: dict[str, list[Record]], forgotten: set[str]) -> list[str]:
    """Subjects with a record not yet erased: the only names a suggestion may give, so that a
    misspelt request never reveals whom earlier requests erased."""
    return [subject for subject, records in by_subject.items()
            if any(record.record_id not in forgotten for record in records)]


def _duplicate_ids(requests: Sequence[DeletionRequest]) -> list[str]:
    ids = [request.request_id for request in requests]
    return [f"duplicate request_id '{i}': every request of a batch needs its own id"
            for i in dict.fromkeys(i for i in ids if ids.count(i) > 1)]


def _check_invariants(resolution: Resolution, forgotten: set[str]) -> None:
    """What the resolver guarantees by construction; a failure here is a bug, not bad data.

    The forget and retain sets are disjoint, nothing erased before is retained, and every
    record a request named is in the forget set.
    """
    forget_ids = {record.record_id for record in resolution.forget}
    retain_ids = {record.record_id for record in resolution.retain}
    named = {record_id for ids in resolution.forget_ids_by_request.values() for record_id in ids}
    broken = [what for what, ok in (
        ("forget and retain sets overlap", not forget_ids & retain_ids),
        ("an earlier erased record is in the retain set", not forgotten & retain_ids),
        ("a requested record is missing from the forget set", named == forget_ids),
    ) if not ok]
    if broken:
        raise AssertionError(f"resolve_requests broke its invariants ({'; '.join(broken)}); report this as a bug")


def resolve_requests(
    requests: Sequence[DeletionRequest],
    world: Sequence[Record],
    *,
    already_forgotten: Iterable[str] = (),
) -> Resolution:
    """Resolve a batch of requests to one forget set (their union) and the retain set.

    ``already_forgotten`` holds record ids erased by earlier requests: they leave the
    retain set for good. Unknown subjects, records not in the world, a record spec that
    matches several records, two requests with one id, and a batch that would leave nothing
    to retain are errors. The result's invariants are checked before it is returned.
    """
    if not requests:
        raise RequestError(["no requests to resolve"])
    forgotten = set(already_forgotten)
    by_subject: dict[str, list[Record]] = {}
    for record in world:
        by_subject.setdefault(record.subject, []).append(record)
    suggestable = _still_known(by_subject, forgotten)
    reasons = _duplicate_ids(requests)
    chosen: dict[str, Record] = {}
    by_request: dict[str, list[str]] = {}
    for request in requests:
        picked, problems = _select(request, world, by_subject, suggestable)
        prefix = f"{request.request_id}: " if len(requests) > 1 else ""
        reasons.extend(prefix + problem for problem in problems)
        chosen.update(picked)
        by_request[request.request_id] = [r.record_id for r in world if r.record_id in picked]

    retain = [r for r in world if r.record_id not in chosen and r.record_id not in forgotten]
    if not reasons and not retain:
        reasons.append(
            "the request would erase the whole world, leaving nothing to retain; "
            "retire the model instead of unlearning"
        )
    if reasons:
        source = requests[0].request_id if len(requests) == 1 else None
        raise RequestError(reasons, source=source)
    forget = [r for r in world if r.record_id in chosen]
    resolution = Resolution(
        requests=tuple(requests),
        forget=forget,
        retain=retain,
        forget_ids_by_request=by_request,
        previously_forgotten=len(set(chosen) & forgotten),
        subjects=tuple(dict.fromkeys(r.subject for r in forget)),
    )
    _check_invariants(resolution, forgotten)
    return resolution


def resolve_request(
    request: DeletionRequest,
    world: Sequence[Record],
    *,
    already_forgotten: Iterable[str] = (),
) -> Resolution:
    """Resolve one request (see :func:`resolve_requests`)."""
    return resolve_requests([request], world, already_forgotten=already_forgotten)
