"""What an erasure leaves once the new champion serves: the older versions that still held the
erased records purged, one hash-chained certificate per request, and the batch's work copies gone."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from components.artifacts import GateDecision, Metrics
from components.config import Config
from components.paths import Paths


@dataclass(frozen=True)
class ErasedRequest:
    """One request of a passed batch, as its certificate needs it (hashes and ids, no text)."""

    request_id: str
    request_sha256: str
    request_dvc_md5: str | None
    received_at: str | None
    forget_ids: list[str]


def record_erasure(config: Config, repo: Paths, paths: Paths, *, gate: GateDecision, metrics: Metrics,
                   requests: Sequence[ErasedRequest], batch_id: str) -> dict:
    """Purge the older versions that still hold the erased records (``registry.retention``) and the
    local copies outside the batch's own folder (:func:`purge_older_copies`), then issue and log one
    hash-chained certificate per request, recording both.

    Idempotent, so a retried or resumed run finishes what a crashed one started. Returns the
    purged versions and certificate hashes by request id.
    """
    from components.data.versioning import file_md5
    from components.erasure.certificates import (ErasureEvidence, issue_certificate, log_certificate_to_mlflow,
                                                 weights_sha256)
    from components.evaluation.cache import EvalCache
    from components.evaluation.metrics import FORGET
    from components.evaluation.reports import per_item_means
    from components.registry import connect, tracking_store
    from components.registry.retention import purge_superseded_versions

    client = connect(tracking_store(repo.root))
    purge = purge_superseded_versions(client, gate.model_name, gate.version, config.registry.retention)
    EvalCache(repo.eval_cache).purge(purge.eval_fingerprints)  # their scored outputs go with the weights
    weights, forget_md5 = weights_sha256(paths.unlearned), file_md5(paths.forget)
    erased_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    removed = purge_older_copies(config, repo, paths)  # before issuing: the certificates record them
    levels = per_item_means(paths.report_files, "unlearned", FORGET, "prob",  # each request's own forget_prob
                            {request.request_id: request.forget_ids for request in requests})
    issued = {}
    for request in requests:
        evidence = ErasureEvidence(
            request_id=request.request_id, request_sha256=request.request_sha256, forget_ids=request.forget_ids,
            model_name=gate.model_name, model_version=str(gate.version), weights_sha256=weights,
            metrics=metrics, request_forget_prob=levels[request.request_id], gate=gate,
            received_at=request.received_at, erased_at=erased_at,
            request_dvc_md5=request.request_dvc_md5, forget_dvc_md5=forget_md5, batch_id=batch_id,
            run_id=gate.run_id, retention=purge.policy, versions_superseded=purge.superseded,
            versions_purged=purge.purged, local_copies_removed=removed)
        path = issue_certificate(repo.root, evidence)
        issued[request.request_id] = log_certificate_to_mlflow(client, gate.model_name, str(gate.version), path)
    return {"versions_purged": list(purge.purged), "certificates": issued}


def purge_older_copies(config: Config, repo: Paths, batch: Paths) -> list[str]:
    """Remove the local copies of erased data outside ``batch``'s own folder (the downloaded previous
    champion; other batch folders' data, models and checkpoints) unless ``registry.retention`` is ``keep``;
    returns them relative to the repository. The batch's own folder stays until its requests settle: a run
    that stops before then issues the certificates again from it (:func:`purge_batch_copies` removes it)."""
    from components.registry.retention import local_copies, purge_local_copies

    if config.registry.retention == "keep":
        return []
    own = Path(os.path.abspath(batch.root))
    others = [p for p in local_copies(repo.root, config.flow.runs_dir)
              if not (Path(os.path.abspath(p)) == own or own in Path(os.path.abspath(p)).parents)]
    return purge_local_copies(repo.root, others)


def purge_batch_copies(config: Config, repo: Paths) -> list[str]:
    """Remove the batch work folders and the downloaded champion (copies of erased text and of
    models that held it) unless ``registry.retention`` is ``keep``."""
    from components.registry.retention import local_copies, purge_local_copies

    if config.registry.retention == "keep":
        return []
    return purge_local_copies(repo.root, local_copies(repo.root, config.flow.runs_dir))
