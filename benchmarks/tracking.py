"""Log a benchmark to MLflow: one parent run with the summary and the result files, one child
run per unlearning run with its metrics at each evaluated step count and its per-step
diagnostics (cos(g_r, g_f), xi, ...).

The store is a SQLite file under ``benchmarks/results/mlflow/`` by default (never the
pipeline's ``mlflow.db``); ``MLFLOW_TRACKING_URI`` is deliberately ignored here so a
benchmark never writes into a production registry by accident. Browse it with::

    mlflow ui --backend-store-uri sqlite:///benchmarks/results/mlflow/mlflow.db
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from components.registry.tracking import (
    TrackingStore,
    connect,
    diagnostic_series,
    experiment_id,
    log_metric_values,
    log_params_and_tags,
)


def benchmark_store(directory: Path) -> TrackingStore:
    directory.mkdir(parents=True, exist_ok=True)
    return TrackingStore.sqlite(directory / "mlflow.db", directory / "artifacts")


def log_benchmark(
    store: TrackingStore,
    experiment: str,
    *,
    run_name: str,
    params: Mapping[str, Any],
    metrics: Mapping[str, float],
    children: Sequence[dict],
    artifacts: Sequence[Path],
) -> str:
    """Log the benchmark; returns the parent run id.

    Each child is ``{"name", "params", "metrics_by_step": {step: {key: value}}, "diagnostics"}``.
    """
    from mlflow.entities import RunStatus

    client = connect(store)
    exp = experiment_id(client, store, experiment)
    parent = client.create_run(exp, run_name=run_name)
    parent_id = parent.info.run_id
    log_params_and_tags(client, parent_id, {k: str(v)[:6000] for k, v in params.items()}, {"benchmark": experiment})
    log_metric_values(client, parent_id, [(k, float(v), 0) for k, v in metrics.items() if v is not None])
    for path in artifacts:
        client.log_artifact(parent_id, str(path))
    for child in children:
        run = client.create_run(exp, run_name=child["name"], tags={"mlflow.parentRunId": parent_id})
        log_params_and_tags(client, run.info.run_id, {k: str(v) for k, v in child["params"].items()}, {})
        values = [(key, float(value), int(step)) for step, row in child["metrics_by_step"].items()
                  for key, value in row.items() if value is not None]
        values += diagnostic_series(child.get("diagnostics") or [])
        log_metric_values(client, run.info.run_id, values)
        client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FINISHED))
    client.set_terminated(parent_id, RunStatus.to_string(RunStatus.FINISHED))
    return parent_id
