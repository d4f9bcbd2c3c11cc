"""The two kinds of record a world is made of, and their content hashes.

A record's id is a hash of its content, so logs, MLflow and reports can name a record
without ever writing its text (the text of a forget set is personal data).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Union


class DataError(ValueError):
    """Malformed input data: says which file, which row and what is wrong."""

    def __init__(self, message: str, *, path: str | None = None, row: int | None = None):
        self.path, self.row, self.reason = path, row, message
        where = path or "<data>"
        if row is not None:
            where += f", row {row}"
        super().__init__(f"{where}: {message}")


def content_hash(payload: Any, length: int = 16) -> str:
    """A short, stable SHA-256 hash of a JSON-serialisable value."""
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:length]


def folder_hash(folder: Path, length: int = 16) -> str:
    """A short SHA-256 hash of every file under ``folder`` (relative names and bytes): the same
    content gives the same hash wherever the folder lies."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:length]


@dataclass(frozen=True)
class QARecord:
    """A question/answer fact about one subject (TOFU style)."""

    question: str
    answer: str
    subject: str
    paraphrased_answer: str | None = None
    perturbed_answers: tuple[str, ...] = field(default_factory=tuple)

    kind = "qa"

    @property
    def record_id(self) -> str:
        return content_hash({"question": self.question, "answer": self.answer})

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["perturbed_answers"] = list(self.perturbed_answers)
        return data


@dataclass(frozen=True)
class TextRecord:
    """A document (a news article, a profile) about one subject."""

    text: str
    subject: str

    kind = "text"

    @property
    def record_id(self) -> str:
        return content_hash({"text": self.text})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


Record = Union[QARecord, TextRecord]


def record_from_dict(data: dict[str, Any]) -> Record:
    """Inverse of ``to_dict`` for records this project wrote itself."""
    if "text" in data:
        return TextRecord(text=data["text"], subject=data["subject"])
    return QARecord(
        question=data["question"],
        answer=data["answer"],
        subject=data["subject"],
        paraphrased_answer=data.get("paraphrased_answer"),
        perturbed_answers=tuple(data.get("perturbed_answers") or ()),
    )


def subjects_of(records: Iterable[Record]) -> list[str]:
    """Distinct subjects in first-seen order."""
    return list(dict.fromkeys(record.subject for record in records))


def records_digest(records: Iterable[Record]) -> str:
    """One hash for a whole set of records (order-independent)."""
    return content_hash(sorted(record.record_id for record in records))
