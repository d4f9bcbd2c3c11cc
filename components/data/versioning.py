"""Version request files with DVC: every request is hashed, cached and pushed to the remote, and
so is what proves its erasure (its result note and certificate).

Runs DVC's own commands (``dvc.repo.Repo``: add, move, push, the default remote) in this process on
the repository that holds the inbox, one at a time (:func:`_dvc`): every path is given to DVC absolute,
so nothing depends on the working directory, which a long-running flow must not change. (One process
per command paid Python's start and DVC's imports, about 1 CPU-s, for each.) Moving a tracked file
goes through DVC's move so its ``.dvc`` file and ``.gitignore`` entry follow. A command that meets
another DVC command's repository lock is tried again for up to :data:`LOCK_WAIT_SECONDS`.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import yaml

from components.paths import DVC_DIR

if TYPE_CHECKING:
    from dvc.repo import Repo

    from components.artifacts import PushPending
    from components.paths import Paths


class VersioningError(RuntimeError):
    """DVC could not track, move or push a request file."""


def bytes_md5(data: bytes) -> str:
    """What DVC records for a file of these bytes: their md5."""
    return hashlib.md5(data).hexdigest()


def file_md5(path: str | Path) -> str:
    """What DVC records for the file at ``path`` (:func:`bytes_md5` of its bytes, read in blocks)."""
    with Path(path).open("rb") as handle:
        return hashlib.file_digest(handle, "md5").hexdigest()


def is_repo(root: Path) -> bool:
    """Whether ``root`` is in a DVC repository (request files there must be tracked): the repository's
    root itself or a folder inside it, such as the SmolLM2 profile's ``pretrained/``."""
    root = Path(root).resolve()
    return any((folder / DVC_DIR).is_dir() for folder in (root, *root.parents))


logger = logging.getLogger(__name__)

# What DVC says when another DVC command (an operator's `dvc push`, say) holds the repository lock
# (`.dvc/tmp/lock`) past the 3 s DVC itself waits: the start of dvc.lock.FAILED_TO_LOCK_MESSAGE (DVC 3).
DVC_LOCK_ERROR = "Unable to acquire lock"
# A command that meets that lock is started again (back-off 1, 2, 4, 8, 8 ... s) while less than this many
# seconds have passed since its first try; each try itself waits DVC's 3 s, so it gives up at most about 45 s
# after it began: within the 60 s a person's `blur request add` waits for the inbox lock while a request's
# file moves (inbox.USER_LOCK_SECONDS). A move that still fails leaves a certified request settling, finished
# by the next run; a failed push is recorded, fails the run and is retried by the next one.
LOCK_WAIT_SECONDS = 30.0


# DVC's commands run one at a time in a process: Prefect runs tasks in threads, and DVC's loggers are the process's.
_DVC_CALLS = threading.RLock()
_DVC_LOGGERS = ("dvc", "dvc_objects", "dvc_data")


@contextmanager
def quiet_dvc() -> Iterator[None]:
    """DVC's loggers (and so its progress bars) silent while DVC runs in this process: what DVC would say
    names request files, and a failure comes back as its exception. One DVC call at a time in this process."""
    with _DVC_CALLS:
        import dvc  # noqa: F401  its import sets up its loggers: silenced here from then on

        levels = {name: logging.getLogger(name).level for name in _DVC_LOGGERS}
        for name in _DVC_LOGGERS:
            logging.getLogger(name).setLevel(logging.CRITICAL + 1)
        try:
            yield
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)


@contextmanager
def dvc_repo(root: Path) -> "Iterator[Repo]":
    """DVC's ``Repo`` of the repository holding ``root``, opened and closed as a ``dvc`` command does
    (:func:`quiet_dvc`)."""
    with quiet_dvc():
        from dvc.repo import Repo

        with Repo(str(Path(root).resolve())) as repo:
            yield repo


def _run(root: Path, command: str, *args: str) -> None:
    """DVC's ``dvc COMMAND ARGS`` (add, move, push) run in ``root``, paths relative to ``root``."""
    where = Path(root).resolve()
    with dvc_repo(where) as repo:
        if command == "add":
            repo.add([str(where / arg) for arg in args])
        elif command == "move":
            repo.move(*(str(where / arg) for arg in args))
        elif command == "push":
            repo.push()
        else:
            raise ValueError(f"dvc {command} {' '.join(args)}: not a command this module runs")


def _require_repo(root: Path) -> None:
    if not is_repo(root):
        raise VersioningError(f"{root} is not a DVC repository; run `git init && dvc init` there first")


def default_remote(root: Path) -> str | None:
    """The name of the repository's default DVC remote; None when none is set (reading the config takes
    no repository lock, so no retry)."""
    with dvc_repo(root) as repo:
        return repo.config.read()["core"].get("remote") or None


def _said(error: BaseException) -> str:
    """What the ``dvc`` command line says of ``error`` (``ERROR:`` and the chain of causes, as its logger
    writes them)."""
    from dvc.exceptions import DvcException

    said, causes = "ERROR: " + ("" if isinstance(error, DvcException) else "unexpected error - "), []
    while error is not None:
        causes.append(str(error))
        error = error.__cause__
    return said + ": ".join(causes)


def _dvc(root: Path, *args: str, lock_wait: float = LOCK_WAIT_SECONDS) -> None:
    """Run ``dvc ARGS`` in ``root`` (:func:`_run`); on DVC's lock error only, start it again with back-off: once
    in any case (one attempt alone can outlast ``lock_wait`` on a loaded machine), then while less than
    ``lock_wait`` seconds have passed. Any other failure raises at once (:class:`VersioningError`)."""
    _require_repo(root)
    deadline, delay, retried = time.monotonic() + lock_wait, 1.0, False
    while True:
        try:
            return _run(root, *args)
        except Exception as error:  # DVC's failure, said as its command line says it
            output = _said(error)
        locked = DVC_LOCK_ERROR in output
        if not locked or (retried and time.monotonic() + delay > deadline):
            break
        retried = True
        logger.info("dvc %s: another DVC command holds the repository lock; trying again in %g s", args[0], delay)
        time.sleep(delay)
        delay = min(2 * delay, 8.0)
    lines = output.strip().splitlines()
    message = [line for line in lines if line.startswith("ERROR")] or lines
    said = scrub_paths(message[-1], root, args[1:]) if message else "no reason given"
    waited = f" (the repository lock was still held after {lock_wait:g} s of retries)" if locked else ""
    raise VersioningError(f"dvc {args[0]} failed: {said}{waited}")


def file_token(name: str) -> str:
    """How a request file is named in an error instead of its name (which can name a person):
    ``file-`` and a hash of the name, as :func:`components.data.inbox.label` names an unreadable one."""
    from components.data.records import content_hash

    return "file-" + content_hash(name, length=12)


def scrub_paths(text: str, root: Path, args: "tuple[str, ...] | list[str]") -> str:
    """``text`` (DVC's stderr, which quotes paths) with every path of ``args`` and every other
    path under the request folders replaced by :func:`file_token`: it goes into exceptions,
    Prefect states and logs."""
    import re

    for arg in sorted((a for a in args if not a.startswith("-")), key=len, reverse=True):
        for form in (str(Path(root).resolve() / arg), arg, Path(arg).name):
            if form and form not in (".", "/"):
                text = text.replace(form, file_token(Path(arg).name))
    return re.sub(r"[^\s'\"]*requests/[^\s'\"]+", lambda m: file_token(Path(m.group(0)).name), text)


def _relative(root: Path, path: Path) -> str:
    return str(path.resolve().relative_to(root.resolve()))


def _dvc_file(path: Path) -> Path:
    return path.with_name(path.name + ".dvc")


def tracked_hash(path: Path) -> str | None:
    """The md5 DVC recorded for ``path``, or None if it is not tracked."""
    dvc_file = _dvc_file(path)
    if not dvc_file.exists():
        return None
    outs = yaml.safe_load(dvc_file.read_text()).get("outs", [])
    return outs[0].get("md5") if outs else None


def track(root: Path, files: list[Path]) -> dict[str, str | None]:
    """``dvc add`` each file (once) and return its DVC hash by file name.

    A symbolic link is never added (DVC would store what it points to): its hash is None.
    """
    untracked = [f for f in files if not f.is_symlink() and tracked_hash(f) is None]
    if untracked:
        _dvc(root, "add", *(_relative(root, f) for f in untracked))
    return {f.name: tracked_hash(f) for f in files}


def move(root: Path, source: Path, destination: Path) -> Path:
    """Move a file, through ``dvc move`` when DVC tracks it, so nothing is lost."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    if tracked_hash(source) is None:
        source.rename(destination)
        return destination
    _dvc(root, "move", _relative(root, source), _relative(root, destination))
    return destination


def push(root: Path) -> bool:
    """``dvc push`` to the default remote; False (nothing done) when no remote is configured."""
    _require_repo(root)
    if default_remote(root) is None:
        return False
    _dvc(root, "push")
    return True


def track_proofs(paths: "Paths") -> list[Path]:
    """``dvc add`` what proves the erasures (:meth:`Paths.erasure_proofs`: result notes, certificates,
    their renderings, the chain head) where DVC has not recorded its current bytes, so the next push
    takes it to the remote; returns the files added."""
    changed = [p for p in paths.erasure_proofs() if tracked_hash(p) != file_md5(p)]
    if changed:
        _dvc(paths.root, "add", *(_relative(paths.root, p) for p in changed))
    return changed


def push_or_record(paths: "Paths") -> str | None:
    """Track the erasure proofs (:func:`track_proofs`) and ``dvc push``; on failure record it in
    ``paths.push_pending`` (shown by ``blur status``, retried by the next run) and return the error;
    on success clear any record."""
    try:
        track_proofs(paths)
        push(paths.root)
    except Exception as error:  # the batch is done and versioned locally; only the remote copy lags
        _record_pending(paths, f"{type(error).__name__}: {error}")
        return str(error)
    paths.push_pending.unlink(missing_ok=True)
    return None


def mark_push_pending(paths: "Paths", reason: str) -> None:
    """Record that the remote lags (before settling a batch), so a crash before its push leaves the
    marker the next run retries; :func:`push_or_record` clears it. An older record keeps its time."""
    _record_pending(paths, reason)


def _record_pending(paths: "Paths", error: str) -> None:
    """Write ``paths.push_pending`` with ``error``, since the time of an older record (else now)."""
    from datetime import datetime, timezone

    from components.artifacts import PushPending

    older = pending_push(paths)
    since = (older.since if older else None) or datetime.now(timezone.utc).isoformat(timespec="seconds")
    PushPending(since=since, error=error[:2000]).save(paths.push_pending)


def pending_push(paths: "Paths") -> "PushPending | None":
    """The recorded failed ``dvc push``, or None when the remote is up to date. A record that cannot
    be read (:class:`~components.artifacts.ArtifactError`) counts as one with nothing known: the push
    is still retried."""
    from components.artifacts import ArtifactError, PushPending

    if not paths.push_pending.exists():
        return None
    try:
        return PushPending.load(paths.push_pending)
    except (OSError, ArtifactError):
        return PushPending()
