"""``python -m components.stages NAME``: the command line ``dvc.yaml`` runs, one command per stage.

Known errors (bad configuration, a failed validation, a missing model, a stage's file that does
not load) print their message and exit non-zero; a traceback means a bug.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import typer

from components import stages
from components.artifacts import ROLES, FinetuneSummary, GateDecision, Metrics, Resources, TrainedModel, UnlearnSummary
from components.config import ConfigError, load_config
from components.context import RunContext, run_context
from components.paths import PARAMS_FILE, Paths
from components.runtime import apply_threads, offline_by_default

cli = typer.Typer(add_completion=False, pretty_exceptions_enable=False,
                  help="Run one pipeline stage (what dvc.yaml calls).")
PARAMS = typer.Option(Path(PARAMS_FILE), help="Configuration file.")
ROOT = typer.Option(Path("."), help="Pipeline folder.")
CONFIG_ROOT = typer.Option(None, help="Where relative paths in the configuration are found (default: the pipeline "
                                      "folder); the flow's batch folders use the repository.")


def _known_errors() -> tuple[type[BaseException], ...]:
    from components.artifacts import ArtifactError
    from components.data.requests import RequestError
    from components.modeling.io import ModelLoadError
    from components.validation import ValidationFailed

    return ConfigError, RequestError, ModelLoadError, ValidationFailed, FileNotFoundError, ArtifactError


def _record_resources(root: Path, stage: str, seconds: float) -> None:
    """Wall time and peak resident memory of this stage's process (rank 0 only)."""
    import resource

    path = Paths(root).resources
    record = Resources.read(path)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: KiB
    # beside what the stage itself recorded in this run (evaluate: its cache use and floor)
    extra = record.stage(stage) if stage == "evaluate" else {}
    record.with_stage(stage, extra | {"seconds": round(seconds, 1), "peak_rss_mib": round(peak_kib / 1024, 1)}).save(path)


def stage_context(params: Path, root: Path, config_root: Path | None = None) -> RunContext:
    """This process's context: ``params`` read once, the effective configuration derived once."""
    offline_by_default()
    config = load_config(params)
    apply_threads(config)
    return run_context(config, Paths(root, config_root=config_root))


def _unlearn(ctx: RunContext) -> UnlearnSummary:
    """From ``models/start`` where the folder has one (a flow batch folder: the model the batch
    starts from, the current champion), else from ``models/target``."""
    start = ctx.paths.start
    return stages.unlearn(ctx, start=start if start.exists() else None)


# What each stage prints when it is done (one line or a few; None prints nothing).

def _prepared(ctx: RunContext, resolution) -> str:
    summary = resolution.summary()
    return (f"request {', '.join(summary['request_ids'])}: {summary['n_forget']} records to forget "
            f"({summary['n_subjects']} subjects), {summary['n_retain']} to retain")


def _finetuned(ctx: RunContext, summary: FinetuneSummary) -> str | None:
    target = summary.target
    if not isinstance(target, TrainedModel):
        return None
    return (f"target: mean answer probability {target.mean_answer_prob:.3f} after {target.epochs} epochs "
            f"(stopped by {target.stop_reason}; goal finetune.target_prob={ctx.config.finetune.target_prob})")


def _validated(ctx: RunContext, report: dict) -> str:
    return f"validation passed: {len(report['suites'])} suites (reports/data_docs/index.html)"


def _unlearned(ctx: RunContext, summary: UnlearnSummary) -> str:
    return (f"unlearned in {summary.steps} steps: forget loss {summary.first_forget_loss:.3f} -> "
            f"{summary.final_forget_loss:.3f}, retain loss {summary.first_retain_loss:.3f} -> "
            f"{summary.final_retain_loss:.3f}")


def _evaluated(ctx: RunContext, metrics: Metrics) -> str:
    keys = ("forget_prob", "forget_quality", "forget_holdout_auc", "retain_prob", "model_utility")
    from components.stages.evaluate import cost_summary

    return cost_summary(ctx.paths) + "\n" + "\n".join(
        f"{role:10s} " + "  ".join(f"{key}={metrics.value(role, key):.3f}" for key in keys
                                   if metrics.value(role, key) is not None) for role in ROLES)


def _registered(ctx: RunContext, gate: GateDecision) -> str:
    if gate.passed:
        return f"gate passed: {gate.model_name} version {gate.version} is now '{gate.alias}'"
    return "gate FAILED; the serving alias did not move:\n  " + "\n  ".join(gate.reasons)


STAGES: dict[str, tuple[Callable, Callable, str]] = {
    "prepare": (stages.prepare, _prepared, "Resolve the deletion request against the world and write the splits."),
    "validate": (stages.validate, _validated,
                 "Validate the request and the splits with Great Expectations (before any training)."),
    "finetune": (stages.finetune, _finetuned, "Train (or point at) the target and oracle models."),
    "unlearn": (_unlearn, _unlearned, "Unlearn the forget set from models/target (models/start where the folder "
                                      "has one) into models/unlearned."),
    "evaluate": (stages.evaluate, _evaluated, "Evaluate target, oracle and unlearned models into reports/metrics.json."),
    "register": (stages.register, _registered, "Log to MLflow, apply the gate, move the serving alias only if it passes."),
}


def _command(name: str, run: Callable, describe: Callable) -> Callable:
    """The command of one stage: run it, print its summary; a known error prints its message
    (no traceback) and exits 1; time and peak memory go to reports/resources.json."""
    def command(params: Path = PARAMS, root: Path = ROOT, config_root: Optional[Path] = CONFIG_ROOT) -> None:
        started = time.perf_counter()
        try:
            ctx = stage_context(params, root, config_root)
            result = run(ctx)
        except _known_errors() as error:
            typer.echo(f"{name} failed; nothing after it runs:\n{error}", err=True)
            raise typer.Exit(1)
        if int(os.environ.get("RANK", "0")) != 0:
            return
        _record_resources(root, name, time.perf_counter() - started)
        line = describe(ctx, result)
        if line:
            typer.echo(line)
    return command


for _name, (_run, _describe, _help) in STAGES.items():
    cli.command(_name, help=_help)(_command(_name, _run, _describe))


if __name__ == "__main__":
    sys.exit(cli())
