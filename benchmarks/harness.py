"""What every study shares: the process, cached runs, the report writer (``templates/<name>.md``), the command line."""

import json
import os
import platform
import re
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
import typer

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS = BENCH_DIR / "results"
CACHE = BENCH_DIR / ".cache"


def init_process(threads: int = 1) -> int:
    """``threads`` torch threads (``BLUR_BENCH_THREADS`` wins), offline HF, no progress bars."""
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_PROGRESS_BARS"):
        os.environ.setdefault(key, "1")
    torch.set_num_threads(int(os.environ.get("BLUR_BENCH_THREADS", threads)))
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


def write_json(path: Path, data: Any) -> Path:
    """``data`` as indented JSON (paths as strings, tuples as lists), atomically: a killed run leaves no half file."""
    (part := path.with_name(f".{path.name}.{os.getpid()}.part")).parent.mkdir(parents=True, exist_ok=True)
    part.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    return part.replace(path)


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8")) if Path(path).exists() else None


def cached(path: Path, compute: Callable[[], Any]) -> Any:
    """``path``'s JSON when an earlier run wrote it (a rerun resumes), else ``compute()``, written there."""
    found = read_json(path)
    return found if found is not None else read_json(write_json(path, compute()))


def fmt(value: Any, digits: int = 3, none: str = "–") -> str:
    """A number for a table: ``digits`` decimals, scientific below ``10**-digits``, ``none`` for None."""
    if value is None or isinstance(value, bool):
        return none if value is None else "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.1e}" if value != 0 and abs(value) < 10 ** -digits else f"{value:.{digits}f}"
    return str(value)


def value_at(row: Mapping[str, Any], key: Any) -> Any:
    """A column's value: ``key`` is a field, a path of fields (tuple) or a function of the row."""
    if callable(key):
        return key(row)
    for part in key if isinstance(key, tuple) else (key,):
        row = row.get(part) if isinstance(row, Mapping) else None
    return row


def table(rows: Iterable[Mapping[str, Any]], columns: Sequence[tuple], number: Callable[..., str] = fmt) -> str:
    """A Markdown table, one cell per ``(header, key[, digits])`` (key: :func:`value_at`; via ``number``)."""
    lines = ["| " + " | ".join(c[0] for c in columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        cells = [(value_at(row, key), digits) for _, key, *digits in columns]
        lines.append("| " + " | ".join(v if isinstance(v, str) else number(v, *d) for v, d in cells) + " |")
    return "\n".join(lines)


def template(name: str) -> dict[str, str]:
    """The parts of ``templates/<name>.md``: the text before the first ``<!-- part: X -->`` line is "main"."""
    text = (BENCH_DIR / "templates" / f"{name}.md").read_text(encoding="utf-8")
    chunks = re.split(r"^<!-- part: ([^ \n]+).*(?:\n|$)", text, flags=re.MULTILINE)  # main, key, text, key, text ...
    return {"main": chunks[0], **dict(zip(chunks[1::2], chunks[2::2]))}


def write_report(results: dict[str, Any], out: Path, stem: str, render: Callable[[dict], str]) -> None:
    """``<stem>.json`` and ``<stem>.md`` rendered from exactly that JSON, as ``--report-only`` would."""
    report_only(out, stem, render, read_json(write_json(Path(out) / f"{stem}.json", results)))


def report_only(out: Path, stem: str, render: Callable[[dict], str], results: dict | None = None) -> None:
    """Rewrite ``<stem>.md`` from ``results`` (default: ``<stem>.json``); nothing runs."""
    md = Path(out) / f"{stem}.md"
    md.write_text(render(results if results is not None else read_json(md.with_suffix(".json"))), encoding="utf-8")
    log(f"wrote {md}")


OUT = typer.Option(RESULTS, "--out", help="where results go (default benchmarks/results)")
REPORT_ONLY = typer.Option(False, "--report-only", help="rewrite the write-up from the results JSON; run nothing")


def cli(doc: str | None) -> typer.Typer:
    """A one-command typer app for a study; its first docstring line is the help."""
    return typer.Typer(help=(doc or "").strip(), add_completion=False, pretty_exceptions_enable=False,
                       rich_markup_mode=None)


def command(app: typer.Typer, module: str) -> Callable[[Callable], Callable]:
    """``@app.command()`` for a study's ``main`` (its last definition), run when ``module`` is ``__main__``."""
    def register(function: Callable) -> Callable:
        app.command()(function)
        if module == "__main__":
            app()
        return function
    return register


def invoke(app: typer.Typer, argv: Sequence[str] | None = None) -> None:
    """Run ``app`` on ``argv`` (None: the process arguments) without exiting the interpreter."""
    typer.main.get_command(app).main(list(argv) if argv is not None else None, standalone_mode=False)
