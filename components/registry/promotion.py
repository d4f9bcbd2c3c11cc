"""The register step: gate the candidate, record it in MLflow, promote it only if it passed.

:func:`register_candidate` is the whole step, one function per part, in order:

1. **gate** (:func:`gate_decision`): the gate, and the registry's own check that a
   reproduction forgot every processed request (:mod:`.coverage`); pure, before anything
   is written; a stale ``gate.json`` is removed;
2. **run** (:func:`_open_run`): the store is reached (else :class:`TrackingUnavailableError`
   and nothing is written); the batch's run is found, or one is created, tagged with the
   batch id and the version the alias points to now;
3. **record**: params (config, counts, digests), request ids and hashes as tags, per-step
   diagnostics, ``requests.json``; **plots**; **model** (pyfunc LoggedModel); **metrics**;
4. **version**, passing only: a version of ``registry.model_name``;
5. **report**: the report and ``gate.json`` attached to the run, its ``gate`` tag set, the run ended;
6. **alias**, passing only: compare and set. The alias is re-read; if it no longer points
   where it did when the run was opened, another run promoted meanwhile and this one is
   refused (:class:`AliasMovedError`); else it moves to the new version: the last write;
7. ``reports/gate.json`` and ``reports/run_report.md`` are written.

A failing candidate is recorded (run tag ``gate=failed``, the reasons as ``gate.reasons``
and in the report, its LoggedModel tagged ``gate=failed``) but **not registered**: the
registry holds only versions that passed their gate, so nothing that reads it can pick up
a model that failed. A reviewer who overrides the gate can register the logged model by
hand. Any error marks the run FAILED and raises a :class:`RegistryError` naming the part
that failed (:class:`TrackingUnavailableError` when the store stopped answering); since the
alias moves last, an error never leaves the alias on an unfinished candidate.

**Idempotent per batch.** With a ``batch_id`` the run is tagged with it and every finished
part is listed in its ``register.done`` tag. A retry finds that run and finishes what the
earlier attempt left: the same run, at most one model version (found by its run id even if
the crash came right after creating it), the alias moved once. MLflow has no atomic
compare-and-set; the re-read narrows the window to one round trip, and the flow's inbox
lock serialises its own runs.

:func:`champion` finds the version the alias points to and downloads its model directory,
so the next unlearning starts from the model that serves.
"""

from __future__ import annotations

import json
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Collection, Iterator, Mapping, NamedTuple, Sequence

from components.faults import crash_point
from components.paths import RUN_ARTIFACTS, Paths, ReportFiles
from components.artifacts import BATCH_ID, GateDecision, Metrics, Resolution
from components.erasure.safe import safe_request_summary
from components.gate import coverage_check, evaluate_gate
from components.registry.retention import EVAL_FINGERPRINT_TAG
from components.reports.plots import save_plots
from components.reports.run_report import gate_lines, metric_table, render_report
from components.registry.tracking import (
    RegistryError,
    TrackingStore,
    TrackingUnavailableError,
    check_model_dir,
    connect,
    diagnostic_series,
    download_model_dir,
    evaluation_metrics,
    experiment_id,
    first_line,
    flatten_config,
    is_unavailable,
    log_metric_values,
    log_model,
    log_params_and_tags,
    log_text,
    request_params,
    request_tags,
    tracking_store,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

    from components.config import Config

MAX_DESCRIPTION = 5000
MAX_REGISTRY_TAG = 5000
BATCH_TAG = "batch_id"
DONE_TAG = "register.done"            # the parts finished so far, comma-separated
BEFORE_TAG = "register.champion_before"  # the alias's version when the run was opened
MODEL_TAG = "register.model_id"
VERSION_TAG = "registered_version"
NO_VERSION = "none"


class AliasMovedError(RegistryError):
    """The alias moved after this run read it: promoting now would overwrite another run's champion."""


class Champion(NamedTuple):
    """The model that serves: its registry version, the run that made it, its local directory
    (None when it was looked up without downloading)."""

    version: str
    run_id: str | None
    model_dir: Path | None


class Candidate(NamedTuple):
    """What the register step records: the measurements and the model they measured.

    ``metrics`` is evaluate's :class:`~components.artifacts.Metrics`; ``diagnostics`` the per-step records of the
    unlearning loop; ``summary`` the batch's :class:`~components.artifacts.Resolution`;
    ``dvc_hashes`` maps request id to the DVC md5 of its file; ``model_dir`` the saved model; ``stop`` the
    stopping rule's record of the run (``reports/unlearn.json``'s ``stop``: where and why it ended).
    """

    metrics: Metrics
    diagnostics: Sequence[Mapping[str, Any]]
    summary: Resolution | None
    dvc_hashes: Mapping[str, str] | None
    model_dir: str | Path
    eval_fingerprint: str | None = None  # the model's evaluation-cache key: retention purges its entries
    stop: Mapping[str, Any] | None = None


def champion_version(client: "MlflowClient", model_name: str, alias: str) -> str | None:
    """The version ``alias`` points to, or None when the model or the alias does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        registered = client.get_registered_model(model_name)
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    version = (registered.aliases or {}).get(alias)
    return str(version) if version is not None else None


def version_description(safe: Mapping[str, Any], metrics: Metrics, decision: GateDecision) -> str:
    """Markdown for the model version: requests, metrics (target vs unlearned), gate checks."""
    requests = ", ".join(r["request_id"] for r in safe.get("requests") or []) or "(none given)"
    lines = [f"Unlearned for deletion request(s): {requests}. Run `{decision.run_id}`.", ""]
    lines += metric_table(metrics)
    lines += ["", "Gate:", ""] + gate_lines(decision, outcome=False)
    text = "\n".join(lines)
    return text if len(text) <= MAX_DESCRIPTION else text[: MAX_DESCRIPTION - 1] + "…"


def gate_decision(config: "Config", candidate: Candidate, *, reproduction: bool,
                  processed_requests: Mapping[str, Collection[str]] | None) -> GateDecision:
    """The gate's thresholds, plus the registry's coverage check (see :mod:`.coverage`)."""
    decision = evaluate_gate(candidate.metrics, config.gate)
    check = coverage_check(candidate.summary, processed_requests, reproduction=reproduction)
    return decision if check is None else decision.with_check(check)


# --------------------------------------------------------------------------- one registration


@dataclass
class _Registration:
    """What one register step knows and has done so far; filled in part by part."""

    config: "Config"
    candidate: Candidate
    decision: GateDecision
    store: TrackingStore
    client: "MlflowClient"
    batch_id: str | None
    tags: dict[str, str]
    safe: dict[str, Any] = field(default_factory=dict)
    experiment: str | None = None
    run_id: str | None = None
    previous: str | None = None  # the alias's version when the run was opened
    model_id: str | None = None
    version: str | None = None
    done: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.config.registry.model_name

    @property
    def alias(self) -> str:
        return self.config.registry.alias

    @property
    def request_ids(self) -> list[str]:
        return [r["request_id"] for r in self.safe["requests"]]


def _doing(reg: _Registration, part: str) -> str:
    """What ``part`` does, for error messages."""
    if part == "alias":
        return f"moving alias '{reg.alias}' to version {reg.version}"
    return {"run": "opening the run", "record": "logging params, tags and diagnostics",
            "plots": "logging the plots", "model": "logging the model",
            "metrics": "logging the evaluation metrics", "version": "registering the model version",
            "report": "logging the report"}[part]


def _mark_failed(reg: _Registration, part: str) -> None:
    if reg.run_id is None:
        return
    try:
        reg.client.set_tag(reg.run_id, "register.failed_at", part)
        reg.client.set_terminated(reg.run_id, "FAILED")
    except Exception:
        pass  # the store is what failed; the raised error says so


@contextmanager
def _part(reg: _Registration, part: str) -> Iterator[None]:
    """Run one part: on error mark the run FAILED and raise an error that names the part."""
    try:
        yield
    except AliasMovedError:
        _mark_failed(reg, part)
        raise
    except Exception as error:
        _mark_failed(reg, part)
        where = f"the alias '{reg.alias}' still points to " + (
            f"version {reg.previous}" if reg.previous else "no version")
        made = f"; version {reg.version} was registered but not promoted" if reg.version else ""
        kind = TrackingUnavailableError if is_unavailable(error) else RegistryError
        raise kind(
            f"register step failed while {_doing(reg, part)} (store {reg.store.display_uri}"
            f"{', run ' + reg.run_id if reg.run_id else ''}): {type(error).__name__}: {first_line(error, 500)}. "
            f"Nothing was promoted: {where}{made}. Run the step again once the cause is fixed"
            f"{' (it resumes this run)' if reg.batch_id else ''}."
        ) from error


def _batch_run(reg: _Registration) -> "Run | None":
    """The run an earlier attempt opened for this batch (the latest), unless that one already
    recorded a different verdict: a batch retried after its gate failed (new thresholds, say)
    gets a run of its own."""
    runs = reg.client.search_runs([reg.experiment], filter_string=f"tags.{BATCH_TAG} = '{reg.batch_id}'",
                                  order_by=["attributes.start_time DESC"], max_results=1)
    if not runs or runs[0].data.tags.get("gate", "pending") not in ("pending", _gate_word(reg)):
        return None
    return runs[0]


def _resume(reg: _Registration, run: "Run") -> None:
    """Take up an earlier attempt's run: what it finished, the alias it read, its model and version."""
    tags = run.data.tags
    reg.run_id = run.info.run_id
    reg.done = [part for part in tags.get(DONE_TAG, "").split(",") if part]
    before = tags.get(BEFORE_TAG)
    reg.previous = (champion_version(reg.client, reg.name, reg.alias) if before is None
                    else None if before == NO_VERSION else before)
    reg.model_id = tags.get(MODEL_TAG)
    reg.version = tags.get(VERSION_TAG)
    if run.info.status != "FINISHED":
        reg.client.update_run(reg.run_id, status="RUNNING")


def _open_run(reg: _Registration) -> None:
    """Find the batch's run (a retry) or create one, recording the alias's version as read now."""
    reg.experiment = experiment_id(reg.client, reg.store, reg.config.registry.experiment)
    found = _batch_run(reg) if reg.batch_id else None
    if found is not None:
        _resume(reg, found)
        return
    reg.previous = champion_version(reg.client, reg.name, reg.alias)
    tags = {"gate": "pending", "pipeline": "blur-unlearning", BEFORE_TAG: reg.previous or NO_VERSION}
    if reg.batch_id:
        tags[BATCH_TAG] = reg.batch_id
    run_name = ("unlearn " + ", ".join(reg.request_ids))[:200] if reg.request_ids else None
    reg.run_id = reg.client.create_run(reg.experiment, run_name=run_name, tags=tags).info.run_id


def _numeric_rows(diagnostics: Sequence[Mapping[str, Any]]) -> str:
    rows = [{k: v for k, v in row.items() if v is None or isinstance(v, (int, float))} for row in diagnostics]
    return "".join(json.dumps(row) + "\n" for row in rows)


def _log_record(reg: _Registration) -> None:
    """Params, request tags, the per-step diagnostics and the safe request summary."""
    params = flatten_config(reg.config) | request_params(reg.safe) | stop_params(reg.candidate.stop)
    log_params_and_tags(reg.client, reg.run_id, params,
                        request_tags(reg.safe) | stop_tags(reg.candidate.stop) | reg.tags)
    diagnostics = reg.candidate.diagnostics
    log_metric_values(reg.client, reg.run_id, diagnostic_series(diagnostics))
    log_text(reg.client, reg.run_id, _numeric_rows(diagnostics), RUN_ARTIFACTS.diagnostics)
    log_text(reg.client, reg.run_id, json.dumps(reg.safe, indent=2), RUN_ARTIFACTS.requests)


def stop_params(stop: Mapping[str, Any] | None) -> dict[str, str]:
    """Where unlearning stopped: the step whose weights were registered and the last step trained."""
    if not stop:
        return {}
    return {f"unlearn.{key}": str(stop.get(key)) for key in ("stopped_at", "ended_at") if key in stop}


def stop_tags(stop: Mapping[str, Any] | None) -> dict[str, str]:
    """Why: the kind of stop (``landed``, ``overshot``, ``cap`` ...) and the rule's reason (numbers only)."""
    if not stop or not stop.get("reason"):
        return {}
    reason = str(stop["reason"])
    return {"unlearn.stop": reason.split(":")[0], "unlearn.stop_reason": reason[:MAX_REGISTRY_TAG]}


def _log_plots(reg: _Registration, reports_dir: Path) -> None:
    plots_dir = ReportFiles(reports_dir).plots
    save_plots(reg.candidate.diagnostics, reg.candidate.metrics, plots_dir)
    reg.client.log_artifacts(reg.run_id, str(plots_dir), RUN_ARTIFACTS.plots)


def _gate_word(reg: _Registration) -> str:
    return "passed" if reg.decision.passed else "failed"


def _log_model(reg: _Registration) -> None:
    reg.model_id = log_model(
        reg.client, reg.store, run_id=reg.run_id, experiment_id=reg.experiment, model_dir=reg.candidate.model_dir,
        tags={"gate": _gate_word(reg), "requests": ",".join(reg.request_ids)[:MAX_REGISTRY_TAG],
              **({EVAL_FINGERPRINT_TAG: reg.candidate.eval_fingerprint} if reg.candidate.eval_fingerprint else {})},
        params=request_params(reg.safe))
    reg.client.set_tag(reg.run_id, MODEL_TAG, reg.model_id)


def _log_metrics(reg: _Registration) -> None:
    values = [(key, value, 0) for key, value in evaluation_metrics(reg.candidate.metrics).items()]
    values.append(("gate.passed", float(reg.decision.passed), 0))
    values += [(f"gate.{name}_passed", float(verdict), 0) for name, verdict in
               (("oracle_free", reg.decision.verdict("oracle-free")), ("oracle", reg.decision.verdict("oracle")))
               if verdict is not None]
    log_metric_values(reg.client, reg.run_id, values, model_id=reg.model_id)


def _ensure_registered_model(reg: _Registration) -> None:
    from mlflow.exceptions import MlflowException

    try:
        reg.client.get_registered_model(reg.name)
        return
    except MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
    try:
        reg.client.create_registered_model(
            reg.name,
            description=("Language models unlearned by the BLUR deletion-request pipeline. "
                         f"Only candidates that passed the gate are registered; alias '{reg.alias}' "
                         "marks the one that serves."),
        )
    except MlflowException as error:  # registered concurrently
        if error.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise


def _register_version(reg: _Registration) -> None:
    """A new version of the registered model, or the one an earlier attempt of this run created."""
    _ensure_registered_model(reg)
    earlier = [v for v in reg.client.search_model_versions(f"run_id = '{reg.run_id}'") if v.name == reg.name]
    if earlier:
        reg.version = str(min(int(v.version) for v in earlier))
    else:
        # The LoggedModel's own artifact location as the source: a "models:/<id>" source
        # makes the SQL registry look the model up through the process-wide tracking URI.
        source = reg.client.get_logged_model(reg.model_id).artifact_location
        decision = reg.decision.completed(model_name=reg.name, run_id=reg.run_id, champion_version=reg.previous)
        created = reg.client.create_model_version(
            reg.name, source=source, run_id=reg.run_id, model_id=reg.model_id,
            description=version_description(reg.safe, reg.candidate.metrics, decision),
            tags={"gate": "passed", "requests": ",".join(reg.request_ids)[:MAX_REGISTRY_TAG],
                  "forget_digest": reg.safe["digests"].get("forget_digest", "")},
        )
        reg.version = str(created.version)
    reg.client.set_tag(reg.run_id, VERSION_TAG, reg.version)
    crash_point("register")  # a version exists, the alias has not moved


def _completed(reg: _Registration) -> GateDecision:
    """The decision with what happened in the registry: run, version, alias, champion after."""
    decision = reg.decision.completed(model_name=reg.name, run_id=reg.run_id, champion_version=reg.previous)
    if reg.version is not None:
        decision = decision.completed(version=reg.version, alias=reg.alias, champion_version=reg.version)
    return decision


def _log_report(reg: _Registration, report: str) -> None:
    """The report and gate.json as artifacts, the outcome as tags; the run ends FINISHED."""
    decision = _completed(reg)
    log_text(reg.client, reg.run_id, report, RUN_ARTIFACTS.report)
    log_text(reg.client, reg.run_id, json.dumps(decision.to_dict(), indent=2), RUN_ARTIFACTS.gate)
    outcome = {"gate": _gate_word(reg)}
    if decision.reasons:
        outcome["gate.reasons"] = "; ".join(decision.reasons)
    if decision.skipped:
        outcome["gate.skipped"] = "; ".join(c.reason or c.metric for c in decision.skipped)
    log_params_and_tags(reg.client, reg.run_id, {}, outcome)
    reg.client.set_terminated(reg.run_id, "FINISHED")


def _move_alias(reg: _Registration) -> None:
    """Compare and set: move the alias only if it still points where it did when the run opened."""
    current = champion_version(reg.client, reg.name, reg.alias)
    if current not in (reg.version, reg.previous):
        raise AliasMovedError(
            f"alias '{reg.alias}' of '{reg.name}' moved from {_named(reg.previous)} to {_named(current)} after run "
            f"{reg.run_id} read it (another run promoted meanwhile). Refused: version {reg.version} is registered "
            f"but not promoted, and '{reg.alias}' stays on {_named(current)}. This candidate did not start from "
            "that model: process the requests again (the flow starts from the current champion)."
        )
    if current != reg.version:  # else an earlier attempt of this run moved it
        reg.client.set_registered_model_alias(reg.name, reg.alias, reg.version)
    reg.client.set_terminated(reg.run_id, "FINISHED")  # again, if an earlier attempt failed here


def _named(version: str | None) -> str:
    return f"version {version}" if version else "no version"


def _report(reg: _Registration) -> str:
    return render_report(reg.safe, reg.candidate.metrics, _completed(reg), run_id=reg.run_id)


def _parts(reg: _Registration, reports_dir: Path) -> list[tuple[str, Callable[[], None]]]:
    """The parts after opening the run, in order; the version and the alias only for a pass."""
    parts = [("record", lambda: _log_record(reg)), ("plots", lambda: _log_plots(reg, reports_dir)),
             ("model", lambda: _log_model(reg)), ("metrics", lambda: _log_metrics(reg))]
    if reg.decision.passed:
        parts.append(("version", lambda: _register_version(reg)))
    parts.append(("report", lambda: _log_report(reg, _report(reg))))
    if reg.decision.passed:
        parts.append(("alias", lambda: _move_alias(reg)))
    return parts


def _batch_id(batch_id: str | None, tags: Mapping[str, str]) -> str | None:
    """``batch_id``, or the ``batch_id`` tag; checked, since it goes into a search filter."""
    batch_id = batch_id or tags.get(BATCH_TAG)
    if tags.get(BATCH_TAG, batch_id) != batch_id:
        raise ValueError(f"batch_id '{batch_id}' and the batch_id tag '{tags[BATCH_TAG]}' differ")
    if batch_id is not None and not BATCH_ID.fullmatch(batch_id):
        raise ValueError(f"batch_id {batch_id!r} must be letters, digits and . _ - (at most 128)")
    return batch_id


def register_candidate(
    config: "Config",
    candidate: Candidate,
    reports_dir: str | Path,
    *,
    store: TrackingStore | None = None,
    batch_id: str | None = None,
    processed_requests: Mapping[str, Collection[str]] | None = None,
    tags: Mapping[str, str] | None = None,
    record_id_key: bytes | None = None,
) -> GateDecision:
    """Gate, record and (if it passed) promote one unlearned model; see the module docstring.

    ``batch_id``: the flow's batch (also read from ``tags["batch_id"]``); None makes this a
    reproduction, which may serve only if it forgot every request in ``processed_requests``
    (request id -> the record ids it erased: ``Inbox.earlier()``; None fails closed). ``store``
    defaults to :func:`tracking_store` of the current folder; ``tags`` are extra run tags (ids
    and hashes only); ``record_id_key``: the deployment's secret the logged record ids are keyed by
    (:func:`~components.erasure.safe.record_id_key`). Returns the completed decision (also in
    ``<reports_dir>/gate.json``).
    """
    reports_dir = Path(reports_dir)
    files = ReportFiles(reports_dir)
    for stale in (files.gate, files.run_report):
        stale.unlink(missing_ok=True)  # a failed step must not leave an earlier verdict behind
    candidate = candidate._replace(metrics=Metrics.parse(candidate.metrics))
    tags = dict(tags or {})
    batch_id = _batch_id(batch_id, tags)
    decision = gate_decision(config, candidate, reproduction=batch_id is None, processed_requests=processed_requests)
    candidate = candidate._replace(model_dir=check_model_dir(candidate.model_dir))
    store = store or tracking_store()
    reg = _Registration(config, candidate, decision, store, connect(store), batch_id, tags,
                        safe=safe_request_summary(candidate.summary, candidate.dvc_hashes,
                                                  record_id_key=record_id_key))
    with _part(reg, "run"):
        _open_run(reg)
    for part, action in _parts(reg, reports_dir):
        if part in reg.done:
            continue
        with _part(reg, part):
            action()
            reg.done.append(part)
            reg.client.set_tag(reg.run_id, DONE_TAG, ",".join(reg.done))
    decision = _completed(reg)
    decision.save(files.gate)
    files.run_report.write_text(_report(reg), encoding="utf-8")
    return decision


def champion(
    model_name: str,
    alias: str = "champion",
    *,
    store: TrackingStore | None = None,
    dst: str | Path | None = None,
    download: bool = True,
) -> Champion | None:
    """The model ``alias`` points to, downloaded; None when there is no such model or alias.

    The pyfunc package of that version is downloaded into ``dst`` (replaced if present;
    default: a new temporary folder the caller owns); ``model_dir`` is the Hugging Face
    directory inside it, ready for ``AutoModelForCausalLM.from_pretrained``. With
    ``download=False`` only the version and run are looked up (``model_dir`` is None). A local
    SQLite store not created yet holds no champion (and looking creates none).
    """
    store = store or tracking_store()
    if not store.exists():
        return None
    client = connect(store)
    version = champion_version(client, model_name, alias)
    if version is None:
        return None
    run_id = client.get_model_version(model_name, version).run_id
    if not download:
        return Champion(version=version, run_id=run_id, model_dir=None)
    dst = Path(dst) if dst is not None else Path(tempfile.mkdtemp(prefix="champion-"))
    uri = f"models:/{model_name}/{version}"  # the version, not the alias: it may move meanwhile
    try:
        location = client.get_model_version_download_uri(model_name, version)
        model_dir = download_model_dir(store, location, dst)
    except RegistryError:
        raise
    except Exception as error:
        raise RegistryError(
            f"could not download {uri} ({model_name}@{alias}) from {store.display_uri}: "
            f"{type(error).__name__}: {error}"
        ) from error
    return Champion(version=version, run_id=run_id, model_dir=model_dir)


def promoted_batch(config: "Config", repo: Paths, champion: Mapping[str, Any] | None,
                   request_ids: Sequence[str]) -> str | None:
    """The batch id of a previous run whose candidate already serves (the alias moved) and that
    erased some of ``request_ids``, when that run died before settling them; else None.

    ``champion`` is ``{"version", "run_id", ...}`` of the alias's version. Read from its run
    (``batch_id`` tag) and version (``requests`` tag); the batch folder must still hold its gate,
    metrics and resolution (purged only after settling).
    """
    if champion is None:
        return None
    client = connect(tracking_store(repo.root))
    batch_id = client.get_run(champion["run_id"]).data.tags.get(BATCH_TAG)
    version = client.get_model_version(config.registry.model_name, str(champion["version"]))
    erased = set((version.tags.get("requests") or "").split(","))
    if not batch_id or not erased & set(request_ids):
        return None
    folder = repo.batch(config.flow.runs_dir, batch_id)
    return batch_id if all(path.exists() for path in (folder.gate, folder.metrics, folder.resolution)) else None
