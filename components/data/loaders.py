"""Read a world from the formats users have: TOFU JSON/JSONL, plain text, Hugging Face datasets.

Every problem with the input raises :class:`DataError` naming the file, the row (1-based)
and what is wrong, so the person who owns the file can fix it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from components.data.records import DataError, QARecord, Record, TextRecord

QUESTION_KEYS = ("question", "prompt")
ANSWER_KEYS = ("answer", "response")
PERTURBED_KEYS = ("perturbed_answer", "perturbed_answers")


def load_records(path: str | Path, *, rows_per_subject: int | None = None) -> list[Record]:
    """Load QA or text records from a file, a Hugging Face dataset directory, or a dataset name.

    Files: a JSON array, JSON lines, several JSON arrays one per line (``Dataset.to_json``),
    a JSON list of strings, or a ``.txt`` file whose documents are separated by blank lines.
    Rows without a ``subject`` get one per consecutive block of ``rows_per_subject`` rows.
    """
    source = str(path)
    path = Path(path)
    if path.is_dir() or not path.exists():
        rows = _rows_from_hf(source)
    elif path.suffix == ".txt":
        rows = _rows_from_txt(path)
    else:
        rows = _rows_from_json(path)
    if not rows:
        raise DataError("no records found (the file is empty)", path=source)
    return _records_from_rows(rows, source, rows_per_subject)


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(
            f"not valid UTF-8 (byte {error.start}); re-save the file as UTF-8", path=str(path)
        ) from None


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _rows_from_json(path: Path) -> list[Any]:
    text = _read_text(path)
    if not text.strip():
        raise DataError("the file is empty", path=str(path))
    decoder = json.JSONDecoder()
    values, offset = [], 0
    while True:
        while offset < len(text) and text[offset].isspace():
            offset += 1
        if offset >= len(text):
            break
        try:
            value, offset = decoder.raw_decode(text, offset)
        except json.JSONDecodeError as error:
            line = _line_of(text, error.pos)
            raise DataError(f"invalid JSON at line {line}: {error.msg}", path=str(path)) from None
        values.append(value)
    if all(isinstance(value, list) for value in values):
        return [row for value in values for row in value]
    if all(isinstance(value, dict) for value in values):
        return values
    raise DataError(
        "expected a JSON array, JSON lines of objects, or JSON arrays one per line", path=str(path)
    )


def _rows_from_txt(path: Path) -> list[Any]:
    text = _read_text(path)
    blocks, current = [], []
    for line in text.splitlines():
        if line.strip():
            current.append(line)
        elif current:
            blocks.append("\n".join(current))
            current = []
    if current:
        blocks.append("\n".join(current))
    return blocks


def _rows_from_hf(source: str) -> list[Any]:
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a dependency
        raise DataError("reading Hugging Face datasets needs the `datasets` package", path=source)
    path = Path(source)
    try:
        if path.is_dir():
            loaded = datasets.load_from_disk(str(path))
        else:
            loaded = datasets.load_dataset(source)
    except FileNotFoundError:
        raise DataError(
            "no such file, dataset directory or locally cached dataset "
            "(with HF_HUB_OFFLINE=1 only local data can be read)",
            path=source,
        ) from None
    except Exception as error:  # datasets raises many types; all mean "cannot read it"
        raise DataError(f"could not load as a Hugging Face dataset: {error}", path=source) from None
    if isinstance(loaded, datasets.DatasetDict):
        split = "train" if "train" in loaded else next(iter(loaded))
        loaded = loaded[split]
    return [dict(row) for row in loaded]


def _text(value: Any, key: str, source: str, row: int, *, required: bool = True) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str):
        kind = "missing" if value is None else f"a {type(value).__name__}"
        raise DataError(f"'{key}' must be a string, got {kind}", path=source, row=row)
    if not value.strip():
        raise DataError(f"'{key}' is empty", path=source, row=row)
    return value


def _first_key(row: dict, keys: Iterable[str]) -> str | None:
    return next((key for key in keys if key in row), None)


def _qa_record(row: dict, source: str, number: int, subject: str) -> QARecord:
    question_key = _first_key(row, QUESTION_KEYS)
    answer_key = _first_key(row, ANSWER_KEYS)
    if question_key is None or answer_key is None:
        missing = "question (or prompt)" if question_key is None else "answer (or response)"
        raise DataError(f"missing key '{missing}'; keys present: {sorted(row)}", path=source, row=number)
    perturbed_key = _first_key(row, PERTURBED_KEYS)
    perturbed = row.get(perturbed_key) if perturbed_key else None
    if perturbed is not None:
        if isinstance(perturbed, str):
            perturbed = [perturbed]
        if not isinstance(perturbed, list):
            raise DataError(f"'{perturbed_key}' must be a list of strings", path=source, row=number)
        perturbed = [_text(value, perturbed_key, source, number) for value in perturbed]
    return QARecord(
        question=_text(row[question_key], question_key, source, number),
        answer=_text(row[answer_key], answer_key, source, number),
        subject=subject,
        paraphrased_answer=_text(row.get("paraphrased_answer"), "paraphrased_answer", source, number,
                                 required=False),
        perturbed_answers=tuple(perturbed or ()),
    )


def _records_from_rows(rows: list[Any], source: str, rows_per_subject: int | None) -> list[Record]:
    records: list[Record] = []
    for index, row in enumerate(rows):
        number = index + 1
        derived = f"subject-{index // rows_per_subject + 1:04d}" if rows_per_subject else None
        if isinstance(row, str):
            text = _text(row, "text", source, number)
            records.append(TextRecord(text=text, subject=derived or f"document-{number:05d}"))
            continue
        if not isinstance(row, dict):
            raise DataError(
                f"expected an object or a string, got a {type(row).__name__}", path=source, row=number
            )
        is_text = "text" in row and _first_key(row, QUESTION_KEYS) is None
        subject = row.get("subject", derived)
        if subject is None and is_text:
            subject = f"document-{number:05d}"
        if subject is None:
            raise DataError(
                "no 'subject' field; add one to every row or set world.rows_per_subject "
                "to group consecutive rows (TOFU: 20)",
                path=source,
                row=number,
            )
        subject = _text(subject, "subject", source, number)
        if is_text:
            records.append(TextRecord(text=_text(row["text"], "text", source, number), subject=subject))
        else:
            records.append(_qa_record(row, source, number, subject))
    return records


def save_records(records: Iterable[Record], path: str | Path) -> Path:
    """Write records as JSON lines that :func:`load_records` reads back unchanged."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record.to_dict(), ensure_ascii=False) + "\n")
    return path
