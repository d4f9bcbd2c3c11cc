"""What the flow and the ``blur`` CLI need beyond the stages: one request's check, the production
target, a batch folder's models, and the registry's view (champion, reports). No Prefect here:
``flows/pipeline.py`` wraps these in tasks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from components.config import Config
from components.data.requests import DeletionRequest, RequestError, Resolution, resolve_request
from components.data.world import load_world
from components.modeling.demo import train_demo_tokenizer, train_target, trained_epochs
from components.modeling.io import write_model_ref
from components.modeling.resolve import (link_user_models, load_tokenizer, model_plan, target_source,
                                         with_local_paths, with_max_length)
from components.paths import Paths
from components.stages import train_oracle


def check_request(config: Config, repo: Paths, request: DeletionRequest, *,
                  earlier: Mapping[str, Sequence[str]] | None = None) -> Resolution:
    """Resolve one request against the world and run the validation suites on it alone.

    Raises :class:`RequestError` with every reason (also for failed expectations). The
    token-length checks need the target's tokenizer; before a demo target exists they wait
    for the batch validation.
    """
    from components.validation import validate_request_data

    config = with_local_paths(config, repo.root)
    world = load_world(config.world, config.seed, repo.root)
    forgotten = {record_id for ids in (earlier or {}).values() for record_id in ids}
    resolution = resolve_request(request, world.records, already_forgotten=forgotten)
    target = target_source(model_plan(config, repo.root), repo)
    if target is None:
        return resolution
    tokenizer = load_tokenizer(target, config.model)
    config = with_max_length(config, tokenizer, list(world.records) + list(world.holdout))
    report = validate_request_data(
        world=world.records, forget=resolution.forget, retain=resolution.retain, request=request,
        tokenizer=tokenizer, max_length=config.model.max_length,
    )
    if not report.passed:
        raise RequestError([report.reason()], source=request.request_id)
    return resolution


def ensure_target(config: Config, repo: Paths, *, show_progress: bool = True) -> str:
    """The production target's location: ``model.base``, or the demo target (trained if missing)."""
    config = with_local_paths(config, repo.root)
    found = target_source(model_plan(config, repo.root), repo)
    if found is not None:
        return found
    world = load_world(config.world, config.seed, repo.root)
    tokenizer = train_demo_tokenizer(config, list(world.records) + list(world.holdout))
    config = with_max_length(config, tokenizer, list(world.records) + list(world.holdout))
    train_target(config, world.records, world.holdout, repo.target, tokenizer=tokenizer,
                 show_progress=show_progress)
    return str(repo.target.resolve())


def link_batch_models(config: Config, repo: Paths, paths: Paths, *, start: str | None,
                      show_progress: bool = True) -> dict:
    """Point a batch folder at the target and its starting model, and provide its oracle.

    The oracle must never have seen any forgotten record: on the demo world it is retrained
    on the batch's retain set (the target's recipe and epoch count); for a user's own model
    it is ``model.oracle`` or absent.
    """
    plan = model_plan(config, repo.root)
    target = ensure_target(config, repo, show_progress=show_progress)
    write_model_ref(paths.models / "start", str(Path(start).resolve()) if start else target)
    if not plan.is_demo:
        link_user_models(plan, paths)
        return {"oracle": plan.oracle}
    write_model_ref(paths.target, target)
    oracle = train_oracle(config, paths, load_tokenizer(target, config.model),
                          epochs=trained_epochs(repo.target), show_progress=show_progress)
    return {"oracle": oracle}


def current_champion(config: Config, repo: Paths, *, download: bool = True) -> dict | None:
    """The model the serving alias points to (downloaded under models/champion), or None."""
    from components.registry import champion, tracking_store

    found = champion(config.registry.model_name, config.registry.alias, store=tracking_store(repo.root),
                     dst=repo.models / "champion" if download else None, download=download)
    if found is None:
        return None
    return {"version": found.version, "run_id": found.run_id,
            "model_dir": str(found.model_dir) if found.model_dir else None}


def run_report(config: Config, repo: Paths, run_id: str | None = None) -> str | None:
    """The markdown report of an MLflow run (the latest run of the experiment by default)."""
    from components.registry import connect, tracking_store
    from components.registry.tracking import experiment_id

    store = tracking_store(repo.root)
    client = connect(store)
    if run_id is None:
        experiment = experiment_id(client, store, config.registry.experiment)
        runs = client.search_runs([experiment], order_by=["attributes.start_time DESC"], max_results=1)
        if not runs:
            return None
        run_id = runs[0].info.run_id
    try:
        return Path(client.download_artifacts(run_id, "run_report.md")).read_text(encoding="utf-8")
    except Exception:
        return None


@dataclass(frozen=True)
class ErasedRequest:
    """One request of a passed batch, as its certificate needs it (hashes and ids, no text)."""

    request_id: str
    request_sha256: str
    request_dvc_md5: str | None
    received_at: str | None
    forget_ids: list[str]


def record_erasure(config: Config, repo: Paths, paths: Paths, *, gate: dict, metrics: dict,
                   requests: Sequence[ErasedRequest], batch_id: str) -> dict:
    """Once the new champion serves: purge the older versions that still hold the erased
    records (``registry.retention``), then issue and log one hash-chained certificate per request.

    Idempotent, so a retried or resumed run finishes what a crashed one started. Returns the
    purged versions and certificate hashes by request id.
    """
    from datetime import datetime, timezone

    from components.registry import connect, tracking_store
    from components.registry.certificates import (ErasureEvidence, file_md5, issue_certificate,
                                                  log_certificate_to_mlflow, weights_sha256)
    from components.evaluation.cache import EvalCache
    from components.registry.retention import purge_superseded_versions

    client = connect(tracking_store(repo.root))
    purge = purge_superseded_versions(client, gate["model_name"], gate["version"], config.registry.retention)
    EvalCache(repo.eval_cache).purge(purge.eval_fingerprints)  # their scored outputs go with the weights
    weights, forget_md5 = weights_sha256(paths.unlearned), file_md5(paths.forget)
    erased_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    issued = {}
    for request in requests:
        evidence = ErasureEvidence(
            request_id=request.request_id, request_sha256=request.request_sha256, forget_ids=request.forget_ids,
            model_name=gate["model_name"], model_version=str(gate["version"]), weights_sha256=weights,
            metrics=metrics, gate=gate, received_at=request.received_at, erased_at=erased_at,
            request_dvc_md5=request.request_dvc_md5, forget_dvc_md5=forget_md5, batch_id=batch_id,
            run_id=gate.get("run_id"), retention=purge.policy, versions_superseded=purge.superseded,
            versions_purged=purge.purged)
        path = issue_certificate(repo.root, evidence)
        issued[request.request_id] = log_certificate_to_mlflow(client, gate["model_name"], str(gate["version"]), path)
    return {"versions_purged": list(purge.purged), "certificates": issued}


def purge_batch_copies(config: Config, repo: Paths) -> list[str]:
    """Remove the batch work folders and the downloaded champion (copies of erased text and of
    models that held it) unless ``registry.retention`` is ``keep``."""
    from components.registry.retention import local_copies, purge_local_copies

    if config.registry.retention == "keep":
        return []
    return purge_local_copies(repo.root, local_copies(repo.root, config.flow.runs_dir))


def count_failure(paths: Paths, error: BaseException) -> int:
    """Record one more failed run of the batch in ``paths`` (``failures.json``); returns the count."""
    from components.jsonfiles import write_json

    record = _read_marker(paths.root / "failures.json")
    count = int(record.get("failures", 0)) + 1
    write_json(paths.root / "failures.json", {"failures": count, "last_error": type(error).__name__})
    return count


PUSH_PENDING = "push-pending.json"


def push_or_record(repo: Paths) -> str | None:
    """``dvc push``; on failure record it in ``data/requests/push-pending.json`` (shown by ``blur
    status``, retried by the next run) and return the error; on success clear any record."""
    from datetime import datetime, timezone

    from components.data import versioning
    from components.jsonfiles import write_json

    marker = repo.requests / PUSH_PENDING
    try:
        versioning.push(repo.root)
    except Exception as error:  # the batch is done and versioned locally; only the remote copy lags
        since = _read_marker(marker).get("since") or datetime.now(timezone.utc).isoformat(timespec="seconds")
        write_json(marker, {"since": since, "error": f"{type(error).__name__}: {error}"[:2000]})
        return str(error)
    marker.unlink(missing_ok=True)
    return None


def pending_push(repo: Paths) -> dict | None:
    """The recorded failed ``dvc push`` (``since``, ``error``), or None when the remote is up to date."""
    marker = repo.requests / PUSH_PENDING
    return _read_marker(marker) if marker.exists() else None


def _read_marker(marker: Path) -> dict:
    import json

    try:
        return json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def promoted_batch(config: Config, repo: Paths, champion: dict | None, request_ids: Sequence[str]) -> str | None:
    """The batch id of a previous run whose candidate already serves (the alias moved) and that
    erased some of ``request_ids``, when that run died before settling them; else None.

    Read from the champion's run (``batch_id`` tag) and version (``requests`` tag), and the batch
    folder must still hold its reports and resolution (purged only after settling).
    """
    from components.registry import connect, tracking_store

    if champion is None:
        return None
    client = connect(tracking_store(repo.root))
    batch_id = client.get_run(champion["run_id"]).data.tags.get("batch_id")
    version = client.get_model_version(config.registry.model_name, str(champion["version"]))
    erased = set((version.tags.get("requests") or "").split(","))
    folder = repo.root / config.flow.runs_dir / str(batch_id)
    if not batch_id or not erased & set(request_ids):
        return None
    needed = (folder / "reports" / "gate.json", folder / "reports" / "metrics.json", folder / "data" / "prepared" / "resolution.json")
    return batch_id if all(path.exists() for path in needed) else None
