"""Erase from every copy: older model versions, failed candidates and local work folders.

Once a new champion has forgotten a request, every model logged before it was trained
with the request's records and still holds them: the earlier registered versions, and the
candidates that failed their gate (logged, never registered). ``registry.retention`` says
what happens to them (:func:`purge_superseded_versions`):

Only what this pipeline created is ever deleted: a version registered by hand (its run is not
the pipeline's, or its source is not one of the pipeline's logged models) is tagged and loses
its aliases, but its weights and folder stay (``PurgeResult.not_ours``).

* ``delete`` (default): tag them, remove any alias pointing at them, delete their weights
  (the logged model's artifacts) and delete the registry version and the logged model. The
  run stays, with its metrics, report, certificates and the tags that say what happened.
* ``archive``: tag them and remove their aliases; the weights stay (they still hold the data).
* ``keep``: nothing changes (for debugging; :func:`erased_data_holders` lists them).

Local copies (the batch folders ``runs/<batch>`` with their prepared forget set,
checkpoints and unlearned weights, and the downloaded previous champion) are removed by
:func:`purge_local_copies`. :func:`erased_data_holders` lists what still holds erased
data, for ``blur status``.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, NamedTuple, Sequence

from components.artifacts import ErasureRecord
from components.paths import Paths

if TYPE_CHECKING:
    from mlflow import MlflowClient

RETENTION_POLICIES = ("delete", "archive", "keep")
SUPERSEDED_TAG = "erasure_superseded_by"  # the version whose erasure made this copy obsolete
RETENTION_TAG = "erasure_retention"       # the policy that was applied
PURGED_TAG = "erasure_purged"             # run tag: versions / logged models whose weights were deleted
PIPELINE_MODEL_TAG = "gate"               # logged models this pipeline made carry it
PIPELINE_RUN_TAG, PIPELINE_NAME = "pipeline", "blur-unlearning"  # the runs this pipeline made carry it
EVAL_FINGERPRINT_TAG = "eval_fingerprint"  # its evaluation-cache key (components.evaluation.cache)


class RetentionError(RuntimeError):
    """A purge could not complete; the message says what was done and what to do."""


@dataclass(frozen=True)
class PurgeResult:
    """What :func:`purge_superseded_versions` found and did (versions as strings)."""

    policy: str
    superseded: tuple[str, ...]            # earlier registered versions (all of them hold the erased data)
    purged: tuple[str, ...]                # versions whose weights and registry entry were deleted
    aliases_removed: tuple[str, ...]       # "alias@version"
    candidates_purged: tuple[str, ...]     # unregistered logged models (failed candidates) deleted
    eval_fingerprints: tuple[str, ...] = ()  # evaluation-cache keys of the deleted models: purge their entries
    not_ours: tuple[str, ...] = ()         # versions this pipeline did not create: tagged, never deleted


class Holder(NamedTuple):
    """Something that still holds erased data: ``kind`` (model version, logged model, folder), which one, why."""

    kind: str
    what: str
    why: str


# --------------------------------------------------------------------------- the registry


def _versions(client: "MlflowClient", model_name: str) -> list:
    if "'" in model_name:
        raise RetentionError(f"model name {model_name!r} contains a quote; rename the registered model")
    found, token = [], None
    while True:
        page = client.search_model_versions(f"name='{model_name}'", page_token=token)
        found += list(page)
        token = page.token
        if not token:
            return found


def _logged_models(client: "MlflowClient", experiment_id: str) -> list:
    found, token = [], None
    while True:
        page = client.search_logged_models([experiment_id], page_token=token)
        found += list(page)
        token = page.token
        if not token:
            return found


def _delete_weights(client: "MlflowClient", location: str) -> None:
    """Delete every artifact under ``location`` (a logged model's storage location)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    get_artifact_repository(location, tracking_uri=client.tracking_uri).delete_artifacts()


def _tag_run(client: "MlflowClient", run_id: str | None, key: str, value: str) -> None:
    if run_id:
        client.set_tag(run_id, key, value)


def _retire_version(client: "MlflowClient", model_name: str, version, keep_version: str, policy: str,
                    aliases: Mapping[str, str]) -> list[str]:
    """Tag one superseded version (and its run), remove the ``aliases`` (name -> version) that
    point at it; returns the aliases removed."""
    number = str(version.version)
    if SUPERSEDED_TAG not in (version.tags or {}):  # the first erasure that superseded it stays on record
        client.set_model_version_tag(model_name, number, SUPERSEDED_TAG, keep_version)
        _tag_run(client, version.run_id, SUPERSEDED_TAG, keep_version)
    client.set_model_version_tag(model_name, number, RETENTION_TAG, policy)
    removed = []
    for alias in [name for name, target in aliases.items() if str(target) == number]:
        client.delete_registered_model_alias(model_name, alias)
        removed.append(f"{alias}@{number}")
    return removed


def _location(uri: str | None) -> str:
    return (uri or "").rstrip("/")


def _experiment_models(client: "MlflowClient", keep) -> list:
    """The logged models of the experiment of ``keep``'s run (where this pipeline logs its candidates)."""
    if not keep.run_id:
        return []
    return _logged_models(client, client.get_run(keep.run_id).info.experiment_id)


def _purge_version(client: "MlflowClient", model_name: str, version, models: Sequence) -> list[str]:
    """Delete a version's weights, its logged model and its registry entry; the run keeps a tag.
    Returns the evaluation-cache fingerprints of the logged models deleted."""
    number = str(version.version)
    try:
        _delete_weights(client, version.source)
    except Exception as error:
        raise RetentionError(
            f"could not delete the weights of {model_name} version {number} at {version.source}: "
            f"{type(error).__name__}: {error}. The version is tagged {SUPERSEDED_TAG} and serves no alias; "
            "delete its artifacts by hand (or set registry.retention: archive) and run the purge again."
        ) from error
    _tag_run(client, version.run_id, PURGED_TAG, f"{model_name} version {number}")
    fingerprints = []
    for model in models:  # the registry does not keep the model id: match the storage location
        if _location(model.artifact_location) == _location(version.source):
            fingerprints += _fingerprints([model])
            client.delete_logged_model(model.model_id)
    client.delete_model_version(model_name, number)
    return fingerprints


def _created_here(client: "MlflowClient", version, models: Sequence) -> bool:
    """Whether this pipeline made ``version``: its run is the pipeline's (``pipeline`` tag) and its
    source is one of the pipeline's logged models. A hand-registered version (a baseline, say) may
    point at any folder, and deleting "its weights" would delete that folder: it is never purged."""
    if not version.run_id:
        return False
    try:
        tags = client.get_run(version.run_id).data.tags
    except Exception:  # its run is gone or unreadable: not known to be ours
        return False
    return tags.get(PIPELINE_RUN_TAG) == PIPELINE_NAME and any(
        _location(m.artifact_location) == _location(version.source) and PIPELINE_MODEL_TAG in (m.tags or {})
        for m in models)


def _fingerprints(models: Sequence) -> list[str]:
    return [fp for fp in ((m.tags or {}).get(EVAL_FINGERPRINT_TAG) for m in models) if fp]


def _earlier_candidates(models: Sequence, keep, registered: set[str]) -> list:
    """Logged models of the pipeline made before ``keep``'s, never registered (failed their gate).

    ``registered``: the storage locations of the versions still in the registry."""
    newest = next((m for m in models if _location(m.artifact_location) == _location(keep.source)), None)
    if newest is None:
        return []
    return [model for model in models
            if _location(model.artifact_location) not in registered and model.model_id != newest.model_id
            and PIPELINE_MODEL_TAG in (model.tags or {})
            and model.creation_timestamp < newest.creation_timestamp]


def _purge_candidates(client: "MlflowClient", candidates: Sequence, keep_version: str, policy: str) -> list[str]:
    purged = []
    for model in candidates:
        if (model.tags or {}).get(SUPERSEDED_TAG) is None:
            client.set_logged_model_tags(model.model_id, {SUPERSEDED_TAG: keep_version, RETENTION_TAG: policy})
        if policy == "delete":
            _delete_weights(client, model.artifact_location)
            _tag_run(client, model.source_run_id, PURGED_TAG, f"logged model {model.model_id}")
            client.delete_logged_model(model.model_id)
            purged.append(model.model_id)
    return purged


def purge_superseded_versions(client: "MlflowClient", model_name: str, keep_version: str | int,
                              policy: str) -> PurgeResult:
    """Apply ``policy`` to every model logged before version ``keep_version`` (see the module docstring).

    Call it once ``keep_version`` serves (the alias moved) and the requests are settled.
    Idempotent: run again after a crash, it finishes what is left (``purged`` then lists
    only what this call deleted). Returns what it found and did.
    """
    if policy not in RETENTION_POLICIES:
        raise RetentionError(f"registry.retention is '{policy}'; use one of {', '.join(RETENTION_POLICIES)}")
    keep_version = str(keep_version)
    versions = _versions(client, model_name)
    keep = next((v for v in versions if str(v.version) == keep_version), None)
    if keep is None:
        raise RetentionError(f"{model_name} has no version {keep_version}: nothing was purged. Purge only after "
                             "the new champion is registered, with the version it was given.")
    earlier = sorted((v for v in versions if int(v.version) < int(keep_version)), key=lambda v: int(v.version))
    superseded = tuple(str(v.version) for v in earlier)
    if policy == "keep":
        return PurgeResult(policy, superseded, (), (), ())
    pointers = client.get_registered_model(model_name).aliases or {}  # search results carry no aliases
    models = _experiment_models(client, keep)
    aliases: list[str] = []
    purged: list[str] = []
    fingerprints: list[str] = []
    not_ours = tuple(str(v.version) for v in earlier if not _created_here(client, v, models))
    for version in earlier:
        aliases += _retire_version(client, model_name, version, keep_version, policy, pointers)
        if policy == "delete" and str(version.version) not in not_ours:
            fingerprints += _purge_version(client, model_name, version, models)
            purged.append(str(version.version))
    registered = {_location(v.source) for v in versions if str(v.version) not in purged}
    if purged:  # their logged models are gone now
        models = _experiment_models(client, keep)
    stale = _earlier_candidates(models, keep, registered)
    if policy == "delete":
        fingerprints += _fingerprints(stale)
    candidates = _purge_candidates(client, stale, keep_version, policy)
    return PurgeResult(policy, superseded, tuple(purged), tuple(aliases), tuple(candidates), tuple(fingerprints),
                       not_ours)


# --------------------------------------------------------------------------- local copies


def purge_local_copies(root: str | Path, paths: Iterable[str | Path]) -> list[str]:
    """Remove each of ``paths`` (folders or files inside ``root``); returns those removed, relative to ``root``.

    Missing paths are skipped. A path outside ``root`` (or ``root`` itself) is refused
    before anything is removed. A symbolic link is removed, not what it points to.
    """
    root = Path(root).resolve()
    targets = []
    for path in paths:
        path = Path(os.path.abspath(Path(path) if Path(path).is_absolute() else root / path))  # no '..' left
        resolved = path.parent.resolve() / path.name  # a link itself, not what it points to
        if resolved == root or root not in resolved.parents:
            raise RetentionError(f"refusing to remove {path}: only folders and files inside {root} are purged")
        targets.append(resolved)
    removed = []
    for path in targets:
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)
        else:
            continue
        removed.append(path.relative_to(root).as_posix())
    return removed




def local_copies(root: str | Path, runs_dir: str = "runs") -> list[Path]:
    """What the flow should remove after a promoted batch: the data, models and checkpoints of
    every batch folder under ``runs_dir`` (prepared forget sets, unlearned weights; all made
    from models now superseded; the ``reports/`` stay) and the downloaded previous champion
    (``models/champion``).

    Call it while holding the inbox lock, so no other batch is working in ``runs_dir``.
    """
    repo = Paths(Path(root))
    runs = repo.runs(runs_dir)
    folders = sorted(p for p in runs.iterdir() if p.is_dir() or p.is_symlink()) if runs.is_dir() else []
    parts = [[folder] if folder.is_symlink() else list(Paths(folder).erased_data_parts) for folder in folders]
    return [path for paths in parts for path in paths] + [repo.champion]


# --------------------------------------------------------------------------- what still holds erased data


def _time(value: Any) -> float | None:
    try:
        return datetime.fromisoformat(str(value)).timestamp()
    except (TypeError, ValueError):
        return None


def stale_run_folders(runs_root: str | Path, processed: Sequence[ErasureRecord | Mapping[str, Any]]) -> list[Path]:
    """Batch folders under ``runs_root`` that hold erased data.

    ``processed`` are the processed requests' results (``Inbox.processed_results()``). A
    folder holds erased data when it is the batch of a processed request (its forget set,
    checkpoints), or it was last prepared before the latest erasure (its models were
    made from a champion that still held the records erased since).
    """
    runs_root = Path(runs_root)
    if not runs_root.is_dir() or not processed:
        return []
    processed = [ErasureRecord.parse(result) for result in processed]
    batches = {result.batch_id for result in processed if result.batch_id}
    times = [t for t in (_time(result.processed_at) for result in processed) if t is not None]
    latest = max(times) if times else None
    stale = []
    for folder in sorted(p for p in runs_root.iterdir() if p.is_dir()):
        if not any(part.exists() for part in Paths(folder).erased_data_parts):
            continue  # only its reports are left
        marker = Paths(folder).resolution
        prepared_at = (marker if marker.exists() else folder).stat().st_mtime
        if folder.name in batches or (latest is not None and prepared_at < latest):
            stale.append(folder)
    return stale


def _registry_holders(client: "MlflowClient", model_name: str, processed: Sequence[ErasureRecord]) -> list[Holder]:
    erasing = {}
    for result in processed:
        version = result.model_version or ""
        if version.isdigit():
            erasing.setdefault(int(version), []).append(result.request_id)
    if not erasing:
        return []
    newest = max(erasing)
    versions = sorted(_versions(client, model_name), key=lambda v: int(v.version))
    holders = []
    for version in versions:
        later = [rid for number, ids in erasing.items() if number > int(version.version) for rid in ids]
        if later:
            state = (version.tags or {}).get(RETENTION_TAG, "not purged")
            shown = ", ".join(later[:3]) + (f" and {len(later) - 3} more" if len(later) > 3 else "")
            holders.append(Holder("model version", f"{model_name} version {version.version} ({state})",
                                  f"trained before {shown} was erased"))
    keep = next((v for v in versions if int(v.version) == newest), None)
    if keep is not None:
        registered = {_location(v.source) for v in versions}
        for model in _earlier_candidates(_experiment_models(client, keep), keep, registered):
            holders.append(Holder("logged model", f"{model.model_id} (run {model.source_run_id})",
                                  f"an unregistered candidate logged before version {newest}"))
    return holders


def erased_data_holders(client: "MlflowClient | None", model_name: str, *,
                        processed: Sequence[Mapping[str, Any]], runs_root: str | Path) -> list[Holder]:
    """Everything that still holds data of a processed request: model versions and failed
    candidates logged before the version that erased it (``client`` None: registry not
    checked), and stale batch folders (:func:`stale_run_folders`). Empty when none."""
    processed = [ErasureRecord.parse(result) for result in processed]
    holders = _registry_holders(client, model_name, processed) if client is not None else []
    batches = {str(result.batch_id) for result in processed}
    for folder in stale_run_folders(runs_root, processed):
        why = ("the work folder of a processed batch (its forget set, checkpoints)" if folder.name in batches
               else "a batch folder made before the latest erasure")
        holders.append(Holder("folder", f"{Path(runs_root).name}/{folder.name}", why))
    return holders
