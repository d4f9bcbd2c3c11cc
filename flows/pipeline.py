"""The production flow: process every pending deletion request in the inbox as one batch.

Each request is DVC-tracked and validated on its own (a bad one is rejected with a reason
and the rest go on); the valid ones are unlearned together from the current champion,
evaluated (earlier requests included: still forgotten), gated and registered. The flow
calls the same stage functions as ``dvc.yaml``; only the orchestration lives here.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from components import stages
from components.config import Config, load_config
from components.data.inbox import Inbox, Pending
from components.data.records import content_hash
from components.data.requests import RequestError
from components.paths import Paths


# --------------------------------------------------------------------------- tasks


@task(name="track-requests", cache_policy=NO_CACHE)
def track_requests(root: Path, files: list[Path]) -> dict[str, str]:
    """DVC-track every request file of the batch; returns the DVC hash by file name."""
    from components.data import versioning

    return versioning.track(root, files) if files else {}


@task(name="target-model", cache_policy=NO_CACHE)
def target_model(config: Config, repo: Paths) -> Path:
    """The production base model (the demo target is trained once if missing)."""
    return stages.ensure_target(config, repo, show_progress=False)


@task(name="check-request", cache_policy=NO_CACHE)
def check_request(config: Config, repo: Paths, pending: Pending, earlier: dict[str, list[str]],
                  batch: dict[str, list[str]]) -> dict:
    """Resolve one request against the world and validate it, after the requests accepted
    before it in this batch (``batch``: their forget ids by request id).

    A request that fails is rejected here: its reasons may quote it (an unknown subject's
    name), so they go only to the reason file beside it in ``rejected/``, never into a
    Prefect state, log or result. Returns ids and counts only.
    """
    request_id = pending.request.request_id
    try:
        resolution = stages.check_request(config, repo, pending.request, earlier={**earlier, **batch})
    except RequestError as error:
        reasons = list(error.reasons)
        if batch:
            reasons.append(f"checked together with the request(s) accepted before it in this batch: "
                           f"{', '.join(batch)}")
        Inbox(repo).reject(pending.path, RequestError(reasons, source=error.source))
        return {"request_id": request_id, "accepted": False, "n_reasons": len(reasons)}
    return {"request_id": request_id, "accepted": True,
            "forget_ids": [record.record_id for record in resolution.forget]}


@task(name="find-champion", cache_policy=NO_CACHE)
def find_champion(config: Config, repo: Paths) -> dict | None:
    return stages.current_champion(config, repo)


@task(name="prepare", cache_policy=NO_CACHE)
def prepare_batch(config: Config, paths: Paths, files: list[Path], earlier: dict[str, list[str]]) -> dict:
    return stages.prepare(config, paths, request_paths=files, earlier=earlier).summary()


@task(name="base-models", cache_policy=NO_CACHE)
def base_models(config: Config, repo: Paths, paths: Paths, start: str | None) -> dict:
    """Point the batch at the target and its starting model; retrain the oracle if needed."""
    return stages.link_base_models(config, repo, paths, start=start, show_progress=False)


@task(name="validate", cache_policy=NO_CACHE)
def validate_batch(config: Config, paths: Paths) -> dict:
    return stages.validate(config, paths)


@task(name="unlearn", cache_policy=NO_CACHE)
def unlearn_batch(config: Config, paths: Paths) -> dict:
    return stages.unlearn(config, paths, start=paths.models / "start", show_progress=False)


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_batch(config: Config, paths: Paths) -> dict:
    return stages.evaluate(config, paths, show_progress=False)


@task(name="register", cache_policy=NO_CACHE)
def register_batch(config: Config, paths: Paths, repo_root: Path, tags: dict[str, str],
                   dvc_hashes: dict[str, str]) -> dict:
    return stages.register(config, paths, tracking_root=repo_root, tags=tags, dvc_hashes=dvc_hashes)


# --------------------------------------------------------------------------- helpers


def _ensure_concurrency_limit(name: str) -> None:
    """Create the flow's global concurrency limit (1 slot) on the Prefect server if missing."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
            except Exception:  # another process created it first
                pass


def _server_slot(config: Config):
    """The pipeline's slot of the Prefect global concurrency limit, held for the whole batch.

    Only with a Prefect server (``PREFECT_API_URL``): there the limit can be shared by
    several machines, and a slot whose holder was killed is reclaimed when its lease
    (``flow.lease_seconds``) expires. Prefect's embedded ephemeral API never reclaims one
    (it runs no lease reaper, and its leases die with the process), so there a killed run
    would block every later run for good; the inbox file lock alone serialises the runs
    on one machine.
    """
    from prefect.concurrency.sync import concurrency
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        return nullcontext()
    _ensure_concurrency_limit(config.flow.concurrency_limit)
    return concurrency(config.flow.concurrency_limit, occupy=1, timeout_seconds=config.flow.lock_timeout_seconds,
                       lease_duration=config.flow.lease_seconds)


def _batch_id(request_ids: list[str], start: str | None) -> str:
    """Stable for the same requests and starting model, so a crashed batch resumes."""
    return "batch-" + content_hash({"requests": sorted(request_ids), "start": start}, length=12)


def _publish(summary: dict, gate: dict | None, metrics: dict | None) -> None:
    """Prefect artifacts: ids, counts, metrics and the gate decision (never record text)."""
    lines = [
        f"# Deletion batch `{summary['batch_id']}`",
        "",
        f"- processed: {', '.join(summary['processed']) or 'none'}",
        f"- rejected: {', '.join(summary['rejected']) or 'none'}",
        f"- failed: {', '.join(summary['failed']) or 'none'}",
        f"- records forgotten: {summary.get('n_forget', 0)}",
    ]
    if gate is not None:
        lines += ["", f"## Gate: {'passed' if gate['passed'] else 'FAILED'}", "",
                  "| metric | op | threshold | value | passed |", "|---|---|---|---|---|"]
        lines += [f"| {c['metric']} | {c['op']} | {c['threshold']} | {c['value']} | {c['passed']} |"
                  for c in gate["checks"]]
        if gate.get("version"):
            lines.append(f"\nRegistered `{gate['model_name']}` version {gate['version']}"
                         + (f" as `{gate['alias']}`" if gate["passed"] else ""))
    create_markdown_artifact(markdown="\n".join(lines), key="deletion-batch",
                             description="Deletion requests processed by this run")
    if metrics:
        keys = ["forget_prob", "forget_rouge", "forget_quality", "retain_prob", "model_utility",
                "mia_auc", "privleak", "extraction_strength"]
        rows = [{"model": name, **{k: values.get(k) for k in keys}}
                for name, values in metrics.items() if isinstance(values, dict)]
        create_table_artifact(table=rows, key="deletion-metrics", description="Evaluation metrics")


# --------------------------------------------------------------------------- flow


@flow(name="process-deletion-requests")
def process_requests(root: str = ".", params: str = "params.yaml",
                     overrides: dict[str, Any] | None = None) -> dict:
    """Process the pending requests of ``<root>/data/requests/inbox`` as one batch.

    One run at a time per inbox: the inbox file lock (released by the operating system
    if the process dies), then the Prefect concurrency slot (see :func:`_server_slot`).
    """
    logger = get_run_logger()
    repo = Paths(Path(root).resolve())
    config = load_config(repo.root / params)
    if overrides:
        config = config.with_overrides(overrides)
    stages.apply_threads(config)
    retry = {"retries": config.flow.retries, "retry_delay_seconds": config.flow.retry_delay_seconds}
    inbox = Inbox(repo)
    summary: dict[str, Any] = {"batch_id": None, "processed": [], "rejected": [], "failed": []}

    with inbox.lock(timeout=config.flow.lock_timeout_seconds), _server_slot(config):
        valid, invalid = inbox.take()
        if not valid and not invalid:
            logger.info("inbox is empty: nothing to process")
            return summary
        # Unreadable files move first (a plain rename), so one `dvc add` versions the whole batch.
        rejected = []
        for path, error in invalid:
            rejected.append(inbox.reject(path, error))
            summary["rejected"].append(path.name)
            logger.warning("rejected %s: %d problem(s), see rejected/", path.name, len(error.reasons))
        hashes = track_requests.with_options(**retry)(repo.root, [p.path for p in valid] + rejected)

        target_model(config, repo)
        earlier = inbox.earlier()
        accepted: list[Pending] = []
        accepted_forget: dict[str, list[str]] = {}  # forget ids of the requests accepted so far
        for pending in valid:
            verdict = check_request(config, repo, pending, earlier, accepted_forget)
            if verdict["accepted"]:
                accepted.append(pending)
                accepted_forget[verdict["request_id"]] = verdict["forget_ids"]
            else:
                summary["rejected"].append(pending.path.name)
                logger.warning("rejected %s: %d problem(s), see rejected/", verdict["request_id"],
                               verdict["n_reasons"])
        if not accepted:
            _publish(summary, None, None)
            return summary

        champion = find_champion.with_options(**retry)(config, repo)
        start = champion["model_dir"] if champion else None
        request_ids = [p.request.request_id for p in accepted]
        batch = _batch_id(request_ids, champion["version"] if champion else None)
        summary["batch_id"] = batch
        paths = Paths(repo.root / config.flow.runs_dir / batch, config_root=repo.root)
        logger.info("batch %s: %d request(s) from %s", batch, len(accepted),
                    f"champion v{champion['version']}" if champion else "the target model")

        resolution = prepare_batch(config, paths, [p.path for p in accepted], earlier)
        summary["n_forget"] = resolution["n_forget"]
        base_models(config, repo, paths, start)
        try:
            validate_batch(config, paths)
            unlearn_batch(config, paths)
        except Exception as error:
            reason = f"{type(error).__name__}: {error}"
            for pending in accepted:
                inbox.fail(pending, reason)
                summary["failed"].append(pending.request.request_id)
            _publish(summary, None, None)
            raise
        metrics = evaluate_batch(config, paths)
        dvc_hashes = {p.request.request_id: hashes.get(p.path.name, "") for p in accepted}
        gate = register_batch.with_options(**retry)(config, paths, repo.root, {"batch_id": batch}, dvc_hashes)

        for pending in accepted:
            request_id = pending.request.request_id
            if gate["passed"]:
                inbox.complete(pending, {
                    "batch_id": batch,
                    "forget_ids": resolution["forget_ids_by_request"][request_id],
                    "dvc_md5": hashes.get(pending.path.name),
                    "model_name": gate["model_name"],
                    "model_version": gate["version"],
                    "run_id": gate.get("run_id"),
                })
                summary["processed"].append(request_id)
            else:
                reasons = "; ".join(gate.get("reasons", [])) or "the promotion gate did not pass"
                inbox.fail(pending, f"gate failed: {reasons}")
                summary["failed"].append(request_id)
        summary["gate"] = {"passed": gate["passed"], "version": gate.get("version")}
        _publish(summary, gate, metrics)
        try:
            from components.data import versioning

            versioning.push(repo.root)
        except Exception as error:  # the batch is done; a push can be repeated with `dvc push`
            logger.warning("dvc push failed (%s); run `dvc push` later", error)
    return summary
