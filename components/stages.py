"""One function per pipeline stage: config and paths in, files out.

``dvc.yaml`` runs these through ``python -m components.stages NAME``; the Prefect flow
calls the same functions. Nothing here imports Prefect.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Mapping, Sequence

import typer

from components.config import Config, load_config
from components.data.loaders import load_records, save_records
from components.data.records import Record
from components.data.requests import Resolution, read_request, resolve_requests
from components.data.world import load_world
from components.jsonfiles import write_json
from components.paths import Paths, resolve_local


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
    request_paths = list(request_paths or [paths.config_root / config.request])
    world = load_world(config.world, config.seed, paths.config_root)
    requests = [read_request(path) for path in request_paths]
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
    requests_dir = paths.prepared / "requests"
    if requests_dir.exists():
        shutil.rmtree(requests_dir)
    requests_dir.mkdir(parents=True)
    for request_path, request in zip(request_paths, requests):
        shutil.copyfile(request_path, requests_dir / f"{request.request_id}.json")
    summary = resolution.summary() | {
        "n_world": len(world.records),
        "n_holdout": len(world.holdout),
        "earlier_requests": sorted(earlier),
    }
    write_json(paths.resolution, summary)
    return resolution


def load_splits(paths: Paths) -> dict[str, list[Record]]:
    """Read back what :func:`prepare` wrote (an empty file is an empty split)."""
    def read(path: Path) -> list[Record]:
        return load_records(path) if path.stat().st_size else []

    return {name: read(getattr(paths, name)) for name in ("world", "holdout", "forget", "retain")}


def load_prepared_requests(paths: Paths) -> list:
    """The deletion requests of the prepared batch, parsed again."""
    return [read_request(p) for p in sorted((paths.prepared / "requests").glob("*.json"))]


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
    summary = result.to_dict() | {"n_records": len(records)}
    write_json(out_dir / "training.json", summary)
    return summary


def train_target(config: Config, records: Sequence[Record], holdout: Sequence[Record], out_dir: Path, *,
                 show_progress: bool = True):
    """The demo target: a tokenizer trained on ``records`` and ``holdout``, and a tiny model
    trained on ``records`` to ``finetune.target_prob``. Returns ``(summary, tokenizer)``."""
    tokenizer = _train_tokenizer(config, list(records) + list(holdout))
    return train_model(config, records, tokenizer, out_dir, label="target", show_progress=show_progress), tokenizer


def train_oracle(config: Config, paths: Paths, *, epochs: int, show_progress: bool = True) -> dict:
    """Retrain the reference model on the current retain set (demo world only)."""
    splits = load_splits(paths)
    return train_model(config, splits["retain"], _tokenizer_for(paths), paths.oracle, epochs=epochs,
                       label="oracle", show_progress=show_progress)


def finetune(config: Config, paths: Paths, *, show_progress: bool = True) -> dict:
    """Produce models/target and models/oracle, and reports/finetune.json.

    With ``model.base`` set, the target is that model and nothing is trained; the oracle
    is ``model.oracle`` or absent.
    """
    from components.modeling.io import write_model_ref

    started = time.perf_counter()
    if config.model.base:
        oracle = resolve_local(config.model.oracle, paths.config_root) if config.model.oracle else None
        write_model_ref(paths.target, resolve_local(config.model.base, paths.config_root))
        write_model_ref(paths.oracle, oracle)
        summary = {"target": {"source": config.model.base}, "oracle": {"source": config.model.oracle}}
    else:
        splits = load_splits(paths)
        target, tokenizer = train_target(config, splits["world"], splits["holdout"], paths.target,
                                         show_progress=show_progress)
        oracle = train_model(config, splits["retain"], tokenizer, paths.oracle, epochs=target["epochs"],
                             label="oracle", show_progress=show_progress)
        summary = {"target": target, "oracle": oracle}
    summary["seconds"] = round(time.perf_counter() - started, 1)
    write_json(paths.reports / "finetune.json", summary)
    return summary


# --------------------------------------------------------------------------- validate


def _tokenizer_for(paths: Paths):
    from components.modeling.io import resolve_model_source
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model_source(paths.target))


def validate(config: Config, paths: Paths) -> dict:
    """Great Expectations suites over the request(s), world, forget and retain sets.

    Writes reports/validation.json and Data Docs under reports/data_docs/; raises
    :class:`components.validation.ValidationFailed` (nothing downstream runs) on failure.
    """
    from components.validation import validate_request_data

    splits = load_splits(paths)
    report = validate_request_data(
        world=splits["world"], holdout=splits["holdout"] or None,
        forget=splits["forget"], retain=splits["retain"],
        request=load_prepared_requests(paths), tokenizer=_tokenizer_for(paths),
        max_length=config.model.max_length,
        docs_dir=paths.reports / "data_docs", report_path=paths.reports / "validation.json",
    )
    report.raise_if_failed()
    return report.to_dict()


# --------------------------------------------------------------------------- unlearn


def unlearn(config: Config, paths: Paths, *, start: Path | None = None, show_progress: bool = True) -> dict:
    """Unlearn the forget set from ``start`` (default models/target) into models/unlearned.

    Checkpoints go to checkpoints/unlearn/ and are resumed after a crash; on NaN/inf the
    run stops with :class:`UnlearningDivergedError` and no model is written.
    """
    from components.modeling.io import load_model_dir, save_model
    from components.unlearning import run_unlearning

    started = time.perf_counter()
    rank, device = _init_distributed()
    splits = load_splits(paths)
    loaded = load_model_dir(start or paths.target, device=device)
    if loaded is None:
        raise FileNotFoundError(f"no starting model at {start or paths.target}")
    if rank == 0 and paths.unlearned.exists():
        shutil.rmtree(paths.unlearned)
    log_path = paths.reports / "unlearn_log.jsonl"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    result = run_unlearning(
        loaded.model, loaded.tokenizer, splits["forget"], splits["retain"], config.unlearn,
        max_length=config.model.max_length, seed=config.seed,
        checkpoint_dir=paths.checkpoints, log_path=log_path, show_progress=show_progress and rank == 0,
    )
    if rank != 0:
        return result.summary()
    save_model(result.model, loaded.tokenizer, paths.unlearned)
    _write_steps_csv(result.diagnostics, paths.reports / "plots" / "unlearn_steps.csv")
    shutil.rmtree(paths.checkpoints, ignore_errors=True)
    method = {k: getattr(config.unlearn, k) for k in ("combiner", "lower", "forget_loss", "retain_loss",
                                                       "gamma", "alpha", "lr")}
    summary = result.summary() | {"method": method, "start_model": str(loaded.source),
                                  "seconds": round(time.perf_counter() - started, 1)}
    write_json(paths.reports / "unlearn.json", summary)
    return summary


def _init_distributed() -> tuple[int, str]:
    """Join the process group when launched by ``torchrun`` (one process per device)."""
    import torch
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if device != "cpu":
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if device != "cpu" else "gloo")
    return (dist.get_rank() if dist.is_initialized() else 0), device


def _write_steps_csv(diagnostics: list[dict], path: Path) -> Path:
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    columns = ["step", "forget_loss", "retain_loss", "inner", "forget_norm_sq", "retain_norm_sq",
               "cos", "xi", "grad_norm", "lr"]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(diagnostics)
    return path


# --------------------------------------------------------------------------- evaluate


def evaluate(config: Config, paths: Paths, *, show_progress: bool = True) -> dict:
    """Evaluate target, oracle and unlearned models; write reports/metrics.json and per-item CSVs.

    Earlier processed requests (data/prepared/earlier/) are evaluated too: still forgotten.
    """
    from components.evaluation import evaluate_models, write_reports
    from components.modeling.io import load_model_dir

    splits = load_splits(paths)
    models = {"target": load_model_dir(paths.target), "oracle": load_model_dir(paths.oracle),
              "unlearned": load_model_dir(paths.unlearned)}
    utility_sets = {
        Path(path).stem: load_records(resolve_local(path, paths.config_root)) for path in config.eval.utility_sets
    }
    result = evaluate_models(
        models, forget=splits["forget"], retain=splits["retain"], holdout=splits["holdout"],
        config=config.eval, max_length=config.model.max_length, earlier_forget=load_earlier(paths),
        utility_sets=utility_sets, show_progress=show_progress,
    )
    write_reports(result, paths.reports)
    return result.metrics


# --------------------------------------------------------------------------- register


def _md5(path: Path) -> str:
    import hashlib

    return hashlib.md5(path.read_bytes()).hexdigest()


def register(
    config: Config,
    paths: Paths,
    *,
    tracking_root: Path | None = None,
    tags: Mapping[str, str] | None = None,
    dvc_hashes: Mapping[str, str] | None = None,
) -> dict:
    """Log the run to MLflow, apply the gate, and promote the candidate only if it passes.

    Writes reports/gate.json and reports/run_report.md. The MLflow store is the one of
    ``tracking_root`` (default: the pipeline root), or ``MLFLOW_TRACKING_URI``.
    """
    from components.registry import RetryPolicy, register_candidate, tracking_store

    metrics = _read_json(paths.reports / "metrics.json")
    log = paths.reports / "unlearn_log.jsonl"
    diagnostics = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    if dvc_hashes is None:  # DVC's md5 of a file is the md5 of its bytes
        dvc_hashes = {p.stem: _md5(p) for p in sorted((paths.prepared / "requests").glob("*.json"))}
    decision = register_candidate(
        config, metrics=metrics, diagnostics=diagnostics, summary=_read_json(paths.resolution),
        dvc_hashes=dvc_hashes, model_dir=paths.unlearned, reports_dir=paths.reports,
        store=tracking_store(tracking_root or paths.config_root), retry=RetryPolicy(),
        tags=tags,
    )
    return decision.to_dict()


def current_champion(config: Config, repo: Paths, *, download: bool = True) -> dict | None:
    """The model the serving alias points to (downloaded under models/champion), or None."""
    from components.registry import champion, tracking_store

    found = champion(config.registry.model_name, config.registry.alias, store=tracking_store(repo.root),
                     dst=repo.models / "champion" if download else None, download=download)
    if found is None:
        return None
    return {"version": found.version, "run_id": found.run_id,
            "model_dir": str(found.model_dir) if found.model_dir else None}


def run_report(config: Config, repo: Paths, run_id: str | None = None) -> str | None:
    """The markdown report of an MLflow run (the latest run of the experiment by default)."""
    from components.registry import connect, tracking_store
    from components.registry.tracking import experiment_id

    store = tracking_store(repo.root)
    client = connect(store)
    if run_id is None:
        experiment = experiment_id(client, store, config.registry.experiment)
        runs = client.search_runs([experiment], order_by=["attributes.start_time DESC"], max_results=1)
        if not runs:
            return None
        run_id = runs[0].info.run_id
    try:
        return Path(client.download_artifacts(run_id, "run_report.md")).read_text(encoding="utf-8")
    except Exception:
        return None


# --------------------------------------------------------------------------- flow helpers


def check_request(config: Config, repo: Paths, request, *, earlier: Mapping[str, Sequence[str]] | None = None) -> Resolution:
    """Resolve one request against the world and run the validation suites on it alone.

    Raises :class:`RequestError` with every reason (also for failed expectations). The
    token-length checks need the target's tokenizer; before a target exists they wait
    for the batch validation.
    """
    from components.data.requests import RequestError, resolve_request
    from components.modeling.io import resolve_model_source
    from components.validation import validate_request_data

    world = load_world(config.world, config.seed, repo.root)
    forgotten = {record_id for ids in (earlier or {}).values() for record_id in ids}
    resolution = resolve_request(request, world.records, already_forgotten=forgotten)
    target = resolve_model_source(repo.target)
    if target is None or not Path(target).exists():
        return resolution
    from transformers import AutoTokenizer

    report = validate_request_data(
        world=world.records, forget=resolution.forget, retain=resolution.retain, request=request,
        tokenizer=AutoTokenizer.from_pretrained(target), max_length=config.model.max_length,
    )
    if not report.passed:
        raise RequestError([report.reason()], source=request.request_id)
    return resolution


def ensure_target(config: Config, repo: Paths, *, show_progress: bool = True) -> Path:
    """The production base model: ``model.base``, or the demo target (trained if missing)."""
    from components.modeling.io import write_model_ref

    if config.model.base:
        write_model_ref(repo.target, resolve_local(config.model.base, repo.root))
        return repo.target
    if (repo.target / "config.json").exists():
        return repo.target
    world = load_world(config.world, config.seed, repo.root)
    train_target(config, world.records, world.holdout, repo.target, show_progress=show_progress)
    return repo.target


def link_base_models(config: Config, repo: Paths, paths: Paths, *, start: str | None,
                     show_progress: bool = True) -> dict:
    """Point a batch folder at the target and its starting model, and provide its oracle.

    The oracle must never have seen any forgotten record: on the demo world it is retrained
    on the batch's retain set (the target's recipe and epoch count); for a user's own model
    it is ``model.oracle`` or absent.
    """
    from components.modeling.io import write_model_ref

    write_model_ref(paths.target, str(repo.target.resolve()))
    write_model_ref(paths.models / "start", str(Path(start).resolve()) if start else str(repo.target.resolve()))
    if config.model.base:
        oracle = resolve_local(config.model.oracle, repo.root) if config.model.oracle else None
        write_model_ref(paths.oracle, oracle)
        return {"oracle": oracle}
    epochs = _read_json(repo.target / "training.json")["epochs"]
    return {"oracle": train_oracle(config, paths, epochs=epochs, show_progress=show_progress)}


# --------------------------------------------------------------------------- command line

cli = typer.Typer(add_completion=False, help="Run one pipeline stage (what dvc.yaml calls).")


def apply_threads(config: Config) -> None:
    """Use ``threads`` CPU threads for torch in this process (``null`` keeps torch's default)."""
    if config.threads is not None:
        import torch

        torch.set_num_threads(config.threads)


def _setup(params: Path, root: Path) -> tuple[Config, Paths]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    config = load_config(params)
    apply_threads(config)
    return config, Paths(root)


@cli.command("prepare")
def prepare_command(params: Path = Path("params.yaml"), root: Path = Path(".")) -> None:
    """Resolve the deletion request against the world and write the splits."""
    config, paths = _setup(params, root)
    summary = prepare(config, paths).summary()
    typer.echo(
        f"request {', '.join(summary['request_ids'])}: {summary['n_forget']} records to forget "
        f"({summary['n_subjects']} subjects), {summary['n_retain']} to retain"
    )


@cli.command("validate")
def validate_command(params: Path = Path("params.yaml"), root: Path = Path(".")) -> None:
    """Validate the request and the splits with Great Expectations."""
    from components.validation import ValidationFailed

    config, paths = _setup(params, root)
    try:
        report = validate(config, paths)
    except ValidationFailed as error:
        typer.echo(f"validation failed; nothing will be unlearned:\n{error}", err=True)
        raise typer.Exit(1)
    typer.echo(f"validation passed: {len(report['suites'])} suites ({paths.reports / 'data_docs' / 'index.html'})")


@cli.command("unlearn")
def unlearn_command(params: Path = Path("params.yaml"), root: Path = Path(".")) -> None:
    """Unlearn the forget set from models/target into models/unlearned."""
    config, paths = _setup(params, root)
    summary = unlearn(config, paths)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    typer.echo(f"unlearned in {summary['steps']} steps: forget loss {summary['first_forget_loss']:.3f} -> "
               f"{summary['final_forget_loss']:.3f}, retain loss {summary['first_retain_loss']:.3f} -> "
               f"{summary['final_retain_loss']:.3f}")


@cli.command("evaluate")
def evaluate_command(params: Path = Path("params.yaml"), root: Path = Path(".")) -> None:
    """Evaluate target, oracle and unlearned models into reports/metrics.json."""
    config, paths = _setup(params, root)
    metrics = evaluate(config, paths)
    for role in ("target", "oracle", "unlearned"):
        values = metrics.get(role) or {}
        typer.echo(f"{role:10s} " + "  ".join(
            f"{key}={values[key]:.3f}" for key in ("forget_prob", "forget_quality", "retain_prob", "model_utility")
            if values.get(key) is not None))


@cli.command("register")
def register_command(params: Path = Path("params.yaml"), root: Path = Path(".")) -> None:
    """Log to MLflow, apply the gate, and move the serving alias only if it passes."""
    config, paths = _setup(params, root)
    gate = register(config, paths)
    if gate["passed"]:
        typer.echo(f"gate passed: {gate['model_name']} version {gate['version']} is now '{gate['alias']}'")
    else:
        typer.echo("gate FAILED; the serving alias did not move:\n  " + "\n  ".join(gate.get("reasons", [])))


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
