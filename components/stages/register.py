"""Stage ``register``: log the candidate to MLflow, apply the gate, promote only if it passes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Mapping

from components.config import Config
from components.paths import Paths


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def register(
    config: Config,
    paths: Paths,
    *,
    tracking_root: Path | None = None,
    tags: Mapping[str, str] | None = None,
    dvc_hashes: Mapping[str, str] | None = None,
) -> dict:
    """Log the run to MLflow, apply the gate, and promote the candidate only if it passes.

    Writes reports/gate.json and reports/run_report.md. The MLflow store is the one of
    ``tracking_root`` (default: the pipeline root), or ``MLFLOW_TRACKING_URI``.
    """
    from components.registry import RetryPolicy, register_candidate, tracking_store

    metrics = _read_json(paths.reports / "metrics.json")
    log = paths.reports / "unlearn_log.jsonl"
    diagnostics = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    if dvc_hashes is None:  # DVC's md5 of a file is the md5 of its bytes
        dvc_hashes = {p.stem: hashlib.md5(p.read_bytes()).hexdigest()
                      for p in sorted((paths.prepared / "requests").glob("*.json"))}
    decision = register_candidate(
        config, metrics=metrics, diagnostics=diagnostics, summary=_read_json(paths.resolution),
        dvc_hashes=dvc_hashes, model_dir=paths.unlearned, reports_dir=paths.reports,
        store=tracking_store(tracking_root or paths.config_root), retry=RetryPolicy(),
        tags=tags,
    )
    return decision.to_dict()
