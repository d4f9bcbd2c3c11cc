"""TOFU's general-knowledge sets (real authors, world facts): what a pretrained model knows
and unlearning must keep. Loading and the on/off decision; the metrics are in ``metrics.py``."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Literal, Sequence

from components.config import ModelConfig
from components.data.loaders import load_records
from components.data.records import DataError, QARecord


def knowledge_wanted(setting: Literal["auto", "on", "off"], model: ModelConfig) -> bool:
    """``auto``: on for a pretrained model (``model.base``, or ``model.pretrained`` that the demo
    target is fine-tuned from), off for the tiny demo model trained from scratch, which knows
    none of it (and whose metrics then stay as they were)."""
    return setting == "on" or (setting == "auto" and bool(model.base or model.pretrained))


def load_knowledge_set(path: str | Path) -> list[QARecord]:
    """Questions with wrong options; the answer is its own paraphrase, as TOFU scores these sets."""
    records = load_records(path, rows_per_subject=1)
    for row, record in enumerate(records, start=1):
        if not isinstance(record, QARecord) or not record.perturbed_answers:
            raise DataError("a knowledge set needs questions with wrong options ('perturbed_answer': a list "
                            "of strings); fix the row or remove the file from eval.knowledge_sets",
                            path=str(path), row=row)
    return [replace(record, paraphrased_answer=record.answer) for record in records]


def load_knowledge_sets(paths: Sequence[str | Path]) -> dict[str, list[QARecord]]:
    """Each set under its file name without extension (``world_facts.json`` -> ``world_facts``)."""
    sets: dict[str, list[QARecord]] = {}
    for path in paths:
        name = Path(path).stem
        if name in sets:
            raise ValueError(f"eval.knowledge_sets: two files are named '{name}' ({path}); the file name "
                             "becomes the metric prefix, so rename one")
        sets[name] = load_knowledge_set(path)
    return sets
