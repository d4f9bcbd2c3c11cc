"""Version request files with DVC: every request is hashed, cached and pushed to the remote.

Uses DVC's Python API (``dvc.repo.Repo``) on the repository that holds the inbox. Moving a
tracked file goes through ``dvc move`` so its ``.dvc`` file and ``.gitignore`` entry follow.
"""

from __future__ import annotations

from pathlib import Path

import yaml


class VersioningError(RuntimeError):
    """DVC could not track, move or push a request file."""


def _repo(root: Path):
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    try:
        return Repo(str(root))
    except NotDvcRepoError:
        raise VersioningError(
            f"{root} is not a DVC repository; run `git init && dvc init` there first"
        ) from None


def _dvc_file(path: Path) -> Path:
    return path.with_name(path.name + ".dvc")


def tracked_hash(path: Path) -> str | None:
    """The md5 DVC recorded for ``path``, or None if it is not tracked."""
    dvc_file = _dvc_file(path)
    if not dvc_file.exists():
        return None
    outs = yaml.safe_load(dvc_file.read_text()).get("outs", [])
    return outs[0].get("md5") if outs else None


def track(root: Path, files: list[Path]) -> dict[str, str]:
    """``dvc add`` each file (once) and return its DVC hash by file name."""
    untracked = [f for f in files if tracked_hash(f) is None]
    if untracked:
        with _repo(root) as repo:
            try:
                repo.add([str(f.resolve().relative_to(root.resolve())) for f in untracked])
            except Exception as error:  # DVC raises many types; the message says what
                raise VersioningError(f"dvc add failed: {error}") from error
    return {f.name: tracked_hash(f) for f in files}


def move(root: Path, source: Path, destination: Path) -> Path:
    """Move a file, through ``dvc move`` when DVC tracks it, so nothing is lost."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    if tracked_hash(source) is None:
        source.rename(destination)
        return destination
    with _repo(root) as repo:
        try:
            repo.move(str(source.resolve().relative_to(root.resolve())),
                      str(destination.resolve().relative_to(root.resolve())))
        except Exception as error:
            raise VersioningError(f"dvc move {source} -> {destination} failed: {error}") from error
    return destination


def push(root: Path) -> int:
    """``dvc push`` to the default remote; returns the number of files pushed (0 without a remote)."""
    with _repo(root) as repo:
        if not repo.config.get("core", {}).get("remote"):
            return 0
        try:
            return int(repo.push() or 0)
        except Exception as error:
            raise VersioningError(f"dvc push failed: {error}") from error
