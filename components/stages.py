"""One function per pipeline stage: config and paths in, files out.

``dvc.yaml`` runs these through ``python -m components.stages NAME``; the Prefect flow
calls the same functions. Nothing here imports Prefect.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Mapping, Sequence

import typer

from components.config import Config, load_config
from components.data.loaders import load_records, save_records
from components.data.records import Record
from components.data.requests import Resolution, read_request, resolve_requests
from components.data.world import load_world
from components.paths import Paths, resolve_local


def _write_json(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- prepare


def prepare(
    config: Config,
    paths: Paths,
    *,
    request_paths: Sequence[str | Path] | None = None,
    earlier: Mapping[str, Sequence[str]] | None = None,
) -> Resolution:
    """Load the world, resolve the deletion request(s), write the splits under data/prepared/.

    ``request_paths`` defaults to the ``request`` in params.yaml; several requests are
    unlearned together as one batch. ``earlier`` maps the ids of requests processed before to the record ids they erased;
    those records leave the retain set and are written out for the "still forgotten" checks.
    """
    world = load_world(config.world, config.seed, paths.root)
    requests = [read_request(path) for path in (request_paths or [paths.root / config.request])]
    earlier = dict(earlier or {})
    forgotten = {record_id for ids in earlier.values() for record_id in ids}
    resolution = resolve_requests(requests, world.records, already_forgotten=forgotten)

    save_records(world.records, paths.world)
    save_records(world.holdout, paths.holdout)
    save_records(resolution.forget, paths.forget)
    save_records(resolution.retain, paths.retain)
    by_id = {record.record_id: record for record in world.records}
    if paths.earlier.exists():
        for old in paths.earlier.glob("*.jsonl"):
            old.unlink()
    paths.earlier.mkdir(parents=True, exist_ok=True)
    for request_id, ids in earlier.items():
        save_records([by_id[i] for i in ids if i in by_id], paths.earlier / f"{request_id}.jsonl")
    summary = resolution.summary() | {
        "n_world": len(world.records),
        "n_holdout": len(world.holdout),
        "earlier_requests": sorted(earlier),
    }
    _write_json(paths.resolution, summary)
    return resolution


def load_splits(paths: Paths) -> dict[str, list[Record]]:
    """Read back what :func:`prepare` wrote."""
    splits = {name: load_records(getattr(paths, name)) if getattr(paths, name).stat().st_size else []
              for name in ("world", "holdout", "forget", "retain")}
    return splits


def load_earlier(paths: Paths) -> dict[str, list[Record]]:
    """Forget sets of earlier requests, by request id."""
    if not paths.earlier.exists():
        return {}
    return {file.stem: load_records(file) for file in sorted(paths.earlier.glob("*.jsonl"))
            if file.stat().st_size}


# --------------------------------------------------------------------------- finetune


def _train_tokenizer(config: Config, records: Sequence[Record]):
    from components.data.records import QARecord
    from components.modeling.encoding import answer_texts
    from components.modeling.tokenizer import train_tokenizer

    texts = []
    for record in records:
        if isinstance(record, QARecord):
            texts.append(record.question)
            texts.extend(answer_texts(record))
        else:
            texts.append(record.text)
    return train_tokenizer(texts, vocab_size=config.model.tokenizer.vocab_size)


def train_model(
    config: Config,
    records: Sequence[Record],
    tokenizer,
    out_dir: Path,
    *,
    epochs: int | None = None,
    label: str,
    show_progress: bool = True,
) -> dict:
    """Train a fresh tiny model on ``records`` and save it; returns the fine-tuning summary."""
    from components.modeling.finetune import finetune as run_finetune
    from components.modeling.io import save_model
    from components.modeling.tiny_model import build_tiny_model

    model = build_tiny_model(config.model.tiny, tokenizer, config.model.max_length, config.seed)
    result = run_finetune(
        model, tokenizer, records, config.finetune, max_length=config.model.max_length,
        seed=config.seed, epochs=epochs, show_progress=show_progress, label=label,
    )
    save_model(model, tokenizer, out_dir)
    return result.to_dict() | {"n_records": len(records)}


def train_oracle(config: Config, paths: Paths, *, epochs: int, show_progress: bool = True) -> dict:
    """Retrain the reference model on the current retain set (demo world only)."""
    from components.modeling.io import load_model_dir

    splits = load_splits(paths)
    tokenizer = load_model_dir(paths.target).tokenizer
    return train_model(config, splits["retain"], tokenizer, paths.oracle, epochs=epochs,
                       label="oracle", show_progress=show_progress)


def finetune(config: Config, paths: Paths, *, show_progress: bool = True) -> dict:
    """Produce models/target and models/oracle, and reports/finetune.json.

    With ``model.base`` set, the target is that model and nothing is trained; the oracle
    is ``model.oracle`` or absent.
    """
    from components.modeling.io import write_model_ref

    started = time.perf_counter()
    if config.model.base:
        oracle = resolve_local(config.model.oracle, paths.root) if config.model.oracle else None
        write_model_ref(paths.target, resolve_local(config.model.base, paths.root))
        write_model_ref(paths.oracle, oracle)
        summary = {"target": {"source": config.model.base}, "oracle": {"source": config.model.oracle}}
    else:
        splits = load_splits(paths)
        tokenizer = _train_tokenizer(config, splits["world"] + splits["holdout"])
        target = train_model(config, splits["world"], tokenizer, paths.target, label="target",
                             show_progress=show_progress)
        oracle = train_model(config, splits["retain"], tokenizer, paths.oracle, epochs=target["epochs"],
                             label="oracle", show_progress=show_progress)
        summary = {"target": target, "oracle": oracle}
    summary["seconds"] = round(time.perf_counter() - started, 1)
    _write_json(paths.reports / "finetune.json", summary)
    return summary


# --------------------------------------------------------------------------- command line

cli = typer.Typer(add_completion=False, help="Run one pipeline stage (what dvc.yaml calls).")


def _setup(params: Path, root: Path) -> tuple[Config, Paths]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return load_config(params), Paths(root)


@cli.command("prepare")
def prepare_command(params: Path = Path("params.yaml"), root: Path = Path(".")) -> None:
    """Resolve the deletion request against the world and write the splits."""
    config, paths = _setup(params, root)
    summary = prepare(config, paths).summary()
    typer.echo(
        f"request {', '.join(summary['request_ids'])}: {summary['n_forget']} records to forget "
        f"({summary['n_subjects']} subjects), {summary['n_retain']} to retain"
    )


@cli.command("finetune")
def finetune_command(params: Path = Path("params.yaml"), root: Path = Path(".")) -> None:
    """Train (or point at) the target and oracle models."""
    config, paths = _setup(params, root)
    summary = finetune(config, paths)
    target = summary["target"]
    if "mean_answer_prob" in target:
        typer.echo(
            f"target: mean answer probability {target['mean_answer_prob']:.3f} after "
            f"{target['epochs']} epochs (stopped by {target['stop_reason']}; "
            f"goal finetune.target_prob={config.finetune.target_prob})"
        )


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
