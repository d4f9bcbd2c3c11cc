"""What an erasure leaves once the new champion serves: the older versions that still held the
erased records purged, one hash-chained certificate per request, and the batch's work copies gone."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
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
    """Purge the older versions that still hold the erased records (``registry.retention``), then
    issue and log one hash-chained certificate per request.

    Idempotent, so a retried or resumed run finishes what a crashed one started. Returns the
    purged versions and certificate hashes by request id.
    """
    from components.data.versioning import file_md5
    from components.erasure.certificates import (ErasureEvidence, issue_certificate, log_certificate_to_mlflow,
                                                 weights_sha256)
    from components.evaluation.cache import EvalCache
    from components.registry import connect, tracking_store
    from components.registry.retention import purge_superseded_versions

    client = connect(tracking_store(repo.root))
    purge = purge_superseded_versions(client, gate.model_name, gate.version, config.registry.retention)
    EvalCache(repo.eval_cache).purge(purge.eval_fingerprints)  # their scored outputs go with the weights
    weights, forget_md5 = weights_sha256(paths.unlearned), file_md5(paths.forget)
    erased_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    issued = {}
    for request in requests:
        evidence = ErasureEvidence(
            request_id=request.request_id, request_sha256=request.request_sha256, forget_ids=request.forget_ids,
            model_name=gate.model_name, model_version=str(gate.version), weights_sha256=weights,
            metrics=metrics, gate=gate, received_at=request.received_at, erased_at=erased_at,
            request_dvc_md5=request.request_dvc_md5, forget_dvc_md5=forget_md5, batch_id=batch_id,
            run_id=gate.run_id, retention=purge.policy, versions_superseded=purge.superseded,
            versions_purged=purge.purged)
        path = issue_certificate(repo.root, evidence)
        issued[request.request_id] = log_certificate_to_mlflow(client, gate.model_name, str(gate.version), path)
    return {"versions_purged": list(purge.purged), "certificates": issued}


def purge_batch_copies(config: Config, repo: Paths) -> list[str]:
    """Remove the batch work folders and the downloaded champion (copies of erased text and of
    models that held it) unless ``registry.retention`` is ``keep``."""
    from components.registry.retention import local_copies, purge_local_copies

    if config.registry.retention == "keep":
        return []
    return purge_local_copies(repo.root, local_copies(repo.root, config.flow.runs_dir))
