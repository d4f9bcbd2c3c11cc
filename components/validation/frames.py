"""Text-free tables of the data to validate: ids, hashes, counts and flags.

The text of a forget set is personal data, and Great Expectations writes the values it
finds wrong into its results and Data Docs. So the suites never see a question, an answer,
a document or a subject name: every record becomes a row of its ``record_id`` (a content
hash), the hash of its subject, its kind, its token counts and whether the world holds it.
Rows are numbered from 1, like the lines of the JSONL files the prepare stage writes. (The
loaders have already refused a record with a missing, empty or non-string field.)

Plain Python (column lists); :mod:`components.validation.gx_run` turns them into pandas
DataFrames when a validation runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from components.data.records import QARecord, Record, content_hash
from components.data.requests import DeletionRequest

# Long enough that encode_record never truncates: we want the length before truncation.
_UNTRUNCATED = 1 << 30


@dataclass(frozen=True)
class Frame:
    """A table: column name -> values, one value per row (rows numbered from 1)."""

    columns: dict[str, list[Any]]

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()), []))

    def value(self, column: str, row: int) -> Any:
        return self.columns[column][row - 1]


def _alternative_answers(record: QARecord) -> list[str]:
    answers = [record.paraphrased_answer] if record.paraphrased_answer is not None else []
    return answers + list(record.perturbed_answers or ())


def _record_row(record: Record) -> dict[str, Any]:
    return {"record_id": record.record_id, "subject_hash": content_hash(record.subject), "kind": record.kind}


def _token_lengths(record: Record, tokenizer) -> tuple[int, int | None, int]:
    """Encoded length of prompt + answer, of the longest prompt + alternative answer, and the
    number of scored tokens (the answer of a QA record, a text record's text, with eos).

    Uses the encoding of training and evaluation (components.modeling.encoding), so the
    counts include the prompt template and the special tokens. Alternative answers are a
    QA record's paraphrased and perturbed answers (None when it has none). The scored
    tokens are the ones membership scores and answer probabilities are computed on.
    """
    from components.modeling.encoding import IGNORE_INDEX, encode_record

    encoded = encode_record(tokenizer, record, _UNTRUNCATED)
    alternatives = _alternative_answers(record) if isinstance(record, QARecord) else []
    longest = max(
        (len(encode_record(tokenizer, record, _UNTRUNCATED, answer=answer).input_ids) for answer in alternatives),
        default=None,
    )
    return len(encoded.input_ids), longest, sum(label != IGNORE_INDEX for label in encoded.labels)


def _to_frame(rows: list[dict[str, Any]], columns: Sequence[str]) -> Frame:
    return Frame({column: [row[column] for row in rows] for column in columns})


def records_frame(records: Sequence[Record], columns: Sequence[str]) -> Frame:
    """The world: each record's id, subject hash and kind."""
    return _to_frame([_record_row(record) for record in records], columns)


def split_frame(
    records: Sequence[Record], columns: Sequence[str], *, tokenizer, world_ids: set[str]
) -> Frame:
    """A forget, retain or holdout set: ids, token lengths, membership of the world."""
    rows = []
    for record in records:
        row = _record_row(record)
        row["n_tokens"], row["n_tokens_alternatives"], row["n_scored_tokens"] = _token_lengths(record, tokenizer)
        row["in_world"] = row["record_id"] in world_ids
        rows.append(row)
    return _to_frame(rows, columns)


def request_frame(requests: Sequence[DeletionRequest], columns: Sequence[str]) -> Frame:
    """One row per request: its id and how many subjects and records it names."""
    rows = [{"request_id": request.request_id, "n_subjects": len(request.subjects),
             "n_records": len(request.records)} for request in requests]
    return _to_frame(rows, columns)


def ids_of(records: Iterable[Record]) -> set[str]:
    return {record.record_id for record in records}
