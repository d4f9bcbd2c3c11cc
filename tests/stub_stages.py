"""Test doubles of the flow's training steps, for tests about orchestration only.

Retries, batch bookkeeping, inbox handling, concurrency and failure counting do not depend on
the forgetting numbers, only on each step leaving valid outputs behind. :func:`stubbed_stages`
swaps, in this process (and in processes forked from it), the batch oracle's training, the
unlearn stage and the evaluate stage of ``flows.pipeline`` for doubles that do no training:

- the oracle is a reference to the batch's target (a valid model, seen everything);
- unlearn copies the starting model to ``models/unlearned`` and writes its reports;
- evaluate writes ``metrics.json`` that pass the tiny flow world's gate (earlier requests
  included) and the per-item retain CSV of the batch's prepared retain set.

Tests of the forgetting itself use the real stages (tests/test_flow.py, tests/test_dvc_pipeline.py,
the reliability runs).
"""

from __future__ import annotations

import csv
import json
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from components.artifacts import Metrics
from components.config import Config
from components.context import RunContext, as_context
from components.jsonfiles import write_json
from components.modeling.io import resolve_model_source, write_model_ref
from components.paths import Paths
from components.stages.prepare import load_earlier, load_splits, with_erased_levels
from registry_fixtures import sample_diagnostics, sample_metrics

STUB = "stub (tests/stub_stages.py)"


def stub_oracle(config: Config, paths: Paths, tokenizer, *, epochs: int, show_progress: bool = True) -> dict:
    """The batch's oracle stands for its target (no retraining)."""
    write_model_ref(paths.oracle, resolve_model_source(paths.target))
    return {"epochs": epochs, "n_records": len(load_splits(paths)["retain"]), "trained_by": STUB}


def stub_unlearn(run: RunContext | Config, paths: Paths | None = None, *, start: Path | None = None,
                 show_progress: bool = False) -> dict:
    """``models/unlearned`` as a copy of the starting model; reports/unlearn.json and the step log."""
    ctx = as_context(run, paths)
    config, paths = ctx.config, ctx.paths
    source = resolve_model_source(start or paths.target)
    shutil.rmtree(paths.unlearned, ignore_errors=True)
    shutil.copytree(source, paths.unlearned)
    paths.reports.mkdir(parents=True, exist_ok=True)
    diagnostics = sample_diagnostics(config.unlearn.steps)
    paths.unlearn_log.write_text("".join(json.dumps(row) + "\n" for row in diagnostics))
    summary = {"steps": config.unlearn.steps, "start_model": str(source), "unlearned_by": STUB}
    write_json(paths.report_files.unlearn_summary, summary)
    return summary


def stub_evaluate(run: RunContext | Config, paths: Paths | None = None, *, show_progress: bool = True) -> Metrics:
    """Metrics that pass the tiny flow world's gate, earlier requests still forgotten; the retain set per item."""
    paths = as_context(run, paths).paths
    metrics = sample_metrics()
    earlier = sorted(load_earlier(paths))
    metrics["target"]["earlier"] = {request_id: {"forget_prob": 0.8, "forget_rouge": 0.8} for request_id in earlier}
    metrics["unlearned"]["earlier"] = {request_id: {"forget_prob": 0.1, "forget_rouge": 0.1} for request_id in earlier}
    metrics = Metrics.parse(with_erased_levels(metrics, paths))
    metrics.save(paths.metrics)
    per_item = paths.reports / "per_item"
    per_item.mkdir(parents=True, exist_ok=True)
    with (per_item / "unlearned_retain.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["record_id", "kind"])
        writer.writerows([record.record_id, "retain"] for record in load_splits(paths)["retain"])
    return metrics


@contextmanager
def stubbed_stages(*, oracle: bool = True, unlearn: bool = True, evaluate: bool = True) -> Iterator[None]:
    """The flow's oracle, unlearn and evaluate steps (those named True) replaced by the doubles above."""
    import flows.batch
    import flows.pipeline
    from prefect import task
    from prefect.cache_policies import NO_CACHE

    with pytest.MonkeyPatch.context() as patch:
        if oracle:
            patch.setattr(flows.batch, "train_oracle", stub_oracle)
        if unlearn:
            patch.setattr(flows.pipeline, "unlearn_batch", task(stub_unlearn, name="unlearn", cache_policy=NO_CACHE))
        if evaluate:
            patch.setattr(flows.pipeline, "evaluate_batch", task(stub_evaluate, name="evaluate", cache_policy=NO_CACHE))
        yield
