"""What the flow and the ``blur`` CLI need beyond the stages: one request's check, the production
target, a batch folder's models, the registry's view (champion, reports) and a batch's failure
count. No Prefect here: ``flows/pipeline.py`` wraps these in tasks."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from components.config import Config
from components.context import RunContext
from components.data.requests import DeletionRequest, RequestError, Resolution, resolve_request
from components.data.world import load_world
from components.modeling.demo import train_demo_tokenizer, train_target, trained_epochs
from components.modeling.io import copy_model_dir, write_model_ref
from components.modeling.resolve import link_user_models, load_tokenizer, model_plan, target_source
from components.paths import RUN_ARTIFACTS, FinetuneEntry, Paths
from components.stages import train_oracle


def _examples(world) -> list:
    """What ``model.max_length: auto`` is derived from, as prepare derives it: the world and its holdout."""
    return list(world.records) + list(world.holdout)


def check_request(ctx: RunContext, request: DeletionRequest, *,
                  earlier: Mapping[str, Sequence[str]] | None = None) -> Resolution:
    """Resolve one request against the world and run the validation suites on it alone.

    Raises :class:`RequestError` with every reason (also for failed expectations). The
    token-length checks need the target's tokenizer; before a demo target exists they wait
    for the batch validation.
    """
    from components.validation import validate_request_data

    config, repo = ctx.config, ctx.paths
    world = load_world(config.world, config.seed, repo.config_root)
    forgotten = {record_id for ids in (earlier or {}).values() for record_id in ids}
    resolution = resolve_request(request, world.records, already_forgotten=forgotten)
    target = target_source(model_plan(config, repo.config_root), repo)
    if target is None:
        return resolution
    tokenizer = load_tokenizer(target, config.model)
    sized = ctx.with_max_length(tokenizer, _examples(world))
    report = validate_request_data(
        world=world.records, forget=resolution.forget, retain=resolution.retain, request=request,
        tokenizer=tokenizer, max_length=sized.config.model.max_length,
    )
    if not report.passed:
        raise RequestError([report.reason()], source=request.request_id)
    return resolution


def ensure_target(ctx: RunContext, *, show_progress: bool = True) -> str:
    """The production target's location: ``model.base``, or the demo target (trained if missing)."""
    repo = ctx.paths
    found = target_source(model_plan(ctx.config, repo.config_root), repo)
    if found is not None:
        return found
    world = load_world(ctx.config.world, ctx.config.seed, repo.config_root)
    tokenizer = train_demo_tokenizer(ctx.config, _examples(world))
    sized = ctx.with_max_length(tokenizer, _examples(world))
    train_target(sized.config, world.records, world.holdout, repo.target, tokenizer=tokenizer,
                 show_progress=show_progress)
    return str(repo.target.resolve())


def link_batch_models(ctx: RunContext, batch: RunContext, *, start: str | None, show_progress: bool = True) -> dict:
    """Point a prepared batch folder (``batch``; ``ctx``: the repository's) at the target and its starting
    model, and provide its oracle.

    The oracle must never have seen any forgotten record: on the demo world it is retrained
    on the batch's retain set (the target's recipe and epoch count); for a user's own model
    it is ``model.oracle`` or absent.
    """
    repo, paths = ctx.paths, batch.paths
    plan = model_plan(ctx.config, repo.config_root)
    cached = finetuned_before(batch) if plan.is_demo else None
    if cached is not None and target_source(plan, repo) is None:
        copy_model_dir(FinetuneEntry(cached).target, repo.target)  # what training the production target would give
    target = ensure_target(ctx, show_progress=show_progress)
    write_model_ref(paths.start, str(Path(start).resolve()) if start else target)
    if not plan.is_demo:
        link_user_models(plan, paths)
        return {"oracle": plan.oracle}
    write_model_ref(paths.target, target)
    if cached is not None:
        copy_model_dir(FinetuneEntry(cached).oracle, paths.oracle)
        return {"oracle": str(paths.oracle), "cached": cached.name}
    oracle = train_oracle(batch.config, paths, load_tokenizer(target, batch.config.model),
                          epochs=trained_epochs(repo.target), show_progress=show_progress)
    return {"oracle": oracle}


def finetuned_before(batch: RunContext) -> Path | None:
    """The fine-tune cache entry (``components.stages.finetune``) trained from exactly this batch's
    prepared world, holdout, retain set and tokenizer with these settings, or None.

    Its oracle never saw the batch's forget set nor any earlier erased record (they are not in the
    retain set the key hashes), so the batch uses it instead of fine-tuning again: on SmolLM2 that is
    tens of minutes per batch. The key is the finetune stage's, so a `dvc repro` of the same request
    (or an earlier batch's stage run) fills it.
    """
    from components.stages.finetune import finetune_cache

    cached = finetune_cache(batch.config, batch.paths)
    return cached if FinetuneEntry(cached).summary.exists() else None


def current_champion(config: Config, repo: Paths, *, download: bool = True) -> dict | None:
    """The model the serving alias points to (downloaded under models/champion), or None."""
    from components.registry import champion, tracking_store

    found = champion(config.registry.model_name, config.registry.alias, store=tracking_store(repo.root),
                     dst=repo.champion if download else None, download=download)
    if found is None:
        return None
    return {"version": found.version, "run_id": found.run_id,
            "model_dir": str(found.model_dir) if found.model_dir else None}


def run_report(config: Config, repo: Paths, run_id: str | None = None) -> str | None:
    """The markdown report of an MLflow run (the latest run of the experiment by default)."""
    from components.registry import connect, tracking_store
    from components.registry.tracking import experiment_id

    store = tracking_store(repo.root)
    if not store.exists():  # nothing ran here yet: reading would create an empty store
        return None
    client = connect(store)
    if run_id is None:
        experiment = experiment_id(client, store, config.registry.experiment)
        runs = client.search_runs([experiment], order_by=["attributes.start_time DESC"], max_results=1)
        if not runs:
            return None
        run_id = runs[0].info.run_id
    try:
        return Path(client.download_artifacts(run_id, RUN_ARTIFACTS.report)).read_text(encoding="utf-8")
    except Exception:
        return None


def count_failure(paths: Paths, error: BaseException) -> int:
    """Record one more failed run of the batch in ``paths`` (``failures.json``); returns the count. A
    record that cannot be read (:class:`~components.artifacts.ArtifactError`) counts as none before."""
    from components.artifacts import ArtifactError, BatchFailures

    try:
        count = BatchFailures.load(paths.failures).failures + 1
    except (OSError, ArtifactError):
        count = 1
    BatchFailures(failures=count, last_error=type(error).__name__).save(paths.failures)
    return count


def reset_failures(paths: Paths) -> None:
    """Forget the batch's failed runs (``failures.json``) once they sent its requests to failed/, so
    ``blur request retry`` (one or ``--all``) gets ``flow.max_batch_failures`` fresh runs."""
    paths.failures.unlink(missing_ok=True)
