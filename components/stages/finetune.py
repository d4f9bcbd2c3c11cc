"""Stage ``finetune``: the target and oracle models (trained for the demo, referenced for a user's).

Trained models are cached by content under ``.cache/finetune/<key>`` beside the configuration
(git- and DVC-ignored): the key hashes the prepared world, holdout, retain set, tokenizer and
derived settings with the model, fine-tuning and seed settings, so a ``dvc repro``, a flow
batch or a benchmark that would train the same models again copies them instead (fine-tuning
SmolLM2 on a world takes tens of minutes on a CPU).
"""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

from components.artifacts import FinetuneSummary
from components.config import Config
from components.context import RunContext, as_context
from components.modeling.demo import train_model, train_target
from components.modeling.resolve import link_user_models, model_plan
from components.paths import FinetuneEntry, Paths
from components.stages.prepare import load_splits


def finetune(run: RunContext | Config, paths: Paths | None = None, *, show_progress: bool = True) -> FinetuneSummary:
    """Produce models/target and models/oracle, and reports/finetune.json (returned).

    With ``model.base`` set, the target is that model and nothing is trained; the oracle
    is ``model.oracle`` or absent.
    """
    started = time.perf_counter()
    ctx = as_context(run, paths).prepared()
    config, paths = ctx.config, ctx.paths
    plan = model_plan(config, paths.config_root)
    if not plan.is_demo:
        link_user_models(plan, paths)
        summary = {"target": {"source": plan.target}, "oracle": {"source": plan.oracle}}
    else:
        cached = finetune_cache(config, paths)
        if FinetuneEntry(cached).summary.exists():
            summary = restore_finetuned(cached, paths)
        else:
            summary = _train(config, paths, show_progress=show_progress)
            store_finetuned(paths, cached, summary)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    written = FinetuneSummary.model_validate(summary)
    written.save(paths.report_files.finetune_summary)
    return written


def _train(config: Config, paths: Paths, *, show_progress: bool) -> dict:
    from components.modeling.resolve import load_tokenizer

    splits = load_splits(paths)
    target, tokenizer = train_target(config, splits["world"], splits["holdout"], paths.target,
                                     tokenizer=load_tokenizer(paths.tokenizer, config.model),
                                     show_progress=show_progress)
    oracle = train_model(config, splits["retain"], tokenizer, paths.oracle, epochs=target["epochs"],
                         label="oracle", show_progress=show_progress)
    return {"target": target, "oracle": oracle}


def finetune_cache(config: Config, paths: Paths) -> Path:
    """Where the models trained from these prepared data and settings are kept (``paths.finetune_cache``)."""
    import torch

    from components.data.records import content_hash, folder_hash

    digest = hashlib.sha256()
    for name in (paths.world, paths.holdout, paths.retain, paths.settings):
        digest.update(name.name.encode() + b"\0" + (name.read_bytes() if name.exists() else b""))
    for file in sorted(p for p in paths.tokenizer.rglob("*") if p.is_file()) if paths.tokenizer.exists() else []:
        digest.update(str(file.relative_to(paths.tokenizer)).encode() + b"\0" + file.read_bytes())
    model = config.model.model_dump(mode="json")
    for key in ("base", "oracle", "pretrained"):  # a local model folder counts by its content, not where it lies
        if model[key] and Path(model[key]).is_dir():
            model[key] = {"folder": folder_hash(Path(model[key]))}
    key = content_hash({"data": digest.hexdigest(), "model": model,
                        "finetune": config.finetune.model_dump(mode="json"), "seed": config.seed,
                        "torch": torch.__version__})
    return paths.finetune_cache / key


def store_finetuned(paths: Paths, cached: Path, summary: dict) -> None:
    """Copy the trained target and oracle into the cache (complete once its finetune.json exists)."""
    tmp = cached.with_name(cached.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    for role, folder in (("target", paths.target), ("oracle", paths.oracle)):
        shutil.copytree(folder, FinetuneEntry(tmp).model(role))
    FinetuneSummary.model_validate(summary).save(FinetuneEntry(tmp).summary)
    shutil.rmtree(cached, ignore_errors=True)
    tmp.rename(cached)


def restore_finetuned(cached: Path, paths: Paths) -> dict:
    """The cached target and oracle into ``paths``; the summary they were trained with (marked cached).
    A cache entry whose summary does not load is an :class:`~components.artifacts.ArtifactError` naming it."""
    from components.modeling.io import copy_model_dir

    stored = FinetuneSummary.load(FinetuneEntry(cached).summary)
    for role, folder in (("target", paths.target), ("oracle", paths.oracle)):
        copy_model_dir(FinetuneEntry(cached).model(role), folder)
    return stored.to_dict() | {"cached": cached.name}  # the cache key: no path (it may be a name)


def train_oracle(config: Config, paths: Paths, tokenizer, *, epochs: int, show_progress: bool = True) -> dict:
    """Retrain the demo reference model on the current retain set (the target's recipe)."""
    config = as_context(config, paths).prepared().config
    return train_model(config, load_splits(paths)["retain"], tokenizer, paths.oracle, epochs=epochs,
                       label="oracle", show_progress=show_progress)
