"""Version request files with DVC: every request is hashed, cached and pushed to the remote.

Runs the ``dvc`` command line in the repository that holds the inbox (a separate process:
DVC resolves paths against the working directory, which a long-running flow must not
change). Moving a tracked file goes through ``dvc move`` so its ``.dvc`` file and
``.gitignore`` entry follow.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml


class VersioningError(RuntimeError):
    """DVC could not track, move or push a request file."""


def is_repo(root: Path) -> bool:
    """Whether ``root`` is a DVC repository (request files there must be tracked)."""
    return (Path(root) / ".dvc").is_dir()


def _dvc(root: Path, *args: str) -> str:
    if not is_repo(root):
        raise VersioningError(f"{root} is not a DVC repository; run `git init && dvc init` there first")
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, capture_output=True, text=True)
    if result.returncode != 0:
        message = (result.stderr or result.stdout).strip().splitlines()
        raise VersioningError(f"dvc {args[0]} failed: {message[-1] if message else result.returncode}")
    return result.stdout


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
