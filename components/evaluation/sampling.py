"""Fixed subsets of evaluation sets (``eval.sample``): fewer sequences where the statistics allow."""

from __future__ import annotations

from typing import Sequence

from components.data.records import Record


def fixed_sample(records: Sequence[Record], n: int | None) -> list[Record]:
    """The ``n`` records with the smallest ids, in their original order (all of them when ``n`` is None
    or not smaller): the same subset in every run and for every model, whatever order the file has."""
    records = list(records)
    if n is None or n >= len(records):
        return records
    chosen = set(sorted(range(len(records)), key=lambda i: records[i].record_id)[:n])
    return [record for i, record in enumerate(records) if i in chosen]
