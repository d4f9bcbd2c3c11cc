"""The flow's unlearning step: in the flow's own process, or under ``torchrun`` when
``unlearn.nproc`` > 1 (one process per device, DDP or FSDP as ``unlearn.distributed`` says).

The launched processes run the same stage (``python -m components.stages unlearn``) on the
batch folder, from the effective configuration (``params.yaml`` with the flow's overrides)
written beside it. Their output (the stage prints step counts and losses, never records)
goes to the Prefect log; a failure raises with the tail of their standard error.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from collections import deque
from pathlib import Path
from typing import Callable

import yaml

from components import stages
from components.artifacts import ArtifactError, UnlearnSummary
from components.config import Config
from components.context import RunContext
from components.paths import Paths

STDERR_TAIL_LINES = 40


class LaunchError(RuntimeError):
    """The processes launched by ``torchrun`` did not finish the unlearning stage."""


def unlearn(ctx: RunContext, *, start: Path | None = None, show_progress: bool = False) -> UnlearnSummary:
    """The unlearning stage's summary; in this process when ``unlearn.nproc`` is 1, else under torchrun
    (whose processes derive their own context from the configuration as given)."""
    if ctx.config.unlearn.nproc == 1:
        return stages.unlearn(ctx, start=start, show_progress=show_progress)
    return unlearn_with_torchrun(ctx.given, ctx.paths, start=start, log=_log_line)


def write_effective_params(config: Config, paths: Paths) -> Path:
    """The configuration the flow runs with (overrides included), as a params file in the batch folder."""
    path = paths.effective_params
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), encoding="utf-8")
    return path


def torchrun_command(params: Path, paths: Paths, *, nproc: int) -> list[str]:
    """``python -m torch.distributed.run ... -m components.stages unlearn`` for one machine.

    No option after the stage may abbreviate one of torchrun's: its parser reads them all."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
            "--nproc_per_node", str(nproc), "-m", "components.stages", "unlearn",
            "--params", str(Path(params).resolve()), "--root", str(paths.root.resolve()),
            "--config-root", str(paths.config_root.resolve())]


def unlearn_with_torchrun(config: Config, paths: Paths, *, start: Path | None = None,
                          log: Callable[[str], None] = print) -> UnlearnSummary:
    """Run the stage under torchrun with ``unlearn.nproc`` processes; its summary (reports/unlearn.json).

    Each line the processes print goes to ``log``; on failure :class:`LaunchError` carries
    the exit status and the last lines of their standard error.
    """
    _check_devices(config.unlearn.nproc)
    _point_start(paths, start)
    command = torchrun_command(write_effective_params(config, paths), paths, nproc=config.unlearn.nproc)
    summary_path = paths.report_files.unlearn_summary
    summary_path.unlink(missing_ok=True)  # only this run's summary counts
    log(f"launching {config.unlearn.nproc} processes ({config.unlearn.distributed}) with torchrun")
    returncode, tail = _stream(command, cwd=paths.config_root, env=_child_environment(), log=log)
    if returncode != 0:
        raise LaunchError(
            f"unlearning under torchrun ({config.unlearn.nproc} processes) exited with status {returncode}; "
            f"last lines of its error output:\n" + "\n".join(_children_errors(tail))
            + f"\nTo reproduce: {' '.join(command)}")
    if not summary_path.exists():
        raise LaunchError(f"torchrun finished but wrote no summary at {summary_path}; see the log above")
    try:
        return UnlearnSummary.load(summary_path)
    except ArtifactError as error:
        raise LaunchError(f"torchrun finished but its summary is not one: {error}") from None


def _point_start(paths: Paths, start: Path | None) -> None:
    """The stage command starts from ``paths.start`` where there is one: make it ``start``."""
    from components.modeling.io import write_model_ref

    if start is not None and Path(start).resolve() != paths.start.resolve():
        write_model_ref(paths.start, str(Path(start).resolve()))


def _stream(command: list[str], *, cwd: Path, env: dict[str, str],
            log: Callable[[str], None]) -> tuple[int, list[str]]:
    """Run ``command``; each line of its standard output to ``log``; exit status and stderr tail."""
    tail: deque[str] = deque(maxlen=5 * STDERR_TAIL_LINES)
    with subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, errors="replace", bufsize=1) as process:
        reader = threading.Thread(target=lambda: tail.extend(line.rstrip() for line in process.stderr),
                                  daemon=True)
        reader.start()
        try:
            for line in process.stdout:
                if line.strip():
                    log(line.rstrip())
            returncode = process.wait()
        except BaseException:  # the flow run is cancelled or fails here: torchrun stops its processes
            _terminate(process)
            reader.join(timeout=5)
            raise
        reader.join()
    return returncode, list(tail)


def _terminate(process: subprocess.Popen, grace_seconds: float = 30) -> None:
    """SIGTERM (torchrun passes it on to its processes), SIGKILL after ``grace_seconds``."""
    process.terminate()
    try:
        process.wait(timeout=grace_seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _children_errors(lines: list[str]) -> list[str]:
    """The last error lines of the processes, without torchrun's own report that follows them
    (a traceback of the launcher that only says a child failed); all of it if that is not found."""
    cut = next((i for i, line in enumerate(lines)
                if "elastic/multiprocessing" in line and "failed (exitcode" in line), len(lines))
    return (lines[:cut] or lines)[-STDERR_TAIL_LINES:]


def _child_environment() -> dict[str, str]:
    """This environment, with the code this flow runs first on the path (the children run the same)."""
    source = str(Path(stages.__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [source, env.get("PYTHONPATH")]))
    return env


def _check_devices(nproc: int) -> None:
    import torch

    if torch.cuda.is_available() and nproc > torch.cuda.device_count():
        raise LaunchError(f"unlearn.nproc is {nproc} but this machine has {torch.cuda.device_count()} GPU(s): "
                          f"set unlearn.nproc to at most that many (one process per GPU)")


def _log_line(line: str) -> None:
    """To the Prefect run's log when inside a run, else to this module's logger."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        logger = get_run_logger()
    except MissingContextError:
        logger = logging.getLogger(__name__)
    logger.info("unlearn: %s", line)
