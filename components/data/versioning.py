"""Version request files with DVC: every request is hashed, cached and pushed to the remote.

Runs the ``dvc`` command line in the repository that holds the inbox (a separate process:
DVC resolves paths against the working directory, which a long-running flow must not
change). Moving a tracked file goes through ``dvc move`` so its ``.dvc`` file and
``.gitignore`` entry follow.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from components.paths import DVC_DIR

if TYPE_CHECKING:
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


def _dvc(root: Path, *args: str) -> str:
    if not is_repo(root):
        raise VersioningError(f"{root} is not a DVC repository; run `git init && dvc init` there first")
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, capture_output=True, text=True)
    if result.returncode != 0:
        message = (result.stderr or result.stdout).strip().splitlines()
        said = scrub_paths(message[-1], root, args[1:]) if message else str(result.returncode)
        raise VersioningError(f"dvc {args[0]} failed: {said}")
    return result.stdout


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
        _dvc(root, "add", "--quiet", *(_relative(root, f) for f in untracked))
    return {f.name: tracked_hash(f) for f in files}


def move(root: Path, source: Path, destination: Path) -> Path:
    """Move a file, through ``dvc move`` when DVC tracks it, so nothing is lost."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    if tracked_hash(source) is None:
        source.rename(destination)
        return destination
    _dvc(root, "move", "--quiet", _relative(root, source), _relative(root, destination))
    return destination


def push(root: Path) -> bool:
    """``dvc push`` to the default remote; False (nothing done) when no remote is configured."""
    if not _dvc(root, "remote", "default").strip():
        return False
    _dvc(root, "push", "--quiet")
    return True


def push_or_record(paths: "Paths") -> str | None:
    """``dvc push``; on failure record it in ``paths.push_pending`` (shown by ``blur status``, retried
    by the next run) and return the error; on success clear any record."""
    try:
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
