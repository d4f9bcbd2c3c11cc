"""Stage ``unlearn``: BLUR (or a baseline) from the starting model into models/unlearned."""

from __future__ import annotations

import csv
import shutil
import time
from pathlib import Path

from components.artifacts import UnlearnSummary
from components.config import Config
from components.context import RunContext, as_context
from components.paths import Paths
from components.stages.prepare import load_splits

STEP_COLUMNS = ["step", "forget_loss", "retain_loss", "inner", "forget_norm_sq", "retain_norm_sq",
                "cos", "xi", "grad_norm", "lr"]


def unlearn(run: RunContext | Config, paths: Paths | None = None, *, start: Path | None = None,
            show_progress: bool = True) -> UnlearnSummary:
    """Unlearn the forget set from ``start`` (default models/target) into models/unlearned; its summary
    (also ``reports/unlearn.json``).

    Checkpoints go to checkpoints/unlearn/ and are resumed after a crash; on NaN/inf the
    run stops with :class:`UnlearningDivergedError` and no model is written.
    """
    from components.modeling.io import load_model_dir, model_options, save_model
    from components.unlearning import RunOutputs, run_unlearning
    from components.unlearning.distributed import init_distributed

    started = time.perf_counter()
    ctx = as_context(run, paths).prepared()
    config, paths = ctx.config, ctx.paths
    rank, device = init_distributed()
    splits = load_splits(paths)
    loaded = load_model_dir(start or paths.target, **model_options(config.model) | {"device": device})
    if loaded is None:
        raise FileNotFoundError(f"no starting model at {start or paths.target}")
    if rank == 0 and paths.unlearned.exists():
        shutil.rmtree(paths.unlearned)
    log_path = paths.unlearn_log
    log_path.parent.mkdir(parents=True, exist_ok=True)
    result = run_unlearning(
        loaded.model, loaded.tokenizer, splits["forget"], splits["retain"], config.unlearn,
        max_length=config.model.max_length, seed=config.seed,
        outputs=RunOutputs(checkpoint_dir=paths.checkpoints, log_path=log_path,
                           show_progress=show_progress and rank == 0),
        holdout=splits["holdout"],
    )
    if rank != 0:
        return UnlearnSummary.model_validate(result.summary())
    save_model(result.model, loaded.tokenizer, paths.unlearned)
    write_steps_csv(result.diagnostics, paths.report_files.unlearn_steps)
    shutil.rmtree(paths.checkpoints, ignore_errors=True)
    method = {k: getattr(config.unlearn, k) for k in ("combiner", "lower", "forget_loss", "retain_loss",
                                                       "gamma", "alpha", "lr")}
    summary = result.summary() | {"method": method, "start_model": str(loaded.source),
                                  "seconds": round(time.perf_counter() - started, 1)}
    written = UnlearnSummary.model_validate(summary)
    written.save(paths.report_files.unlearn_summary)
    return written


def write_steps_csv(diagnostics: list[dict], path: Path) -> Path:
    """Per-step diagnostics as the CSV ``dvc plots`` draws."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=STEP_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(diagnostics)
    return path
