"""The production flow: process every pending deletion request in the inbox as one batch.

Each request is DVC-tracked and validated on its own (a bad one is rejected with a reason
and the rest go on); the valid ones are unlearned together from the current champion,
evaluated (earlier requests included: still forgotten), gated and registered. The flow
calls the same stage functions as ``dvc.yaml``; only the orchestration lives here.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from components import stages
from components.artifacts import ROLES, ErasureRecord, GateDecision, Metrics, Resolution
from components.config import Config, load_config
from components.context import RunContext, run_context
from components.data import versioning
from components.data.inbox import Inbox, InboxError, Pending, Unversionable, label, unversionable_reason
from components.data.records import content_hash
from components.data.requests import RequestError, parse_request_bytes
from components.data.versioning import (VersioningError, bytes_md5, mark_push_pending, pending_push,
                                         push_or_record)
from components.erasure.ledger import certified_requests, erased_forget_ids, registry_erasures, same_request_file
from components.erasure.record import ErasedRequest
from components.erasure.record import purge_batch_copies as purge_copies
from components.erasure.record import record_erasure as erasure_record
from components.faults import crash_point
from components.paths import PARAMS_FILE, Paths
from components.registry.promotion import promoted_batch
from components.reports.run_report import gate_lines
from components.runtime import apply_threads
from flows import batch as batch_steps
from flows import launch


def _task(function, name: str):
    """A stage as a Prefect task whose return value Prefect never stores (``persist_result=False``, whatever
    PREFECT_RESULTS_PERSIST_BY_DEFAULT says): some carry request file names, which can name a person."""
    return task(function, name=name, cache_policy=NO_CACHE, persist_result=False)


# Tasks: the stage functions themselves, as Prefect tasks (retries are added where the flow
# talks to DVC or MLflow).
track_requests = _task(versioning.track, "track-requests")
target_model = _task(batch_steps.ensure_target, "target-model")
find_champion = _task(batch_steps.current_champion, "find-champion")
find_registry_erasures = _task(registry_erasures, "registry-erasures")
batch_models = _task(batch_steps.link_batch_models, "batch-models")
validate_batch = _task(stages.validate, "validate")
unlearn_batch = _task(launch.unlearn, "unlearn")  # torchrun when unlearn.nproc > 1
evaluate_batch = _task(stages.evaluate, "evaluate")
register_batch = _task(stages.register, "register")
record_erasure = _task(erasure_record, "record-erasure")
purge_batch_copies = _task(purge_copies, "purge-copies")


@task(name="prepare", cache_policy=NO_CACHE, persist_result=False)
def prepare_batch(run: RunContext, data: list[bytes], earlier: dict[str, list[str]],
                  levels: dict[str, float] | None = None) -> Resolution:
    """The batch's splits (``levels``: the forget_prob each earlier request was erased to); only the
    resolution's ids and counts become the task's result, no record text."""
    stages.prepare(run, request_data=data, earlier=earlier, earlier_levels=levels)
    return Resolution.load(run.paths.resolution)


@task(name="check-request", cache_policy=NO_CACHE, persist_result=False)
def check_request(ctx: RunContext, pending: Pending, earlier: dict[str, list[str]],
                  batch: dict[str, list[str]]) -> dict:
    """Resolve one request against the world and validate it, after the requests accepted
    before it in this batch (``batch``: their forget ids by request id).

    A request that fails is rejected here: its reasons may quote it (an unknown subject's
    name), so they go only to the reason file beside it in ``rejected/``, never into a
    Prefect state, log or result. Returns ids and counts only.
    """
    request_id = pending.request.request_id
    try:
        resolution = batch_steps.check_request(ctx, pending.request, earlier={**earlier, **batch})
    except RequestError as error:
        reasons = list(error.reasons)
        if batch:
            reasons.append(f"checked together with the request(s) accepted before it in this batch: "
                           f"{', '.join(batch)}")
        Inbox(ctx.paths).reject(pending.path, RequestError(reasons, source=error.source))
        return {"request_id": request_id, "accepted": False, "n_reasons": len(reasons)}
    return {"request_id": request_id, "accepted": True,
            "forget_ids": [record.record_id for record in resolution.forget]}


# --------------------------------------------------------------------------- the batch's state


@dataclass
class Batch:
    """What one run knows about its batch; the summary it returns is built from it."""

    ctx: RunContext  # the repository's: its folders and the effective configuration
    hashes: dict[str, str] = field(default_factory=dict)
    data: dict[str, bytes] = field(default_factory=dict)  # request bytes as versioned, by request id
    accepted: list[Pending] = field(default_factory=list)
    registry_erased: set[str] | None = None  # request ids the registry holds as erased, read once per run
    registering: bool = False  # the batch reached the registry: from here its alias may move
    summary: dict[str, Any] = field(default_factory=lambda: {
        "batch_id": None, "processed": [], "rejected": [], "failed": []})

    @property
    def repo(self) -> Paths:
        return self.ctx.paths

    @property
    def config(self) -> Config:
        return self.ctx.config

    @property
    def retry(self) -> dict[str, float]:
        return {"retries": self.config.flow.retries, "retry_delay_seconds": self.config.flow.retry_delay_seconds}


def _take(batch: Batch, inbox: Inbox) -> list[Pending]:
    """Take the inbox (at most ``flow.max_batch_requests`` valid requests, oldest first, and beyond
    that every waiting request the registry holds as erased without a certificate: see
    :meth:`Inbox.take`): one `dvc add` tracks every file of it, then the unreadable ones move to
    rejected/. Logs and the summary name a file by its request id or a hash (:func:`label`), never by
    its file name. A certified request needs no such care: its certificate outlives any alias move."""
    logger = get_run_logger()
    _recognise_stopped_batch(batch, inbox)
    limit = batch.config.flow.max_batch_requests
    erased = _registry_erased(batch) - inbox.certified_ids() if len(inbox.files()) > limit else set()
    valid, invalid = inbox.take(limit=limit, erased=erased, claim=True)
    crash_point("take")
    invalid = _quarantine(batch, inbox, invalid)
    files = [p.path for p in valid] + [path for path, _ in invalid]
    batch.hashes = track_requests.with_options(**batch.retry)(batch.repo.root, files) if files else {}
    crash_point("track")
    for path, error in invalid:  # tracked first: a failed `dvc add` leaves every file in the inbox
        name = label(path)
        inbox.reject(path, error)
        batch.summary["rejected"].append(name)
        logger.warning("rejected %s: %d problem(s), see rejected/", name, len(error.reasons))
    return _pin(batch, inbox, valid)


def _recognise_stopped_batch(batch: Batch, inbox: Inbox) -> None:
    """A batch record found before this run's take (this run holds the run lock) is a stopped run's: say
    so (ids only). The take replaces it: what that run took is taken again or, beyond the limit, read
    from the registry as not erased (:meth:`Inbox.stopped_batch`)."""
    try:
        stopped = inbox.running()
    except InboxError as error:
        get_run_logger().warning("a previous run's batch record cannot be read (%s); this run takes the inbox "
                                 "again under a new one", type(error).__name__)
        batch.summary["stopped_batch"] = "unreadable"
        return
    if stopped is not None:
        get_run_logger().warning("a previous run stopped before deciding %s; this run takes the inbox again",
                                 stopped.describe())
        batch.summary["stopped_batch"] = stopped.batch_id or stopped.taken_at


def _quarantine(batch: Batch, inbox: Inbox,
                invalid: list[tuple[Path, RequestError]]) -> list[tuple[Path, RequestError]]:
    """Move the files that cannot be versioned (unreadable, vanished, too big) to rejected/ without
    `dvc add`, or skip them with a logged reason when they are gone; returns the other invalid files."""
    logger = get_run_logger()
    rest = []
    for path, error in invalid:
        if not isinstance(error, Unversionable):
            rest.append((path, error))
            continue
        name = label(path)
        moved = inbox.quarantine(path, error)
        outcome = "rejected" if moved else "skipped"  # skipped: it vanished, there is nothing to move
        batch.summary[outcome] = [*batch.summary.get(outcome, []), name]
        logger.warning("%s %s: %s", "quarantined" if moved else "skipped", name,
                       error.reasons[0] if error.reasons else "cannot be versioned")
    return rest


def _pin(batch: Batch, inbox: Inbox, valid: list[Pending]) -> list[Pending]:
    """Read each request file once, after DVC hashed it: the bytes versioned are the bytes
    resolved and unlearned (a file changed in between is rejected)."""
    pinned = []
    for pending in valid:
        try:
            data = pending.path.read_bytes()
        except OSError as error:  # unreadable or gone since it was versioned
            reason = unversionable_reason(pending.path) or f"the file cannot be read ({type(error).__name__})"
            _quarantine(batch, inbox, [(pending.path, Unversionable([reason], source=pending.request.request_id))])
            continue
        if bytes_md5(data) != batch.hashes.get(pending.path.name):
            inbox.reject(pending.path, RequestError(
                ["the file changed while it was being versioned; hand it in again"], source=pending.path.name))
            batch.summary["rejected"].append(pending.request.request_id)
            continue
        request = parse_request_bytes(data, source=pending.request.request_id)
        batch.data[request.request_id] = data
        pinned.append(Pending(pending.path, request))
    return pinned


def _registry_erased(batch: Batch) -> set[str]:
    """The request ids the registry holds as erased (:func:`registry_erasures`), read once per run."""
    if batch.registry_erased is None:
        batch.registry_erased = set(find_registry_erasures.with_options(**batch.retry)(batch.repo.root))
    return batch.registry_erased


def _erased_before(batch: Batch, inbox: Inbox) -> dict[str, list[str]]:
    """The record ids of every erased request (notes, certificates and the registry's tags,
    checked against each other: :func:`erased_forget_ids`); none of them may be retained."""
    return erased_forget_ids(batch.config, batch.repo, inbox, registry=_registry_erased(batch))


def _settle_certified(batch: Batch, inbox: Inbox, valid: list[Pending],
                      earlier: dict[str, list[str]]) -> list[Pending]:
    """Settle as processed each waiting request that already has a certificate (a run died, or
    `dvc move` failed, between the certificate and the settle): its erasure was made, so it is
    never unlearned, checked or cancelled again. A different file reusing its id is rejected.
    Returns the other requests."""
    certified = certified_requests(batch.repo.root)
    rest = []
    for pending in valid:
        request_id = pending.request.request_id
        certificate = certified.get(request_id)
        if certificate is None:
            rest.append(pending)
        elif certificate.readable and not same_request_file(batch.repo, certificate, pending.path):
            inbox.reject(pending.path, RequestError(
                [f"duplicate request_id '{request_id}': a request with this id was already erased"],
                source=request_id))
            batch.summary["rejected"].append(request_id)
        else:
            inbox.complete(pending, ErasureRecord(
                request_id=request_id, batch_id=certificate.batch_id, forget_ids=earlier[request_id],
                dvc_md5=batch.hashes.get(pending.path.name), model_name=certificate.model_name,
                model_version=certificate.model_version, run_id=certificate.run_id))
            batch.summary["processed"].append(request_id)
            get_run_logger().info("%s already has a deletion certificate: settled as processed", request_id)
    return rest


def _check_each(batch: Batch, inbox: Inbox, valid: list[Pending]) -> None:
    """Validate each request on its own, after those accepted before it; reject the bad ones.
    A request already erased is settled from its certificate, never checked or unlearned again."""
    logger = get_run_logger()
    target_model(batch.ctx, show_progress=False)
    earlier = _erased_before(batch, inbox)
    valid = _settle_certified(batch, inbox, valid, earlier)
    accepted_forget: dict[str, list[str]] = {}
    for pending in valid:
        own = pending.request.request_id  # erased in the registry but not yet certified: checked against the others
        verdict = check_request(batch.ctx, pending, {k: v for k, v in earlier.items() if k != own},
                                accepted_forget)
        if verdict["accepted"]:
            batch.accepted.append(pending)
            accepted_forget[verdict["request_id"]] = verdict["forget_ids"]
        else:
            batch.summary["rejected"].append(verdict["request_id"])
            logger.warning("rejected %s: %d problem(s), see rejected/", verdict["request_id"], verdict["n_reasons"])


def _batch_id(request_ids: list[str], start: str | None) -> str:
    """Stable for the same requests and starting model, so a crashed batch resumes."""
    return "batch-" + content_hash({"requests": sorted(request_ids), "start": start}, length=12)


def _open_batch(batch: Batch, champion: dict | None) -> tuple[Paths, str | None]:
    """The batch's id and folder, from the accepted requests and the current champion."""
    start = champion["model_dir"] if champion else None
    batch_id = _batch_id([p.request.request_id for p in batch.accepted], champion["version"] if champion else None)
    batch.summary["batch_id"] = batch_id
    Inbox(batch.repo).name_batch(batch_id)
    get_run_logger().info("batch %s: %d request(s) from %s", batch_id, len(batch.accepted),
                          f"champion v{champion['version']}" if champion else "the target model")
    return batch.repo.batch(batch.config.flow.runs_dir, batch_id), start


@contextmanager
def _failures_counted(batch: Batch, inbox: Inbox, paths: Paths):
    """A batch that keeps failing must not block the inbox: after ``flow.max_batch_failures``
    failed runs its requests go to failed/ (retriable) with the last error, and the rest go on."""
    try:
        yield
    except Exception as error:
        if batch.summary["failed"]:  # already sent to failed/ (validation or unlearning)
            raise
        count = batch_steps.count_failure(paths, error)
        if count >= batch.config.flow.max_batch_failures:
            _fail_all(batch, inbox, f"the batch failed {count} runs in a row; last: {type(error).__name__}: {error}")
        raise


def _unlearn(batch: Batch, inbox: Inbox, run: RunContext) -> None:
    """Validate the batch and unlearn it; on any error every request of it goes to failed/."""
    try:
        validate_batch(run)
        unlearn_batch(run, start=run.paths.start, show_progress=False)
    except Exception as error:
        _fail_all(batch, inbox, f"{type(error).__name__}: {error}")
        raise


def _fail_all(batch: Batch, inbox: Inbox, reason: str) -> None:
    """Every request of the batch to failed/ with ``reason`` (retriable); publish the outcome. Before the
    batch reached the registry nothing of it can serve, so the batch record lets them go (a retried one can
    be cancelled although this run raises and leaves its record); after, the record keeps them until a run
    reads the registry (the alias may have moved before the failure)."""
    for pending in batch.accepted:
        inbox.fail(pending, reason, release=not batch.registering)
        batch.summary["failed"].append(pending.request.request_id)
    _spend_failures(batch)
    _publish(batch.summary, None, None)


def _spend_failures(batch: Batch) -> None:
    """The batch's requests went to failed/: its failure count (``failures.json``) is spent, so a
    retry (``blur request retry``, one or ``--all``) gets ``flow.max_batch_failures`` fresh runs."""
    if batch.summary["batch_id"]:
        batch_steps.reset_failures(batch.repo.batch(batch.config.flow.runs_dir, batch.summary["batch_id"]))


def _erased(batch: Batch, forget_ids: dict[str, list[str]]) -> list[ErasedRequest]:
    """What each accepted request's certificate needs, read before the files move."""
    from components.erasure.certificates import file_sha256

    return [ErasedRequest(
        request_id=p.request.request_id, request_sha256=file_sha256(p.path),
        request_dvc_md5=batch.hashes.get(p.path.name), received_at=p.request.received_at.isoformat(),
        forget_ids=forget_ids[p.request.request_id]) for p in batch.accepted]


def _settle(batch: Batch, inbox: Inbox, gate: GateDecision, forget_ids: dict[str, list[str]]) -> None:
    """Processed (with ids, hashes and the model version) when the gate passed, else failed."""
    for pending in batch.accepted:
        request_id = pending.request.request_id
        if gate.passed:
            inbox.complete(pending, ErasureRecord(
                request_id=request_id, batch_id=batch.summary["batch_id"], forget_ids=forget_ids[request_id],
                dvc_md5=batch.hashes.get(pending.path.name), model_name=gate.model_name,
                model_version=gate.version, run_id=gate.run_id))
            batch.summary["processed"].append(request_id)
        else:
            reasons = "; ".join(gate.reasons) or "the promotion gate did not pass"
            inbox.fail(pending, f"gate failed: {reasons}", release=True)  # a failed gate moves no alias
            batch.summary["failed"].append(request_id)
    if not gate.passed:
        _spend_failures(batch)
    batch.summary["gate"] = {"passed": gate.passed, "version": gate.version}


def _run_batch(batch: Batch, inbox: Inbox, paths: Paths,
               start: str | None) -> tuple[Resolution, Metrics, GateDecision]:
    """Prepare, provide the models, validate, unlearn, evaluate, register: (resolution, metrics, gate)."""
    repo = batch.repo
    ids = {p.request.request_id for p in batch.accepted}
    earlier = {k: v for k, v in _erased_before(batch, inbox).items() if k not in ids}
    levels = {rid: c.erased_forget_prob for rid, c in certified_requests(repo.root).items()
              if rid in earlier and c.erased_forget_prob is not None}
    batch_ctx = batch.ctx.at(paths)
    resolution = prepare_batch(batch_ctx, [batch.data[p.request.request_id] for p in batch.accepted], earlier, levels)
    crash_point("resolve")
    batch.summary["n_forget"] = resolution.n_forget
    run = batch_ctx.prepared()  # model.max_length as prepare derived it
    models = batch_models(batch.ctx, run, start=start, show_progress=False)
    if models.get("cached"):
        batch.summary["oracle_from_cache"] = models["cached"]
        get_run_logger().info("oracle: from the fine-tune cache (%s), not trained again", models["cached"])
    _unlearn(batch, inbox, run)
    crash_point("unlearn")
    metrics = evaluate_batch(run, show_progress=False)
    get_run_logger().info("evaluate: %s", stages.evaluate_cost_summary(paths))
    crash_point("evaluate")
    dvc_hashes = {p.request.request_id: batch.hashes.get(p.path.name, "") for p in batch.accepted}
    batch.registering = True  # set before the step that may move the alias: a failure from here keeps the record
    gate = register_batch.with_options(**batch.retry)(
        run, tracking_root=repo.root, tags={"batch_id": batch.summary["batch_id"]},
        dvc_hashes=dvc_hashes)
    crash_point("alias")
    return resolution, metrics, gate


def _promoted(batch: Batch, champion: dict | None) -> tuple[Paths, GateDecision, Metrics, dict] | None:
    """When the champion is a previous run's candidate for some of these requests (it died after
    moving the alias, before settling): that batch's folder, gate, metrics and forget ids, with
    ``batch.accepted`` narrowed to its requests (the others wait for the next run)."""
    ids = [p.request.request_id for p in batch.accepted]
    batch_id = promoted_batch(batch.config, batch.repo, champion, ids)
    if batch_id is None:
        return None
    paths = batch.repo.batch(batch.config.flow.runs_dir, batch_id)
    resolution = Resolution.load(paths.resolution)
    batch.accepted = [p for p in batch.accepted if p.request.request_id in resolution.forget_ids_by_request]
    batch.summary.update(batch_id=batch_id, n_forget=resolution.n_forget)
    Inbox(batch.repo).name_batch(batch_id)
    get_run_logger().info("batch %s already serves as the champion: settling its %d request(s)", batch_id,
                          len(batch.accepted))
    return paths, GateDecision.load(paths.gate), Metrics.load(paths.metrics), resolution.forget_ids_by_request


def _finish(batch: Batch, inbox: Inbox, paths: Paths, gate: GateDecision, metrics: Metrics,
            forget_ids: dict[str, list[str]]) -> None:
    """Certificates and the purge of superseded versions (gate passed), then settle every request,
    remove the batch's work copies, publish, push."""
    config, repo = batch.config, batch.repo
    if gate.passed:  # certificates before settling: a crash in between leaves the requests pending
        erased = _erased(batch, forget_ids)
        record_erasure.with_options(**batch.retry)(config, repo, paths, gate=gate, metrics=metrics,
                                                   requests=erased, batch_id=batch.summary["batch_id"])
    mark_push_pending(repo, f"batch {batch.summary['batch_id']} settled; its push did not finish")
    _settle(batch, inbox, gate, forget_ids)
    if gate.passed:
        purge_batch_copies(config, repo)
    _publish(batch.summary, gate, metrics)
    crash_point("push")
    _push(repo, batch.summary)


class PushFailedError(VersioningError):
    """The run decided and settled its batch, but ``dvc push`` failed: the remote lacks what the run
    versioned (request files, result notes, certificates). The run ends Failed, not Completed; the
    failure is recorded (``push-pending.json``) and the next run pushes first. ``summary`` is the
    run's summary, as a completed run returns it."""

    def __init__(self, summary: dict, message: str):
        super().__init__(message)
        self.summary = summary

    def __reduce__(self):  # Prefect may pickle a failed flow's exception: keep the summary
        return type(self), (self.summary, str(self))


def _push(repo: Paths, summary: dict) -> None:
    """Push the versioned requests and what proves their erasure; a failure is recorded
    (``push_pending`` in the summary, the marker file), shown by ``blur status`` and ``blur process``,
    retried by the next run, and fails this run once its batch is settled (:class:`PushFailedError`)."""
    error = push_or_record(repo)
    if error is None:
        summary.pop("push_pending", None)
        return
    summary["push_pending"] = error
    get_run_logger().warning("dvc push failed (%s); recorded in %s, retried by the next run "
                             "(or run `dvc push`)", error, repo.push_pending.relative_to(repo.root))


def _fail_if_push_pending(repo: Paths, summary: dict) -> None:
    """Raise :class:`PushFailedError` when this run's last push failed: its batch is settled, the remote lags."""
    if summary.get("push_pending"):
        decided = len(summary["processed"]) + len(summary["rejected"]) + len(summary["failed"])
        raise PushFailedError(summary, (
            f"batch {summary['batch_id'] or '(none)'}: {decided} request(s) decided and settled, but the remote "
            f"lags: {summary['push_pending']}; recorded in {repo.push_pending.relative_to(repo.root)}, the next "
            "run pushes first (or run `dvc push`)"))


def _publish(summary: dict, gate: GateDecision | None, metrics: Metrics | None) -> None:
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
        lines += ["", "## Gate", ""] + gate_lines(gate)
    create_markdown_artifact(markdown="\n".join(lines), key="deletion-batch",
                             description="Deletion requests processed by this run")
    if metrics:
        keys = ["forget_prob", "forget_rouge", "forget_quality", "retain_prob", "model_utility",
                "mia_auc", "privleak", "extraction_strength"]
        rows = [{"model": role, **{k: metrics.value(role, k) for k in keys}} for role in ROLES]
        create_table_artifact(table=rows, key="deletion-metrics", description="Evaluation metrics")


# --------------------------------------------------------------------------- locking


def _ensure_concurrency_limit(name: str) -> None:
    """Create the flow's global concurrency limit (1 slot) on the Prefect server if missing."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
            except ObjectAlreadyExists:  # another run created it first; any other error stops this run
                pass


def _server_slot(config: Config):
    """The pipeline's slot of the Prefect global concurrency limit, held for the whole batch.

    Only with a Prefect server (``PREFECT_API_URL``): there the limit can be shared by
    several machines, and a slot whose holder was killed is reclaimed when its lease
    (``flow.lease_seconds``) expires. Prefect's embedded ephemeral API never reclaims one
    (it runs no lease reaper, and its leases die with the process), so there a killed run
    would block every later run for good; the run lock file alone serialises the runs
    on one machine.
    """
    from prefect.concurrency.sync import concurrency
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        return nullcontext()
    _ensure_concurrency_limit(config.flow.concurrency_limit)
    return concurrency(config.flow.concurrency_limit, occupy=1, timeout_seconds=config.flow.lock_timeout_seconds,
                       lease_duration=config.flow.lease_seconds, strict=True)  # a missing limit is an error


# --------------------------------------------------------------------------- flow


def flow_context(root: str, params: str = PARAMS_FILE, overrides: dict[str, Any] | None = None) -> RunContext:
    """The flow's context: ``<root>/<params>`` with the run's ``overrides``, derived once."""
    repo = Paths(Path(root).resolve())
    config = load_config(repo.root / params)
    return run_context(config.with_overrides(overrides) if overrides else config, repo)


@flow(name="process-deletion-requests")
def process_requests(root: str = ".", params: str = PARAMS_FILE,
                     overrides: dict[str, Any] | None = None) -> dict:
    """Process the pending requests of ``<root>/data/requests/inbox`` as one batch.

    One run at a time per inbox: the run lock file (released by the operating system if the
    process dies), then the Prefect concurrency slot (see :func:`_server_slot`). The inbox lock
    is taken only while files move, so people's add, cancel and retry work during the batch.
    Returns the run's summary; a run whose last ``dvc push`` failed ends Failed once its batch is
    settled (:class:`PushFailedError`, carrying the summary): the remote lags until a push succeeds.
    """
    ctx = flow_context(root, params, overrides)
    repo, config = ctx.paths, ctx.config
    apply_threads(config)
    batch, inbox = Batch(ctx), Inbox(repo)
    with inbox.run_lock(timeout=config.flow.lock_timeout_seconds), _server_slot(config), inbox.batch_run():
        _process(batch, inbox)
    _fail_if_push_pending(repo, batch.summary)
    return batch.summary


def _process(batch: Batch, inbox: Inbox) -> None:
    """The run's work under its locks: a pending push first, then take, check, unlearn or finish."""
    config, repo = batch.config, batch.repo
    if pending_push(repo):
        _push(repo, batch.summary)  # a previous run's failed push first
    valid = _take(batch, inbox)
    if not valid and not batch.summary["rejected"] and not batch.summary.get("skipped"):
        get_run_logger().info("inbox is empty: nothing to process")
        return
    _check_each(batch, inbox, valid)
    if not batch.accepted:
        _publish(batch.summary, None, None)
        if batch.summary["processed"]:  # settled from their certificates: purge their copies, version them
            purge_batch_copies(config, repo)
            _push(repo, batch.summary)
        return
    champion = find_champion.with_options(**batch.retry)(config, repo)
    promoted = _promoted(batch, champion)
    if promoted is not None:  # a previous run's candidate serves: finish it, do not unlearn again
        _finish(batch, inbox, *promoted)
        return
    paths, start = _open_batch(batch, champion)
    with _failures_counted(batch, inbox, paths):
        resolution, metrics, gate = _run_batch(batch, inbox, paths, start)
    _finish(batch, inbox, paths, gate, metrics, resolution.forget_ids_by_request)
