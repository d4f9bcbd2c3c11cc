"""Stage ``register``: log the candidate to MLflow, apply the gate, promote only if it passes."""

from __future__ import annotations

from pathlib import Path
from typing import Collection, Mapping

from components.artifacts import GateDecision, Metrics, Resolution, UnlearnSummary, read_unlearn_log
from components.config import Config
from components.context import RunContext, as_context
from components.data.versioning import file_md5
from components.paths import Paths


def register(
    run: RunContext | Config,
    paths: Paths | None = None,
    *,
    tracking_root: Path | None = None,
    tags: Mapping[str, str] | None = None,
    dvc_hashes: Mapping[str, str] | None = None,
    processed_requests: Mapping[str, Collection[str]] | None = None,
) -> GateDecision:
    """Log the run to MLflow, apply the gate, and promote the candidate only if it passes.

    Writes reports/gate.json and reports/run_report.md. The MLflow store is the one of
    ``tracking_root`` (default: the pipeline root), or ``MLFLOW_TRACKING_URI``. A ``batch_id``
    tag makes a retry resume the batch's run; without one this is a reproduction (``dvc
    repro``), promoted only if it forgot every request in ``processed_requests`` (request id ->
    erased record ids; default: those the inbox of ``paths.config_root`` has processed).
    """
    from components.data.inbox import Inbox
    from components.erasure.ledger import erased_forget_ids
    from components.erasure.safe import record_id_key
    from components.registry import Candidate, register_candidate, tracking_store
    from components.stages.evaluate import evaluated_fingerprint

    ctx = as_context(run, paths)
    config, paths = ctx.given, ctx.paths  # MLflow records the configuration as written, not as derived
    diagnostics = read_unlearn_log(paths.unlearn_log)
    if dvc_hashes is None:
        dvc_hashes = {p.stem: file_md5(p) for p in paths.prepared_request_files()}
    if processed_requests is None and not (tags or {}).get("batch_id"):
        repo = Paths(paths.config_root)  # no inbox yet: nothing processed (and no folders made)
        known = repo.processed.is_dir() or repo.certificates.is_dir()
        processed_requests = erased_forget_ids(config, repo, Inbox(repo)) if known else {}
    unlearned = paths.report_files.unlearn_summary
    candidate = Candidate(Metrics.load(paths.metrics), diagnostics,
                          Resolution.load(paths.resolution), dvc_hashes, paths.unlearned,
                          evaluated_fingerprint(paths, "unlearned"),
                          stop=UnlearnSummary.load(unlearned).stop if unlearned.exists() else None)
    return register_candidate(
        config, candidate, paths.reports, store=tracking_store(tracking_root or paths.config_root),
        processed_requests=processed_requests, tags=tags, record_id_key=record_id_key(Paths(paths.config_root)),
    )
