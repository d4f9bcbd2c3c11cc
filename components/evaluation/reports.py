"""Write an evaluation to ``reports/``: numbers and record ids, never record text.

* ``metrics.json``: ``{"target": {...}, "oracle": {...}, "unlearned": {...}}``, the file
  ``dvc metrics show`` reads (null where a model or a kind of record is absent).
* ``per_item/<role>_<split>.csv``: one flat row per record (``record_id``, ``kind`` and
  per-item values; empty cells where a value does not apply), the files ``dvc plots``
  reads. Splits: ``forget``, ``retain``, ``holdout``, ``utility_<name>``,
  ``knowledge_<name>``, ``earlier_<request id>`` (names as :func:`safe_name` writes them).
  Absent models get the same files with empty values, so the set of outputs does not
  depend on which models were there.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Collection, Mapping

from components.artifacts import Metrics
from components.evaluation.evaluator import (
    EARLIER_PREFIX,
    KNOWLEDGE_PREFIX,
    UTILITY_PREFIX,
    EvaluationResult,
    safe_name,
)
from components.paths import ReportFiles


def split_file_stem(split: str) -> str:
    """The file-name part for a split (``utility:wiki`` -> ``utility_wiki``)."""
    for prefix, word in ((UTILITY_PREFIX, "utility"), (KNOWLEDGE_PREFIX, "knowledge"), (EARLIER_PREFIX, "earlier")):
        if split.startswith(prefix):
            return f"{word}_{safe_name(split[len(prefix):])}"
    return safe_name(split)


def write_reports(result: EvaluationResult, reports_dir: str | Path) -> dict[str, Path]:
    """Write ``metrics.json`` and the per-item CSVs under ``reports_dir``; return what was written.

    Per-item CSVs left from an earlier run in ``reports_dir/per_item`` are removed first,
    so the folder always describes this evaluation only.
    """
    files = ReportFiles(Path(reports_dir))
    files.per_item.mkdir(parents=True, exist_ok=True)
    for stale in files.per_item_files():
        stale.unlink()

    written: dict[str, Path] = {"metrics": Metrics.parse(result.metrics).save(files.metrics)}

    for role, tables in result.per_item.items():
        for split, rows in tables.items():
            path = files.per_item_file(role, split_file_stem(split))
            _write_csv(path, rows)
            written[f"{role}/{split}"] = path
    return written


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    fields = list(rows[0]) if rows else ["record_id", "kind"]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(v) for k, v in row.items()})


def _cell(value: Any) -> Any:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def per_item_means(files: ReportFiles, role: str, split: str, column: str,
                   groups: Mapping[str, Collection[str]]) -> dict[str, float | None]:
    """The mean of ``column`` over each group's records (by record id) in ``role``'s per-item CSV of
    ``split``, as evaluate aggregates a metric; None for a group without a value (or no CSV)."""
    path = files.per_item_file(role, split_file_stem(split))
    if not path.is_file():
        return {name: None for name in groups}
    with path.open(newline="", encoding="utf-8") as handle:
        values = {row["record_id"]: row.get(column) for row in csv.DictReader(handle)}
    means: dict[str, float | None] = {}
    for name, record_ids in groups.items():
        found = [float(values[i]) for i in record_ids if values.get(i) not in (None, "")]
        means[name] = sum(found) / len(found) if found else None
    return means
