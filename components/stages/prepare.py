"""Stage ``prepare``: resolve the deletion request(s) against the world and write the splits."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Mapping, Sequence

from components.artifacts import ArtifactError, EarlierLevels, PreparedSettings
from components.artifacts import Resolution as ResolutionFile
from components.config import Config
from components.context import RunContext, as_context, run_context
from components.data.loaders import load_records, save_records
from components.data.records import Record
from components.data.requests import (DeletionRequest, Resolution, parse_request_bytes, read_request,
                                     resolve_requests)
from components.data.world import load_world
from components.paths import Paths


def prepare(
    run: RunContext | Config,
    paths: Paths | None = None,
    *,
    request_paths: Sequence[str | Path] | None = None,
    request_data: Sequence[bytes] | None = None,
    earlier: Mapping[str, Sequence[str]] | None = None,
    earlier_levels: Mapping[str, float] | None = None,
) -> Resolution:
    """Load the world, resolve the deletion request(s), write the splits under data/prepared/.

    ``request_paths`` defaults to the ``request`` in params.yaml; several requests are
    unlearned together as one batch. ``request_data``: the requests' bytes as already read and
    hashed by the caller (the flow), used instead of reading the files again, so exactly the
    bytes that were versioned are unlearned. ``earlier`` maps the ids of requests processed before to
    the record ids they erased; those records leave the retain set and are written out for the
    "still forgotten" checks. ``earlier_levels``: the forget probability each was erased to (from
    its certificate), for the gate's ``max_earlier_regain_ratio``.
    """
    ctx = as_context(run, paths)
    config, paths = ctx.config, ctx.paths
    if request_data is None:
        request_paths = list(request_paths or [paths.config_root / config.request])
        request_data = [Path(path).read_bytes() for path in request_paths]
        requests = [read_request(path) for path in request_paths]
    else:
        requests = [parse_request_bytes(data) for data in request_data]
    world = load_world(config.world, config.seed, paths.config_root)
    earlier = dict(earlier or {})
    forgotten = {record_id for ids in earlier.values() for record_id in ids}
    resolution = resolve_requests(requests, world.records, already_forgotten=forgotten)

    derived = _prepare_model_inputs(ctx, list(world.records) + list(world.holdout))
    save_records(world.records, paths.world)
    save_records(world.holdout, paths.holdout)
    save_records(resolution.forget, paths.forget)
    save_records(resolution.retain, paths.retain)
    _write_earlier(paths, world.records, earlier)
    EarlierLevels({rid: float(level) for rid, level in (earlier_levels or {}).items()
                   if rid in earlier and level is not None}).save(paths.earlier_levels)
    _copy_requests(paths, request_data, requests)
    ResolutionFile.model_validate(resolution.summary() | {
        "n_world": len(world.records),
        "n_holdout": len(world.holdout),
        "earlier_requests": sorted(earlier),
        "max_length": derived.config.model.max_length,
    }).save(paths.resolution)
    return resolution


def _prepare_model_inputs(ctx: RunContext, records: Sequence[Record]) -> RunContext:
    """Everything the data checks need before any training: the tokenizer the model will use
    (the demo's trained here, or the user's model's), saved under data/prepared/tokenizer, and
    ``model.max_length`` when it is ``auto``."""
    from components.modeling.io import save_tokenizer
    from components.modeling.resolve import load_tokenizer, model_plan

    config, paths = ctx.config, ctx.paths
    plan = model_plan(config, paths.config_root)
    if plan.is_demo:
        from components.modeling.demo import train_demo_tokenizer

        tokenizer = train_demo_tokenizer(config, records)
    else:
        tokenizer = load_tokenizer(plan.target, config.model)
    if paths.tokenizer.exists():
        shutil.rmtree(paths.tokenizer)
    save_tokenizer(tokenizer, paths.tokenizer)  # the same files offline or online: the fine-tune cache's key
    derived = ctx.with_max_length(tokenizer, records)
    PreparedSettings(max_length=derived.config.model.max_length).save(paths.settings)
    return derived


def resolved_config(config: Config, paths: Paths) -> Config:
    """The effective configuration of a stage after ``prepare`` (:mod:`components.context`), for
    callers that hold a configuration and its folders (the benchmarks)."""
    return run_context(config, paths).prepared().config


def _write_earlier(paths: Paths, records: Sequence[Record], earlier: Mapping[str, Sequence[str]]) -> None:
    """One JSONL per earlier request with the records it erased (for "still forgotten")."""
    if paths.earlier.exists():
        for old in paths.earlier_forget_sets():
            old.unlink()
    paths.earlier.mkdir(parents=True, exist_ok=True)
    by_id = {record.record_id: record for record in records}
    found = {request_id: [by_id[i] for i in ids if i in by_id] for request_id, ids in earlier.items()}
    _refuse_empty(found)
    for request_id, kept in found.items():
        save_records(kept, paths.earlier_forget(request_id))


def _copy_requests(paths: Paths, request_data: Sequence[bytes], requests: Sequence[DeletionRequest]) -> None:
    requests_dir = paths.prepared_requests
    if requests_dir.exists():
        shutil.rmtree(requests_dir)
    requests_dir.mkdir(parents=True)
    for data, request in zip(request_data, requests):
        paths.prepared_request(request.request_id).write_bytes(data)



def load_splits(paths: Paths) -> dict[str, list[Record]]:
    """Read back what :func:`prepare` wrote (an empty file is an empty split)."""
    def read(path: Path) -> list[Record]:
        return load_records(path) if path.stat().st_size else []

    return {name: read(getattr(paths, name)) for name in ("world", "holdout", "forget", "retain")}


def load_prepared_requests(paths: Paths) -> list[DeletionRequest]:
    """The deletion requests of the prepared batch, parsed again."""
    return [read_request(p) for p in paths.prepared_request_files()]


class EmptyEarlierForgetSet(ValueError):
    """An earlier request's forget set holds no record: "still forgotten" cannot be re-checked for it."""


def load_earlier(paths: Paths) -> dict[str, list[Record]]:
    """Forget sets of earlier requests, by request id. An empty one is an error naming its request,
    never skipped: every erased request erased at least one record, so an empty set means its
    records are lost (the world changed, or its result note lost its ids) and the gate could not
    re-check it."""
    if not paths.earlier.exists():
        return {}
    earlier = {file.stem: load_records(file) if file.stat().st_size else [] for file in paths.earlier_forget_sets()}
    _refuse_empty(earlier)
    return earlier


ERASED_LEVEL = "erased_forget_prob"  # metrics.json: unlearned.earlier.<request>.erased_forget_prob


def with_erased_levels(metrics: dict, paths: Paths) -> dict:
    """``metrics`` (a metrics.json mapping) with each earlier request's erased level added to the
    unlearned model's earlier section (``erased_forget_prob``), where prepare recorded one. An
    unreadable levels file records none: the gate's check of those requests then fails closed."""
    try:
        levels = EarlierLevels.read(paths.earlier_levels)
    except (OSError, ArtifactError):
        levels = EarlierLevels({})
    for request_id, values in ((metrics.get("unlearned") or {}).get("earlier") or {}).items():
        level = levels.get(request_id)
        if level is not None:
            values[ERASED_LEVEL] = level
    return metrics


def _refuse_empty(earlier: Mapping[str, Sequence]) -> None:
    """Raise :class:`EmptyEarlierForgetSet` naming every earlier request without records."""
    empty = sorted(request_id for request_id, records in earlier.items() if not records)
    if empty:
        raise EmptyEarlierForgetSet(
            f"earlier request(s) {', '.join(empty)}: no erased record found in the world, so the gate cannot "
            "re-check that they stay forgotten; restore their result files in data/requests/processed/ "
            "(or the world they were erased from) before processing more requests")
