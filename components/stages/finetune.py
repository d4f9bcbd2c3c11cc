"""Stage ``finetune``: the target and oracle models (trained for the demo, referenced for a user's)."""

from __future__ import annotations

import time

from components.config import Config
from components.jsonfiles import write_json
from components.modeling.demo import train_model, train_target
from components.modeling.resolve import link_user_models, model_plan
from components.paths import Paths
from components.stages.prepare import load_splits, resolved_config


def finetune(config: Config, paths: Paths, *, show_progress: bool = True) -> dict:
    """Produce models/target and models/oracle, and reports/finetune.json.

    With ``model.base`` set, the target is that model and nothing is trained; the oracle
    is ``model.oracle`` or absent.
    """
    started = time.perf_counter()
    config = resolved_config(config, paths)
    plan = model_plan(config, paths.config_root)
    if not plan.is_demo:
        link_user_models(plan, paths)
        summary = {"target": {"source": plan.target}, "oracle": {"source": plan.oracle}}
    else:
        from components.modeling.resolve import load_tokenizer

        splits = load_splits(paths)
        target, tokenizer = train_target(config, splits["world"], splits["holdout"], paths.target,
                                         tokenizer=load_tokenizer(paths.tokenizer, config.model),
                                         show_progress=show_progress)
        oracle = train_model(config, splits["retain"], tokenizer, paths.oracle, epochs=target["epochs"],
                             label="oracle", show_progress=show_progress)
        summary = {"target": target, "oracle": oracle}
    summary["seconds"] = round(time.perf_counter() - started, 1)
    write_json(paths.reports / "finetune.json", summary)
    return summary


def train_oracle(config: Config, paths: Paths, tokenizer, *, epochs: int, show_progress: bool = True) -> dict:
    """Retrain the demo reference model on the current retain set (the target's recipe)."""
    config = resolved_config(config, paths)
    return train_model(config, load_splits(paths)["retain"], tokenizer, paths.oracle, epochs=epochs,
                       label="oracle", show_progress=show_progress)
