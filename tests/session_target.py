"""The demo target of the tiny flow world, trained once per test session and copied into each repository.

Every flow repository of the tests would otherwise train the same production model again
(``ensure_target``: same world, model, fine-tuning settings and seed, so the same weights).
:func:`session_target` trains it the first time in a folder shared by the session's xdist
workers (under a file lock, so one worker trains and the other waits for it) and
:func:`copy_target` puts a copy where the flow looks for it (``models/target``).
The tests whose subject is that training (the ``reference_run`` of ``tests/reliability_runs.py``,
``tests/test_dvc_pipeline.py``) do not use it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

from components.config import Config, load_config
from components.context import run_context
from components.data.records import content_hash
from components.paths import Paths


def target_key(config: Config) -> str:
    """What the demo target's weights depend on: the world, model, fine-tuning settings and the seed."""
    import torch

    return content_hash({"world": config.world.model_dump(mode="json"), "model": config.model.model_dump(mode="json"),
                         "finetune": config.finetune.model_dump(mode="json"), "seed": config.seed,
                         "threads": config.threads, "torch": torch.__version__})


def shared_folder(tmp_path_factory) -> Path:
    """A folder every xdist worker of this session sees (the session's own temporary folder without xdist)."""
    base = tmp_path_factory.getbasetemp()
    folder = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "session-targets"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def built_once(path: Path, build: Callable[[Path], None], *, timeout: float = -1, log: Path | None = None) -> Path:
    """``path``, built by ``build(partial)`` and then renamed into place by whichever process of the session asks
    first; the others wait on its file lock (``timeout`` seconds at most; -1: no bound), and none ever sees it
    half-built. A partial left by a build that failed is removed first."""
    from filelock import FileLock, Timeout

    try:
        with FileLock(f"{path}.lock", timeout=timeout):
            if not path.exists():
                partial = path.with_name(path.name + ".partial")
                if partial.is_dir():
                    shutil.rmtree(partial)
                partial.unlink(missing_ok=True)
                build(partial)
                partial.rename(path)
    except Timeout:
        raise AssertionError(f"{path.name} was not built within {timeout:g} s" + (f": see {log}" if log else "")) \
            from None
    return path


def session_target(repo: Path, tmp_path_factory) -> Path:
    """The demo target ``repo``'s params.yaml describes, trained once per session (in ``repo`` the first time)."""
    config = load_config(repo / "params.yaml")
    assert config.model.base is None, "a user's model is not trained: nothing to share"

    def train(partial: Path) -> None:
        _train(config, repo)
        shutil.copytree(Paths(repo).target, partial)

    return built_once(shared_folder(tmp_path_factory) / target_key(config), train)


def copy_target(repo: Path, tmp_path_factory) -> Path:
    """``repo``'s ``models/target``: a copy of the session's trained target (trained now if it is the first)."""
    trained = session_target(repo, tmp_path_factory)
    destination = Paths(repo).target
    if not destination.exists():
        shutil.copytree(trained, destination)
    return destination


def _train(config: Config, repo: Path) -> None:
    """What the flow's ``target-model`` task does, on the thread count the flow sets (``threads``)."""
    import torch

    from components.runtime import apply_threads
    from flows.batch import ensure_target

    before = torch.get_num_threads()
    apply_threads(config)
    try:
        ensure_target(run_context(config, Paths(repo)), show_progress=False)
    finally:
        torch.set_num_threads(before)
