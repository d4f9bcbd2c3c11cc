"""The world a pipeline run starts from: trained records plus never-trained holdout records."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from components.config import WorldConfig
from components.data.demo_world import generate_world
from components.data.loaders import load_records
from components.data.records import Record
from components.paths import resolve_local


@dataclass(frozen=True)
class World:
    records: list[Record]
    holdout: list[Record]


def load_world(config: WorldConfig, seed: int, root: Path = Path(".")) -> World:
    """Generate the demo world or read the configured file / Hugging Face dataset.

    Relative paths in the config are taken relative to ``root`` (the pipeline folder).
    """
    if config.source == "demo":
        records, holdout = generate_world(
            seed=seed,
            n_subjects=config.n_subjects,
            n_holdout_subjects=config.n_holdout_subjects,
            facts_per_subject=config.facts_per_subject,
        )
        return World(records=list(records), holdout=list(holdout))
    records = load_records(resolve_local(config.path, root), rows_per_subject=config.rows_per_subject)
    holdout = (
        load_records(resolve_local(config.holdout_path, root), rows_per_subject=config.rows_per_subject)
        if config.holdout_path
        else []
    )
    return World(records=records, holdout=holdout)
