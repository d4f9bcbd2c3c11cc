"""The register step: gate the candidate, record it in MLflow, promote it only if it passed.

:func:`register_candidate` is the whole step. In order:

1. the gate is evaluated (pure, before anything is written); a stale ``gate.json`` is removed;
2. the store is reached (with the caller's :class:`RetryPolicy`), else
   :class:`TrackingUnavailableError` and nothing is written;
3. one MLflow run: params (config, counts, digests), request ids and hashes as tags,
   per-step diagnostics, evaluation metrics, plots, the model (pyfunc LoggedModel);
4. passing: a new version of ``registry.model_name`` with the metrics in its description;
5. the report and ``gate.json`` are attached to the run, its ``gate`` tag set, the run ended;
6. passing: the serving alias is moved to the new version — the last write to the store;
7. ``reports/gate.json`` and ``reports/run_report.md`` are written.

A failing candidate is recorded (run tag ``gate=failed``, the reasons as the
``gate.reasons`` tag and in the report, its LoggedModel tagged ``gate=failed``) but is
**not registered**: the registry holds only versions that passed their gate, so nothing
that reads the registry (``latest`` version, a UI list, a deploy script) can pick up a
model that failed. A reviewer who overrides the gate can still register the logged model
by hand from the run. Any error after step 2 marks the run FAILED and raises
:class:`RegistryError` saying where it stopped (:class:`TrackingUnavailableError`, its
subclass, when the store stopped answering: worth retrying); since the alias moves last, an error never
leaves the alias on an unfinished candidate.

:func:`champion` finds the version the alias points to and downloads its model directory,
so the next unlearning starts from the model that serves.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, NamedTuple, Sequence

from components.jsonfiles import write_json
from components.registry.gate import GateDecision, evaluate_gate
from components.registry.plots import save_plots
from components.registry.report import gate_lines, metric_table, render_report
from components.registry.safe import safe_request_summary
from components.registry.tracking import (
    RegistryError,
    RetryPolicy,
    TrackingStore,
    TrackingUnavailableError,
    first_line,
    check_model_dir,
    connect,
    diagnostic_series,
    download_model_dir,
    evaluation_metrics,
    experiment_id,
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

    from components.config import Config

GATE_FILE = "gate.json"
REPORT_FILE = "run_report.md"
PLOTS_DIR = "plots"
MAX_DESCRIPTION = 5000
MAX_REGISTRY_TAG = 5000


class Champion(NamedTuple):
    """The model that serves: its registry version, the run that made it, its local directory
    (None when it was looked up without downloading)."""

    version: str
    run_id: str | None
    model_dir: Path | None


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


def _ensure_registered_model(client: "MlflowClient", model_name: str, alias: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(model_name)
        return
    except MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
    try:
        client.create_registered_model(
            model_name,
            description=("Language models unlearned by the BLUR deletion-request pipeline. "
                         f"Only candidates that passed the gate are registered; alias '{alias}' "
                         "marks the one that serves."),
        )
    except MlflowException as error:  # registered concurrently
        if error.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise


def version_description(safe: Mapping[str, Any], metrics: Mapping[str, Any], decision: GateDecision) -> str:
    """Markdown for the model version: requests, metrics (target vs unlearned), gate checks."""
    requests = ", ".join(r["request_id"] for r in safe.get("requests") or []) or "(none given)"
    lines = [f"Unlearned for deletion request(s): {requests}. Run `{decision.run_id}`.", ""]
    lines += metric_table(metrics, ("target", "oracle", "unlearned"))
    lines += ["", "Gate:", ""] + gate_lines(decision, outcome=False)
    text = "\n".join(lines)
    return text if len(text) <= MAX_DESCRIPTION else text[: MAX_DESCRIPTION - 1] + "…"


def _numeric_rows(diagnostics: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for row in diagnostics:
        rows.append({k: v for k, v in row.items()
                     if v is None or isinstance(v, (int, float))})
    return "".join(json.dumps(row) + "\n" for row in rows)


def _mark_failed(client: "MlflowClient", run_id: str | None, stage: str) -> None:
    if run_id is None:
        return
    try:
        client.set_tag(run_id, "register.failed_at", stage)
        client.set_terminated(run_id, "FAILED")
    except Exception:
        pass  # the store is what failed; the raised error says so


def register_candidate(
    config: "Config",
    *,
    metrics: Mapping[str, Any],
    diagnostics: Sequence[Mapping[str, Any]],
    summary: Mapping[str, Any] | None,
    dvc_hashes: Mapping[str, str] | None,
    model_dir: str | Path,
    reports_dir: str | Path,
    store: TrackingStore | None = None,
    retry: RetryPolicy | None = None,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> GateDecision:
    """Gate, record and (if it passed) promote one unlearned model; see the module docstring.

    ``metrics`` is ``reports/metrics.json``; ``diagnostics`` the per-step records of the
    unlearning loop; ``summary`` a ``Resolution.summary()`` dict (or ``resolution.json``);
    ``dvc_hashes`` maps request id to the DVC md5 of its file; ``model_dir`` the saved
    unlearned model. ``store`` defaults to :func:`tracking_store` of the current folder.
    ``tags`` are extra run tags (a batch id, a flow run id), written as given: ids and
    hashes only. Returns the completed decision (also written to ``<reports_dir>/gate.json``).
    """
    reports_dir = Path(reports_dir)
    for stale in (reports_dir / GATE_FILE, reports_dir / REPORT_FILE):
        stale.unlink(missing_ok=True)  # a failed step must not leave an earlier verdict behind
    decision = evaluate_gate(metrics, config.gate)
    model_dir = check_model_dir(model_dir)
    safe = safe_request_summary(summary, dvc_hashes)
    store = store or tracking_store()
    name, alias = config.registry.model_name, config.registry.alias

    client = connect(store, retry)
    run_id: str | None = None
    version: str | None = None
    previous: str | None = None
    stage = "reading the registry"
    try:
        previous = champion_version(client, name, alias)
        experiment = experiment_id(client, store, config.registry.experiment)
        stage = "starting the run"
        ids = [r["request_id"] for r in safe["requests"]]
        if run_name is None and ids:
            run_name = ("unlearn " + ", ".join(ids))[:200]
        run = client.create_run(
            experiment, run_name=run_name,
            tags={"gate": "pending", "pipeline": "blur-unlearning"},
        )
        run_id = run.info.run_id
        stage = "logging params and tags"
        per_request = request_params(safe)
        log_params_and_tags(client, run_id, flatten_config(config) | per_request, request_tags(safe) | dict(tags or {}))
        stage = "logging the unlearning diagnostics"
        log_metric_values(client, run_id, diagnostic_series(diagnostics))
        log_text(client, run_id, _numeric_rows(diagnostics), "diagnostics/unlearn_log.jsonl")
        log_text(client, run_id, json.dumps(safe, indent=2), "requests.json")
        stage = "logging the plots"
        plots_dir = reports_dir / PLOTS_DIR
        save_plots(diagnostics, metrics, plots_dir)
        client.log_artifacts(run_id, str(plots_dir), PLOTS_DIR)
        stage = "logging the model"
        gate_word = "passed" if decision.passed else "failed"
        model_id = log_model(client, store, run_id=run_id, experiment_id=experiment, model_dir=model_dir,
                             tags={"gate": gate_word, "requests": ",".join(ids)[:5000]},
                             params=per_request)
        stage = "logging the evaluation metrics"
        values = [(key, value, 0) for key, value in evaluation_metrics(metrics).items()]
        values.append(("gate.passed", float(decision.passed), 0))
        log_metric_values(client, run_id, values, model_id=model_id)

        decision = decision.completed(model_name=name, run_id=run_id, champion_version=previous)
        if decision.passed:
            stage = "registering the model version"
            _ensure_registered_model(client, name, alias)
            # The LoggedModel's own artifact location as the source: a "models:/<id>" source
            # makes the SQL registry look the model up through the process-wide tracking URI.
            source = client.get_logged_model(model_id).artifact_location
            created = client.create_model_version(
                name, source=source, run_id=run_id, model_id=model_id,
                description=version_description(safe, metrics, decision),
                tags={"gate": "passed", "requests": ",".join(ids)[:MAX_REGISTRY_TAG],
                      "forget_digest": safe["digests"].get("forget_digest", "")},
            )
            version = str(created.version)
            decision = decision.completed(version=version, alias=alias, champion_version=version)

        stage = "logging the report"
        report = render_report(safe, metrics, decision, run_id=run_id)
        log_text(client, run_id, report, REPORT_FILE)
        log_text(client, run_id, json.dumps(decision.to_dict(), indent=2), GATE_FILE)
        outcome = {"gate": gate_word}
        if decision.reasons:
            outcome["gate.reasons"] = "; ".join(decision.reasons)
        if decision.skipped:
            outcome["gate.skipped"] = "; ".join(c.reason or c.metric for c in decision.skipped)
        if version is not None:
            outcome["registered_version"] = version
        log_params_and_tags(client, run_id, {}, outcome)
        client.set_terminated(run_id, "FINISHED")

        if decision.passed:
            stage = f"moving alias '{alias}' to version {version}"
            client.set_registered_model_alias(name, alias, version)
    except Exception as error:
        _mark_failed(client, run_id, stage)
        where = f"the alias '{alias}' still points to " + (f"version {previous}" if previous else "no version")
        made = f"; version {version} was registered but not promoted" if version else ""
        kind = TrackingUnavailableError if is_unavailable(error) else RegistryError
        raise kind(
            f"register step failed while {stage} (store {store.display_uri}"
            f"{', run ' + run_id if run_id else ''}): {type(error).__name__}: {first_line(error, 500)}. "
            f"Nothing was promoted: {where}{made}. Run the step again once the cause is fixed."
        ) from error

    write_json(reports_dir / GATE_FILE, decision.to_dict())
    (reports_dir / REPORT_FILE).write_text(report, encoding="utf-8")
    return decision


def champion(
    model_name: str,
    alias: str = "champion",
    *,
    store: TrackingStore | None = None,
    dst: str | Path | None = None,
    retry: RetryPolicy | None = None,
    download: bool = True,
) -> Champion | None:
    """The model ``alias`` points to, downloaded; None when there is no such model or alias.

    The pyfunc package of that version is downloaded into ``dst`` (replaced if present;
    default: a new temporary folder the caller owns); ``model_dir`` is the Hugging Face
    directory inside it, ready for ``AutoModelForCausalLM.from_pretrained``. With
    ``download=False`` only the version and run are looked up (``model_dir`` is None).
    """
    store = store or tracking_store()
    retry = retry or RetryPolicy()
    client = connect(store, retry)
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
        model_dir = retry.call(lambda: download_model_dir(store, location, dst))
    except RegistryError:
        raise
    except Exception as error:
        raise RegistryError(
            f"could not download {uri} ({model_name}@{alias}) from {store.display_uri}: "
            f"{type(error).__name__}: {error}"
        ) from error
    return Champion(version=version, run_id=run_id, model_dir=model_dir)
