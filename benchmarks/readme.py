"""Writes the README's generated blocks (:data:`BLOCKS`) from the results files (``--check``: only compare)."""

import json
import re
from pathlib import Path
from typing import Callable

from benchmarks import harness
from benchmarks.harness import BENCH_DIR, RESULTS, log, read_json, table

app = harness.cli(__doc__)  # the command: main, at the end
README = BENCH_DIR / "README.md"


def floors(results: Path = RESULTS) -> str:
    """Evaluate's distance from its floor: one row per evaluate run of the evaluation-reuse write-ups."""
    rows = [run["evaluate"]["floor"] | {
        "world": profile, "run": f"{run['run']} `dvc repro`", "file": f"`{stem}.json`",
        "scored": ", ".join(role for role, c in run["evaluate"]["cache"].items() if c["misses"]) or "none"}
        for stem, profile in (("eval_reuse", "SmolLM2 profile"), ("eval_reuse_demo", "demo world"))
        for run in (read_json(results / f"{stem}.json") or {}).get("runs", [])]
    return table(rows, [("world", "world"), ("run", "run"), ("models scored", "scored"),
                        ("evaluate s", "evaluate_seconds", 1), ("floor s", "floor_seconds", 1), ("ratio", "ratio", 2),
                        ("CPU ratio", "cpu_ratio", 2), ("from", "file")])


def step_cost(results: Path = RESULTS) -> str:
    """Step-time ratios (medians over rounds) and peak extra memory over the parameter bytes, per model."""
    models = json.loads((results / "step_cost.json").read_text(encoding="utf-8"))["models"]  # missing: raises
    rows = [model | {"model": name} for name, model in models.items()]
    return table(rows, [("model", "model"), ("parameters", lambda m: f"{m['n_params'] / 1e6:.1f}M"),
                        ("BLUR / engine weighted sum", ("ratios", "blur_over_weighted_time", "median"), 2),
                        ("BLUR / fused weighted sum", ("ratios", "blur_over_fused_weighted_time", "median"), 2),
                        ("naive BLUR / BLUR", ("ratios", "naive_over_blur_time", "median"), 2),
                        ("BLUR extra memory / params", ("memory", "blur_extra_bytes_over_param_bytes"), 2),
                        ("naive extra memory / params", ("memory", "naive_extra_bytes_over_param_bytes"), 2),
                        ("naive vs engine weights, max abs diff", "naive_matches_blur_max_abs_diff", 1)])


def scaling(results: Path = RESULTS) -> str:
    """Step and evaluation time against the demo model, by model size and by forget-set size."""
    found = json.loads((results / "scaling.json").read_text(encoding="utf-8"))
    rows = []
    for key in ("by_model_size", "by_forget_size"):
        base = found[key][0]
        for r in found[key][1:]:
            size = f" ({r['n_params'] / 1e6:.1f}M parameters)" if key == "by_model_size" else ""
            rows.append({"what": f"{r['model']}{size}, {r['forget_records']} forget records",
                         "params": r["n_params"] / base["n_params"], "step": r["blur_step_ms"] / base["blur_step_ms"],
                         "eval": r["eval_seconds_one_model"] / base["eval_seconds_one_model"],
                         "eval_s": r["eval_seconds_one_model"]})
    return table(rows, [("model, forget records", "what"),
                        ("x parameters", "params", 1), ("x BLUR step time", "step", 1),
                        ("x evaluation time", "eval", 1), ("evaluation s", "eval_s", 1)])


BLOCKS: dict[str, Callable[[Path], str]] = {block.__name__: block for block in (floors, step_cost, scaling)}


def rendered(text: str, results: Path = RESULTS) -> str:
    """``text`` with every generated block rewritten from ``results`` (missing markers: an error)."""
    for name, render in BLOCKS.items():
        pattern = re.compile(rf"(<!-- generated: {name} -->\n)(.*?)(<!-- /generated: {name} -->)", re.DOTALL)
        if not pattern.search(text):
            raise ValueError(f"{README} has no block '{name}' (<!-- generated: {name} --> ... "
                             f"<!-- /generated: {name} -->)")
        text = pattern.sub(lambda m: m.group(1) + render(results).rstrip("\n") + "\n" + m.group(3), text)
    return text


@harness.command(app, __name__)
def main(check: bool = harness.typer.Option(False, help="only compare; exit 1 when a block is stale"),
         readme: Path = README, results: Path = RESULTS) -> None:
    text = readme.read_text(encoding="utf-8")
    new = rendered(text, results)
    if check and new != text:
        log(f"{readme}: generated blocks differ from {results}; run `python -m benchmarks.readme`")
        raise SystemExit(1)
    if not check:
        readme.write_text(new, encoding="utf-8")
        log(f"wrote {readme}")
