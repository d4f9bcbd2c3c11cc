"""The world a pipeline run starts from: trained records plus never-trained holdout records."""

from __future__ import annotations

from dataclasses import dataclass

from components.config import WorldConfig
from components.data.demo_world import generate_world
from components.data.loaders import load_records
from components.data.records import Record


@dataclass(frozen=True)
class World:
    records: list[Record]
    holdout: list[Record]


def load_world(config: WorldConfig, seed: int) -> World:
    """Generate the demo world or read the configured file / Hugging Face dataset."""
    if config.source == "demo":
        records, holdout = generate_world(
            seed=seed,
            n_subjects=config.n_subjects,
            n_holdout_subjects=config.n_holdout_subjects,
            facts_per_subject=config.facts_per_subject,
        )
        return World(records=list(records), holdout=list(holdout))
    records = load_records(config.path, rows_per_subject=config.rows_per_subject)
    holdout = (
        load_records(config.holdout_path, rows_per_subject=config.rows_per_subject)
        if config.holdout_path
        else []
    )
    return World(records=records, holdout=holdout)
