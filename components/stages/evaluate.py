"""Stage ``evaluate``: forget efficacy and utility of the target, oracle and unlearned models."""

from __future__ import annotations

from pathlib import Path

from components.config import Config
from components.data.loaders import load_records
from components.paths import Paths, resolve_local
from components.stages.prepare import load_earlier, load_splits, resolved_config


def evaluate(config: Config, paths: Paths, *, show_progress: bool = True) -> dict:
    """Evaluate target, oracle and unlearned models; write reports/metrics.json and per-item CSVs.

    Earlier processed requests (data/prepared/earlier/) are evaluated too: still forgotten.
    """
    from components.evaluation import evaluate_models, write_reports
    from components.evaluation.evaluator import FromDisk
    from components.evaluation.knowledge import knowledge_wanted, load_knowledge_sets
    from components.modeling.io import load_model_dir, model_options

    config = resolved_config(config, paths)
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
    result = evaluate_models(
        loaders, forget=splits["forget"], retain=splits["retain"], holdout=splits["holdout"],
        config=config.eval, max_length=config.model.max_length, earlier_forget=load_earlier(paths),
        utility_sets=utility_sets, knowledge_sets=knowledge_sets, show_progress=show_progress,
    )
    write_reports(result, paths.reports)
    return result.metrics
