"""The skeleton every study shares: the process, the grid with its cache and resume, the report
writer (tables rendered from the results JSON), MLflow logging and the command line.

A study is a module with a grid, a function that runs it into a results dict, and ``render``:
the Markdown write-up from that dict alone. ``harness.cli`` gives it a typer command whose
``--report-only`` rewrites ``results/<stem>.md`` from ``results/<stem>.json`` without running anything.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
import typer

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS = BENCH_DIR / "results"
CACHE = BENCH_DIR / ".cache"

# --------------------------------------------------------------------------- the process


def init_process(threads: int = 1) -> int:
    """One torch thread (the machine is shared; oversubscription made runs ~5x slower), offline HF."""
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_PROGRESS_BARS"):
        os.environ.setdefault(key, "1")
    torch.set_num_threads(threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    return torch.get_num_threads()


def machine() -> dict[str, Any]:
    """Where the numbers were measured: CPU, cores, threads, versions, load at the start."""
    import transformers

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in (cpuinfo.read_text().splitlines() if cpuinfo.exists() else [])
             if line.startswith("model name")]
    return {"cpu": names[0] if names else cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "device": "cpu", "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "load_average_at_start": round(os.getloadavg()[0], 2)}


def log(message: str) -> None:
    """Human output goes to stderr (stdout is kept for machine-readable results)."""
    print(message, file=sys.stderr, flush=True)


def jsonable(value: Any) -> Any:
    """Dataclass dumps and configs as JSON values (paths as strings, tuples as lists)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return str(value) if isinstance(value, Path) else value


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8")) if Path(path).exists() else None


# --------------------------------------------------------------------------- the grid: cache, resume, budget


def run_grid(jobs: Sequence[Any], run_one: Callable[[Any], dict], *, name: Callable[[Any], str],
             cache: Callable[[Any], Path | None] = lambda job: None, budget_minutes: float = float("inf"),
             spent: float = 0.0, after_each: Callable[[dict], None] = lambda progress: None) -> dict[str, list]:
    """Every job in order: read back where its cache file exists, else run (and cache) it unless the next run
    would end past ``budget_minutes`` (``spent`` seconds are already gone; the next run is estimated by the
    longest of the last ten); ``after_each`` sees the progress so far. Returns the runs and the names of the
    skipped and cached jobs."""
    started, durations = time.perf_counter() - spent, []
    out: dict[str, list] = {"runs": [], "skipped": [], "cached": []}
    for index, job in enumerate(jobs, 1):
        path = cache(job)
        if path is not None and path.exists():
            out["runs"].append(read_json(path))
            out["cached"].append(name(job))
            continue
        if time.perf_counter() - started + (max(durations[-10:]) if durations else 0.0) > 60 * budget_minutes:
            out["skipped"].append(name(job))
            continue
        job_started = time.perf_counter()
        result = run_one(job)
        durations.append(time.perf_counter() - job_started)
        log(f"[{index}/{len(jobs)}] {name(job)}: {durations[-1]:.0f}s" + (f" [{result['error']}]" if result.get("error") else ""))
        if path is not None:
            write_json(path, result)
        out["runs"].append(result)
        after_each(out)
    return out


# --------------------------------------------------------------------------- tables from rows of dicts


def fmt(value: Any, digits: int = 3, none: str = "–") -> str:
    """A number for a table: ``digits`` decimals, scientific below ``10**-digits``, ``none`` for None."""
    if value is None:
        return none
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.1e}" if value != 0 and abs(value) < 10 ** -digits else f"{value:.{digits}f}"
    return str(value)


def mean_std(row: Mapping[str, Any] | None, key: str) -> str:
    """``"mean ± std"`` of ``key`` over the seeds of a configuration row; "–" when there is none."""
    return "–" if not row or row.get(key) is None else f"{fmt(row[key])} ± {fmt(row.get(f'{key}_std'))}"



def value_at(row: Mapping[str, Any], key: Any) -> Any:
    """A column's value: ``key`` is a field, a path of fields (tuple) or a function of the row."""
    if callable(key):
        return key(row)
    for part in key if isinstance(key, tuple) else (key,):
        row = row.get(part) if isinstance(row, Mapping) else None
    return row


def table(rows: Iterable[Mapping[str, Any]], columns: Sequence[tuple]) -> str:
    """A Markdown table: one line per row, one cell per ``(header, key[, digits])`` (key as in :func:`value_at`);
    numbers through :func:`fmt` with ``digits``, strings as they are."""
    lines = ["| " + " | ".join(c[0] for c in columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        cells = [(value_at(row, key), digits) for _, key, *digits in columns]
        lines.append("| " + " | ".join(v if isinstance(v, str) else fmt(v, *d) for v, d in cells) + " |")
    return "\n".join(lines)


def listing(title: str, items: Sequence[str]) -> str:
    """A Markdown section of bullet points (nothing when there are none)."""
    return f"\n## {title}\n\n" + "".join(f"- {item}\n" for item in items) if items else ""


def tail(results: Mapping[str, Any], cut: str = "Cut for the time budget") -> str:
    """The runs a sweep skipped for its budget and those that diverged, as sections."""
    skipped, errors = results.get("skipped") or [], [r for r in results["runs"] if r.get("error")]
    return (listing(f"{cut} ({len(skipped)} runs)", skipped)
            + listing("Runs that diverged", [f"{r['name']}: {r['error']}" for r in errors]))


def met(ok: Any) -> str:
    return "met" if ok else "NOT met"


# --------------------------------------------------------------------------- the report writer


def template(name: str) -> dict[str, str]:
    """The parts of ``templates/<name>.md``: the text before the first ``<!-- part: X -->`` line is "main"."""
    parts, key = {"main": []}, "main"
    for line in (BENCH_DIR / "templates" / f"{name}.md").read_text(encoding="utf-8").splitlines(keepends=True):
        if line.startswith("<!-- part: "):
            key = line.removeprefix("<!-- part: ").split(" ")[0]
            parts[key] = []
        else:
            parts[key].append(line)
    return {k: "".join(v) for k, v in parts.items()}


def write_report(results: dict[str, Any], out: Path, stem: str, render: Callable[[dict], str],
                 figures: Callable[[dict, Path], list[Path]] | None = None) -> list[Path]:
    """``<stem>.json`` (the results), ``<stem>.md`` rendered from exactly that JSON, and any figures."""
    path = write_json(Path(out) / f"{stem}.json", jsonable(results))
    results = read_json(path)  # the write-up sees what a later --report-only sees
    files = (figures(results, Path(out)) if figures else []) + [path]
    (Path(out) / f"{stem}.md").write_text(render(results), encoding="utf-8")
    return files + [Path(out) / f"{stem}.md"]


def report_only(out: Path, stem: str, render: Callable[[dict], str]) -> None:
    """Rewrite ``<stem>.md`` from ``<stem>.json``; nothing runs."""
    md = Path(out) / f"{stem}.md"
    md.write_text(render(read_json(Path(out) / f"{stem}.json")), encoding="utf-8")
    log(f"wrote {md}")


def write_sweep(results: dict[str, Any], analysis: dict[str, Any], out: Path, stem: str, render: Callable[[dict], str],
                figures: Callable[[dict, Path], list[Path]] | None = None) -> list[Path]:
    """A sweep's report: the results with their analysis, the per-step logs left to MLflow."""
    runs = [{k: v for k, v in r.items() if k != "diagnostics"} for r in results["runs"]]
    return write_report(results | {"runs": runs, "analysis": analysis}, out, stem, render, figures)


def run_study(config: Any, sweep: Callable[[], dict], analyse: Callable, write: Callable,
              mlflow: Callable | None = None) -> tuple[dict, dict, list[Path]]:
    """The skeleton of a sweep study: the process, the sweep, its wall time, the analysis, the report
    and (``config.mlflow``) the MLflow runs. ``analyse(results, config)``, ``write(results, analysis, config)``,
    ``mlflow(results, analysis, config, files)``."""
    started = time.perf_counter()
    init_process(config.threads)
    results = sweep()
    results["wall_seconds"] = round(time.perf_counter() - started, 1)
    analysis = analyse(results, config)
    files = write(results, analysis, config)
    if config.mlflow and mlflow:
        mlflow(results, analysis, config, files)
        log(f"logged to MLflow ({Path(config.out_dir) / 'mlflow'})")
    return results, analysis, files


# --------------------------------------------------------------------------- MLflow


def log_benchmark(out: Path, experiment: str, *, run_name: str, params: Mapping[str, Any],
                  metrics: Mapping[str, float], children: Sequence[dict], artifacts: Sequence[Path]) -> str:
    """One parent run (summary, result files) and one child run per unlearning run
    (``{"name", "params", "metrics_by_step": {step: {key: value}}, "diagnostics"}``), in a SQLite store
    under ``out/mlflow`` (never the pipeline's ``mlflow.db``; ``MLFLOW_TRACKING_URI`` is ignored on purpose).
    Browse it with ``mlflow ui --backend-store-uri sqlite:///benchmarks/results/mlflow/mlflow.db``."""
    from mlflow.entities import RunStatus

    from components.registry.tracking import (TrackingStore, connect, diagnostic_series, experiment_id,
                                              log_metric_values, log_params_and_tags)

    directory = Path(out) / "mlflow"
    directory.mkdir(parents=True, exist_ok=True)
    store = TrackingStore.sqlite(directory / "mlflow.db", directory / "artifacts")
    client = connect(store)
    exp = experiment_id(client, store, experiment)
    parent_id = client.create_run(exp, run_name=run_name).info.run_id
    log_params_and_tags(client, parent_id, {k: str(v)[:6000] for k, v in params.items()}, {"benchmark": experiment})
    log_metric_values(client, parent_id, [(k, float(v), 0) for k, v in metrics.items() if v is not None])
    for path in artifacts:
        client.log_artifact(parent_id, str(path))
    finished = RunStatus.to_string(RunStatus.FINISHED)
    for child in children:
        run_id = client.create_run(exp, run_name=child["name"], tags={"mlflow.parentRunId": parent_id}).info.run_id
        log_params_and_tags(client, run_id, {k: str(v) for k, v in child["params"].items()}, {})
        values = [(key, float(value), int(step)) for step, row in child["metrics_by_step"].items()
                  for key, value in row.items() if isinstance(value, (int, float))]
        log_metric_values(client, run_id, values + diagnostic_series(child.get("diagnostics") or []))
        client.set_terminated(run_id, finished)
    client.set_terminated(parent_id, finished)
    return parent_id


def reference_metrics(results: Mapping[str, Any]) -> dict[str, float]:
    """The target's and the oracle's numeric metrics as ``role.key`` (a parent run's summary)."""
    return {f"{role}.{k}": v for role, r in results["reference"].items() for k, v in r.items()
            if isinstance(v, (int, float))}


# --------------------------------------------------------------------------- the command line

OUT = typer.Option(RESULTS, "--out", help="where results go (default benchmarks/results)")
REPORT_ONLY = typer.Option(False, "--report-only", help="rewrite the write-up from the results JSON; run nothing")
NO_MLFLOW = typer.Option(False, "--no-mlflow", help="do not log to MLflow")


def cli(doc: str | None) -> typer.Typer:
    """A one-command typer app for a study; its first docstring line is the help."""
    return typer.Typer(help=(doc or "").strip(), add_completion=False, pretty_exceptions_enable=False,
                       rich_markup_mode=None)


def invoke(app: typer.Typer, argv: Sequence[str] | None = None) -> None:
    """Run ``app`` on ``argv`` (None: the process arguments) without exiting the interpreter."""
    typer.main.get_command(app).main(list(argv) if argv is not None else None, standalone_mode=False)
