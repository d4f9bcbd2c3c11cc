"""``python -m components.stages NAME``: the command line ``dvc.yaml`` runs, one command per stage.

Known errors (bad configuration, a failed validation, a missing model) print their message
and exit non-zero; a traceback means a bug.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import typer

from components import stages
from components.config import Config, ConfigError, load_config
from components.jsonfiles import write_json
from components.paths import Paths
from components.runtime import apply_threads, offline_by_default

cli = typer.Typer(add_completion=False, pretty_exceptions_enable=False,
                  help="Run one pipeline stage (what dvc.yaml calls).")
PARAMS = typer.Option(Path("params.yaml"), help="Configuration file.")
ROOT = typer.Option(Path("."), help="Pipeline folder.")


def _known_errors() -> tuple[type[BaseException], ...]:
    from components.data.requests import RequestError
    from components.modeling.io import ModelLoadError
    from components.validation import ValidationFailed

    return ConfigError, RequestError, ModelLoadError, ValidationFailed, FileNotFoundError


def _stage(function: Callable) -> Callable:
    """Print a known error's message (no traceback) and exit 1; record the stage's time and
    peak memory in reports/resources.json."""
    name = function.__name__.removesuffix("_command")

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            result = function(*args, **kwargs)
        except _known_errors() as error:
            typer.echo(f"{name} failed; nothing after it runs:\n{error}", err=True)
            raise typer.Exit(1)
        _record_resources(Path(kwargs.get("root", ".")), name, time.perf_counter() - started)
        return result
    return wrapper


def _record_resources(root: Path, stage: str, seconds: float) -> None:
    """Wall time and peak resident memory of this stage's process (rank 0 only)."""
    import resource

    if int(os.environ.get("RANK", "0")) != 0:
        return
    path = Paths(root).reports / "resources.json"
    record = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: KiB
    record[stage] = {"seconds": round(seconds, 1), "peak_rss_mib": round(peak_kib / 1024, 1)}
    write_json(path, record)


def _setup(params: Path, root: Path) -> tuple[Config, Paths]:
    offline_by_default()
    config = load_config(params)
    apply_threads(config)
    return config, Paths(root)


@cli.command("prepare")
@_stage
def prepare_command(params: Path = PARAMS, root: Path = ROOT) -> None:
    """Resolve the deletion request against the world and write the splits."""
    config, paths = _setup(params, root)
    summary = stages.prepare(config, paths).summary()
    typer.echo(
        f"request {', '.join(summary['request_ids'])}: {summary['n_forget']} records to forget "
        f"({summary['n_subjects']} subjects), {summary['n_retain']} to retain"
    )


@cli.command("finetune")
@_stage
def finetune_command(params: Path = PARAMS, root: Path = ROOT) -> None:
    """Train (or point at) the target and oracle models."""
    config, paths = _setup(params, root)
    target = stages.finetune(config, paths)["target"]
    if "mean_answer_prob" in target:
        typer.echo(
            f"target: mean answer probability {target['mean_answer_prob']:.3f} after "
            f"{target['epochs']} epochs (stopped by {target['stop_reason']}; "
            f"goal finetune.target_prob={config.finetune.target_prob})"
        )


@cli.command("validate")
@_stage
def validate_command(params: Path = PARAMS, root: Path = ROOT) -> None:
    """Validate the request and the splits with Great Expectations (before any training)."""
    config, paths = _setup(params, root)
    report = stages.validate(config, paths)
    typer.echo(f"validation passed: {len(report['suites'])} suites ({paths.reports / 'data_docs' / 'index.html'})")


@cli.command("unlearn")
@_stage
def unlearn_command(
    params: Path = PARAMS, root: Path = ROOT,
    config_root: Optional[Path] = typer.Option(
        None, help="Where relative paths in the configuration are found (default: --root); "
                   "the flow passes the repository for its batch folders."),
    start: Optional[Path] = typer.Option(None, "--start-model", help="Starting model (default: <root>/models/target)."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Unlearn the forget set from models/target (or --start-model) into models/unlearned."""
    config, paths = _setup(params, root)
    paths = Paths(paths.root, config_root=config_root)
    summary = stages.unlearn(config, paths, start=start, show_progress=progress)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    typer.echo(f"unlearned in {summary['steps']} steps: forget loss {summary['first_forget_loss']:.3f} -> "
               f"{summary['final_forget_loss']:.3f}, retain loss {summary['first_retain_loss']:.3f} -> "
               f"{summary['final_retain_loss']:.3f}")


@cli.command("evaluate")
@_stage
def evaluate_command(params: Path = PARAMS, root: Path = ROOT) -> None:
    """Evaluate target, oracle and unlearned models into reports/metrics.json."""
    config, paths = _setup(params, root)
    metrics = stages.evaluate(config, paths)
    for role in ("target", "oracle", "unlearned"):
        values = metrics.get(role) or {}
        typer.echo(f"{role:10s} " + "  ".join(
            f"{key}={values[key]:.3f}" for key in ("forget_prob", "forget_quality", "retain_prob", "model_utility")
            if values.get(key) is not None))


@cli.command("register")
@_stage
def register_command(params: Path = PARAMS, root: Path = ROOT) -> None:
    """Log to MLflow, apply the gate, and move the serving alias only if it passes."""
    config, paths = _setup(params, root)
    gate = stages.register(config, paths)
    if gate["passed"]:
        typer.echo(f"gate passed: {gate['model_name']} version {gate['version']} is now '{gate['alias']}'")
    else:
        typer.echo("gate FAILED; the serving alias did not move:\n  " + "\n  ".join(gate.get("reasons", [])))


if __name__ == "__main__":
    sys.exit(cli())
