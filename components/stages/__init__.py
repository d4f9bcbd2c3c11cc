"""One module per pipeline stage: a run's context (:mod:`components.context`) in, files and their artifact out.

``dvc.yaml`` runs them through ``python -m components.stages NAME`` (see ``__main__``); the
Prefect flow calls the same functions. Nothing here imports Prefect.

    prepare ──► validate ──► finetune ──► unlearn ──► evaluate ──► register

Every data check that can fail runs before any training (validate before finetune).
"""

from components.stages.evaluate import cost_summary as evaluate_cost_summary
from components.stages.evaluate import evaluate
from components.stages.finetune import finetune, train_oracle
from components.stages.prepare import load_earlier, load_prepared_requests, load_splits, prepare
from components.stages.register import register
from components.stages.unlearn import unlearn
from components.stages.validate import validate

__all__ = [
    "evaluate", "evaluate_cost_summary", "finetune", "load_earlier", "load_prepared_requests", "load_splits", "prepare",
    "register", "train_oracle", "unlearn", "validate",
]
