"""The figures in ``benchmarks/README.md`` that come from results files, written between markers.

A block ``<!-- generated: NAME -->`` ... ``<!-- /generated: NAME -->`` in the README is rendered
by :data:`BLOCKS` from the JSON under ``benchmarks/results/``; nothing between the markers is
typed by hand. After a benchmark writes new results:

    python -m benchmarks.readme           # rewrite every block
    python -m benchmarks.readme --check   # exit 1 when a block differs from its results (the suite runs this)
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

from benchmarks import harness
from benchmarks.harness import BENCH_DIR, fmt, log, read_json, table

README = BENCH_DIR / "README.md"
RESULTS = BENCH_DIR / "results"


def _floor_rows(results: Path) -> list[dict[str, Any]]:
    """One row per evaluate run of the evaluation-reuse write-ups (first and second run of each profile)."""
    rows = []
    for stem, profile in (("eval_reuse", "SmolLM2 profile"), ("eval_reuse_demo", "demo world")):
        found = read_json(results / f"{stem}.json")
        for run in (found or {}).get("runs", []):
            floor, cache = run["evaluate"]["floor"], run["evaluate"]["cache"]
            rows.append({"world": profile, "run": f"{run['run']} `dvc repro`", "file": f"`{stem}.json`",
                         "evaluate": floor["evaluate_seconds"], "floor": floor["floor_seconds"],
                         "ratio": floor["ratio"], "cpu_ratio": floor.get("cpu_ratio"),
                         "scored": ", ".join(role for role, c in cache.items() if c["misses"]) or "none"})
    return rows


def floors(results: Path = RESULTS) -> str:
    """Evaluate's distance from its floor on the demo world and the SmolLM2 profile."""
    return table(_floor_rows(results), [
        ("world", "world"), ("run", "run"), ("models scored", "scored"),
        ("evaluate s", lambda r: fmt(r["evaluate"], 1)), ("floor s", lambda r: fmt(r["floor"], 1)),
        ("ratio", lambda r: fmt(r["ratio"], 2)), ("CPU ratio", lambda r: fmt(r["cpu_ratio"], 2)),
        ("from", "file")])


BLOCKS: dict[str, Callable[[Path], str]] = {"floors": floors}


def _pattern(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- generated: {name} -->\n)(.*?)(<!-- /generated: {name} -->)", re.DOTALL)


def rendered(text: str, results: Path = RESULTS) -> str:
    """``text`` with every generated block rewritten from ``results``; a block whose markers are
    missing is an error (the README would silently stop showing it)."""
    for name, render in BLOCKS.items():
        pattern = _pattern(name)
        if not pattern.search(text):
            raise ValueError(f"{README} has no block '{name}' (<!-- generated: {name} --> ... "
                             f"<!-- /generated: {name} -->)")
        body = render(results).rstrip("\n") + "\n"
        text = pattern.sub(lambda m: m.group(1) + body + m.group(3), text)
    return text


app = harness.cli(__doc__)


@app.command()
def main(check: bool = harness.typer.Option(False, help="only compare; exit 1 when a block is stale"),
         readme: Path = README, results: Path = RESULTS) -> None:
    text = readme.read_text(encoding="utf-8")
    new = rendered(text, results)
    if check:
        if new != text:
            log(f"{readme}: generated blocks differ from {results}; run `python -m benchmarks.readme`")
            raise SystemExit(1)
        return
    readme.write_text(new, encoding="utf-8")
    log(f"wrote {readme}")


if __name__ == "__main__":
    app()
