"""Stage ``evaluate``: forget efficacy and utility of the target, oracle and unlearned models."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from components.artifacts import Metrics, Resources
from components.config import Config
from components.context import RunContext, as_context
from components.data.loaders import load_records
from components.paths import Paths, resolve_local
from components.stages.prepare import load_earlier, load_splits, with_erased_levels

log = logging.getLogger(__name__)


def evaluate(run: RunContext | Config, paths: Paths | None = None, *, show_progress: bool = True) -> Metrics:
    """Evaluate target, oracle and unlearned models; write reports/metrics.json and per-item CSVs.

    Earlier processed requests (data/prepared/earlier/) are evaluated too: still forgotten.
    """
    from components.evaluation import evaluate_models, write_reports
    from components.evaluation.cache import EvalCache
    from components.evaluation.sampling import fixed_sample
    from components.evaluation.evaluator import FromDisk
    from components.evaluation.knowledge import knowledge_wanted, load_knowledge_sets
    from components.modeling.io import load_model_dir, model_options

    ctx = as_context(run, paths).prepared()
    config, paths = ctx.config, ctx.paths
    splits = load_splits(paths)
    options = model_options(config.model)
    loaders = {role: FromDisk(lambda folder=folder: load_model_dir(folder, **options))
               for role, folder in (("target", paths.target), ("oracle", paths.oracle),
                                    ("unlearned", paths.unlearned))}
    local = [resolve_local(path, paths.config_root) for path in config.eval.knowledge_sets]
    knowledge_sets = load_knowledge_sets(local) if knowledge_wanted(config.eval.knowledge, config.model) else {}
    utility_sets = {
        Path(path).stem: load_records(resolve_local(path, paths.config_root)) for path in config.eval.utility_sets
    }
    sample = config.eval.sample
    knowledge_sets = {name: fixed_sample(records, sample.knowledge) for name, records in knowledge_sets.items()}
    utility_sets = {name: fixed_sample(records, sample.utility) for name, records in utility_sets.items()}
    result = evaluate_models(
        loaders, forget=splits["forget"], retain=fixed_sample(splits["retain"], sample.retain),
        holdout=splits["holdout"],
        config=config.eval, max_length=config.model.max_length, earlier_forget=load_earlier(paths),
        utility_sets=utility_sets, knowledge_sets=knowledge_sets, show_progress=show_progress,
        cache=EvalCache(paths.eval_cache if config.eval.cache else None), measure_floor=config.eval.measure_floor,
    )
    with_erased_levels(result.metrics, paths)  # the gate bounds each earlier request by the level it was erased to
    write_reports(result, paths.reports)
    _record_cost(paths, {"cache": result.cache, "floor": result.floor, "sample_sizes": result.sample_sizes})
    log.info("%s", cost_summary(paths))
    return Metrics.parse(result.metrics)


def _record_cost(paths: Paths, cost: dict[str, Any]) -> None:
    """This run's evaluation cost under ``evaluate`` in reports/resources.json (replacing the last run's);
    the stage command adds its wall time and peak memory beside it."""
    Resources.read(paths.resources).with_stage("evaluate", cost).save(paths.resources)


def evaluated_fingerprint(paths: Paths, role: str) -> str | None:
    """The evaluation-cache fingerprint of the model that last played ``role`` here (None: not cached)."""
    return Resources.read(paths.resources).fingerprint(role)


def cost_summary(paths: Paths) -> str:
    """One line on the last evaluation's cache use and its distance from the floor (reports/resources.json)."""
    return Resources.read(paths.resources).evaluate_summary()
