"""Quality: does BLUR keep more utility than the weighted sum at the same level of forgetting?

    python -m benchmarks.quality                        # the full sweep on the demo world (1 thread)
    python -m benchmarks.quality --smoke --out /tmp/q   # a minimal sweep, to check that it runs
    python -m benchmarks.quality --sweep probe          # the NPO follow-up (quality_probe)
    python -m benchmarks.quality --merge benchmarks/results/quality.json --merge benchmarks/results/quality_probe.json \\
        --stem quality_combined                         # both as one (no training)
    python -m benchmarks.quality --report-only [--stem quality_probe]   # rewrite the .md from its .json

For each forget loss, both combiners are swept over their balance parameter (BLUR's
``gamma``; the weighted sum's retain weight ``alpha`` with forget weight 1), the learning
rate, the number of steps and seeds, on the pipeline's demo world and demo request
(``params.yaml`` for everything not swept). Every unlearned model is scored by the
pipeline's evaluator. Writes ``benchmarks/results/quality.{json,md}`` and two Pareto plots,
and logs the same to MLflow (``benchmarks/results/mlflow/``).

The number of steps costs no extra training: one run of the longest step count is
snapshotted at each shorter one (exact with a constant learning rate; see
:func:`benchmarks.common.unlearn_with_snapshots`). The sweep stops starting new runs
when the next would end after ``budget_minutes``; what was skipped is listed.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from benchmarks import harness
from benchmarks.common import CACHE, Bench, demo_bench
from benchmarks.harness import REPO, RESULTS, fmt, log, markdown_table, mean_std
from benchmarks.pareto import at_least_strictly, comparison_rows, configurations, matched_comparison, pareto_figure
from benchmarks.sweep import (BALANCE_NAME, CONFIG_KEYS, DIAGNOSTICS, POINT_METRICS, SWEEPS, DEFAULT_SWEEPS, jobs_of,
                              merge_results, run_sweep)


@dataclass
class QualityConfig:
    """What the quality benchmark runs and where it writes."""

    sweeps: tuple[Sweep, ...] = DEFAULT_SWEEPS
    params: Path = REPO / "params.yaml"
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted params.yaml keys, e.g. unlearn.retain_loss
    budget_minutes: float = 45.0
    fq_levels: tuple[float, ...] = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75)
    headline_loss: str = "npo"  # the forget loss the targets are checked on
    target_fq: float = 0.05
    target_utility_ratio: float = 0.95
    max_forget_prob_ratio: float = 0.5  # "really forgets" (the gate's default): forget prob <= this x target's
    tie_tolerance: float = 0.005  # utility differences this small count as ties (seed noise; see the report)
    out_dir: Path = RESULTS
    stem: str = "quality"
    mlflow: bool = True
    threads: int = 1

    def jobs(self) -> list[Job]:
        return jobs_of(self.sweeps)


# --------------------------------------------------------------------------- analysis


def analyse(results: dict[str, Any], config: QualityConfig) -> dict[str, Any]:
    """Configurations (means over seeds), frontiers, the matched comparison and the targets."""
    configs = configurations(results["points"], CONFIG_KEYS, POINT_METRICS + DIAGNOSTICS)
    target = results["reference"]["target"]
    utility_bar = config.target_utility_ratio * target["model_utility"]
    losses = list(dict.fromkeys(p["forget_loss"] for p in results["points"]))
    matched = {}
    for loss in losses:
        blur = [c for c in configs if c["forget_loss"] == loss and c["combiner"] == "blur"]
        ws = [c for c in configs if c["forget_loss"] == loss and c["combiner"] == "weighted_sum"]
        matched[loss] = {
            "levels": [{"level": level, "blur": _best(blur, level), "weighted_sum": _best(ws, level)}
                       for level in config.fq_levels],
            "all_levels": comparison_rows(matched_comparison(blur, ws, tolerance=config.tie_tolerance)),
            # the same on a steadier axis: forget-answer probability (lower is more forgotten)
            "by_forget_prob": comparison_rows(matched_comparison(blur, ws, x="forget_prob", maximize_x=False,
                                                                 tolerance=config.tie_tolerance)),
        }
    head = [c for c in configs if c["forget_loss"] == config.headline_loss and c["combiner"] == "blur"]
    meeting = [c for c in head if (c["forget_quality"] or 0) >= config.target_fq
               and (c["model_utility"] or 0) >= utility_bar]
    forgetting = [c for c in meeting if c["forget_prob"] is not None
                  and c["forget_prob"] <= config.max_forget_prob_ratio * target["forget_prob"]]
    comparison = matched.get(config.headline_loss, {}).get("all_levels", [])
    losses_at = [r for r in comparison if not r["ours_wins"]]
    strict_losses = [r for r in comparison if not at_least_strictly(r)]
    seed_std = [c["model_utility_std"] for c in configs if c["forget_loss"] == config.headline_loss
                and c.get("model_utility_std") is not None and c["seeds"] > 1]
    targets = {
        "utility_bar": utility_bar,
        "blur_reaches_fq_and_utility": bool(meeting),
        "best_meeting": _brief(max(meeting, key=lambda c: c["model_utility"])) if meeting else None,
        "target_fq_already_met_by_target": (target["forget_quality"] or 0) >= config.target_fq,
        "blur_reaches_it_while_forgetting": bool(forgetting),
        "best_meeting_while_forgetting": _brief(max(forgetting, key=lambda c: c["model_utility"])) if forgetting else None,
        "blur_at_least_weighted_at_every_level": bool(comparison) and not losses_at,
        "blur_at_least_weighted_strictly": bool(comparison) and not strict_losses,
        "tie_tolerance": config.tie_tolerance,
        "median_seed_std_of_utility": sorted(seed_std)[len(seed_std) // 2] if seed_std else None,
        "levels_compared": len(comparison),
        "levels_where_blur_is_below": losses_at,
        "levels_where_blur_is_strictly_below": len(strict_losses),
    }
    return {"configurations": configs, "matched": matched, "targets": targets}


def _best(rows: Sequence[dict], level: float) -> dict | None:
    from benchmarks.pareto import best_at_level

    best = best_at_level(rows, level)
    return _brief(best) if best else None


def _brief(row: dict) -> dict:
    keep = CONFIG_KEYS + ("seeds", "forget_quality", "forget_quality_std", "model_utility", "model_utility_std",
                          "forget_prob", "retain_prob", "mean_cos", "mean_xi")
    return {k: row.get(k) for k in keep}


# --------------------------------------------------------------------------- reporting


def figures(results: dict[str, Any], out: Path, stem: str, config: QualityConfig) -> list[Path]:
    configs = results["analysis"]["configurations"]
    reference = results["reference"]
    panels = [(loss, [c for c in configs if c["forget_loss"] == loss]) for loss in dict.fromkeys(c["forget_loss"] for c in configs)]
    target_mu = reference["target"]["model_utility"]
    return [
        pareto_figure(panels, x="forget_quality", y="model_utility", path=out / f"{stem}_fq_vs_utility.png",
                      xlabel="forget quality (KS p-value, log)", ylabel="model utility", log_x=True,
                      references=reference, guides={"x": config.target_fq, "y": config.target_utility_ratio * target_mu},
                      title="Demo world: forget quality vs model utility (each point a configuration, mean over seeds)"),
        pareto_figure(panels, x="forget_prob", y="retain_prob", path=out / f"{stem}_forget_vs_retain_prob.png",
                      xlabel="forget-answer probability (lower is more forgotten)", ylabel="retain-answer probability",
                      maximize_x=False, references=reference,
                      title="Demo world: forget probability vs retain probability"),
    ]


def write_report(results: dict[str, Any], analysis: dict[str, Any], config: QualityConfig) -> list[Path]:
    """``<stem>.json`` (per-step logs go to MLflow only), the plots and ``<stem>.md`` rendered from the JSON."""
    runs = [{k: v for k, v in r.items() if k != "diagnostics"} for r in results["runs"]]
    return harness.write_report(results | {"runs": runs, "analysis": analysis}, config.out_dir, config.stem,
                                renderer(config.stem), lambda res, out: figures(res, out, config.stem, config))


def renderer(stem: str):
    """The write-up of ``<stem>.json``: its points analysed (pure arithmetic) with the default targets and levels."""
    config = QualityConfig(stem=stem)
    return lambda results: markdown(results, analyse(results, config), config)


def markdown(results: dict[str, Any], analysis: dict[str, Any], config: QualityConfig) -> str:
    ref, t = results["reference"], analysis["targets"]
    m = results["machine"]
    lines = [
        f"# Quality: BLUR vs weighted sum on the demo world ({config.stem})", "",
        f"Generated by `python -m benchmarks.quality`"
        + (f" ({results['merged_from']} runs merged with --merge; times are their sums)" if results.get("merged_from", 1) > 1 else "")
        + f". Machine: {m['cpu']}, {m['cores']} cores, "
        f"{m['torch_threads']} torch thread(s), CPU only; torch {m['torch']}, transformers {m['transformers']}, "
        f"Python {m['python']}. Wall time: {results['wall_seconds'] / 60:.1f} min "
        f"(setup {results['setup'].get('setup_seconds', 0):.0f} s, sweep {results['sweep_seconds'] / 60:.1f} min). "
        f"World: {results['world']['forget']} forget / {results['world']['retain']} retain / "
        f"{results['world']['holdout']} holdout records.", "",
        "Each configuration is the mean over its seeds; `±` is the standard deviation over seeds.", "",
        "## Reference models", "",
        markdown_table(["model", "forget quality", "model utility", "forget prob", "retain prob", "MIA AUC"],
                       [[name, r["forget_quality"], r["model_utility"], r["forget_prob"], r["retain_prob"],
                         r["mia_auc"]] for name, r in ref.items()]),
        "", "## Targets (headline forget loss: " + config.headline_loss + ")", "",
        f"- BLUR reaches forget quality >= {config.target_fq} with model utility >= "
        f"{config.target_utility_ratio} x target ({fmt(t['utility_bar'])}): "
        f"**{'met' if t['blur_reaches_fq_and_utility'] else 'NOT met'}**"
        + (f" (best: {_describe(t['best_meeting'])})" if t["best_meeting"] else ""),
        *([f"  - note: the target itself already has forget quality {fmt(ref['target']['forget_quality'])} >= "
           f"{config.target_fq}, so this bar alone says little; with the forget probability also at most "
           f"{config.max_forget_prob_ratio} x the target's (the gate's ratio): **"
           f"{'met' if t['blur_reaches_it_while_forgetting'] else 'NOT met'}**"
           + (f" (best: {_describe(t['best_meeting_while_forgetting'])})" if t["best_meeting_while_forgetting"] else "")]
          if t["target_fq_already_met_by_target"] else []),
        f"- At every matched forget quality ({t['levels_compared']} levels reached), BLUR's best utility >= the "
        f"weighted sum's, ties within {t['tie_tolerance']} counted as met: "
        f"**{'met' if t['blur_at_least_weighted_at_every_level'] else 'NOT met'}**; strictly (no tolerance) BLUR is "
        f"below at {t['levels_where_blur_is_strictly_below']} of {t['levels_compared']} levels. The median "
        f"standard deviation of utility over seeds is {fmt(t['median_seed_std_of_utility'])}"
        + (f" (below at {len(t['levels_where_blur_is_below'])} level(s): "
           + ", ".join(f"fq>={fmt(r['level'])}: {fmt(r['ours_y'])} vs {fmt(r['theirs_y'])}"
                       for r in t["levels_where_blur_is_below"][:8]) + ")"
           if t["levels_where_blur_is_below"] else ""),
        "", "## Matched forgetting: the best model utility each method reaches at forget quality >= level", "",
    ]
    for loss, block in analysis["matched"].items():
        lines += [f"### {loss}", "", markdown_table(
            ["forget quality >=", "BLUR utility", "BLUR config", "weighted-sum utility", "weighted-sum config"],
            [[fmt(row["level"]), mean_std(row["blur"], "model_utility"), _config(row["blur"]),
              mean_std(row["weighted_sum"], "model_utility"), _config(row["weighted_sum"])]
             for row in block["levels"]]), ""]
        wins = sum(r["ours_wins"] for r in block["all_levels"])
        strict = sum(at_least_strictly(r) for r in block["all_levels"])
        lines += [f"Over all {len(block['all_levels'])} forget-quality levels either method reaches, BLUR is at "
                  f"least as good at {strict} strictly and at {wins} within {config.tie_tolerance}.", ""]
        by_prob = block["by_forget_prob"]
        wins = sum(r["ours_wins"] for r in by_prob)
        strict = sum(at_least_strictly(r) for r in by_prob)
        reached = [r for r in by_prob if r["margin"] is not None]
        worst = min(reached, key=lambda r: r["margin"]) if reached else None
        lines += [f"Matched on forget probability instead (forget prob <= level, {len(by_prob)} levels): BLUR at "
                  f"least as good at {strict} strictly and at {wins} within {config.tie_tolerance}"
                  + (f"; largest shortfall {fmt(-worst['margin'])} at forget prob <= {fmt(worst['level'])}"
                     if worst and worst["margin"] < 0 else "") + ".", ""]
    lines += ["## Every configuration", "",
              "`balance` is BLUR's gamma or the weighted sum's alpha (retain weight; forget weight 1). "
              "`cos` is the mean over steps of cos(g_r, g_f); `xi` the mean coefficient on g_f (BLUR: "
              "gamma - <g_r, g_f>/‖g_f‖²; weighted sum: 1); `‖g_f‖/‖g_r‖` the mean gradient-norm ratio.", ""]
    rows = sorted(analysis["configurations"],
                  key=lambda c: (c["forget_loss"], c["combiner"], c["lr"], c["balance"], c["steps"]))
    lines.append(markdown_table(
        ["loss", "combiner", "balance", "lr", "steps", "seeds", "forget quality", "model utility", "forget prob",
         "retain prob", "cos", "xi", "‖g_f‖/‖g_r‖"],
        [[c["forget_loss"], c["combiner"], fmt(c["balance"], 2), f"{c['lr']:g}", c["steps"], c["seeds"],
          mean_std(c, "forget_quality"), mean_std(c, "model_utility"), fmt(c["forget_prob"]), fmt(c["retain_prob"]),
          fmt(c["mean_cos"], 2), fmt(c["mean_xi"], 3), fmt(c["mean_norm_ratio"], 1)] for c in rows]))
    if results["skipped"]:
        lines += ["", f"## Skipped for the time budget ({len(results['skipped'])} runs)", "",
                  *[f"- {name}" for name in results["skipped"]]]
    errors = [r for r in results["runs"] if r["error"]]
    if errors:
        lines += ["", "## Runs that diverged", "", *[f"- {r['name']}: {r['error']}" for r in errors]]
    return "\n".join(lines) + "\n"


def _describe(row: dict | None) -> str:
    if not row:
        return "–"
    return (f"{row['combiner']} {BALANCE_NAME[row['combiner']]}={row['balance']:g}, lr {row['lr']:g}, "
            f"{row['steps']} steps: forget quality {fmt(row['forget_quality'])}, utility {fmt(row['model_utility'])}")


def _config(row: dict | None) -> str:
    if not row:
        return "never reached"
    return (f"{BALANCE_NAME[row['combiner']]}={row['balance']:g}, lr {row['lr']:g}, {row['steps']} steps "
            f"(fq {fmt(row['forget_quality'])})")


def log_to_mlflow(results: dict[str, Any], analysis: dict[str, Any], config: QualityConfig, files: list[Path]) -> str:
    t = analysis["targets"]
    return harness.log_benchmark(
        config.out_dir, "benchmark-quality", run_name=config.stem,
        params={"sweeps": [asdict(s) for s in config.sweeps], "overrides": config.overrides,
                "threads": config.threads, **{f"machine.{k}": v for k, v in results["machine"].items()}},
        metrics={"wall_seconds": results["wall_seconds"], "runs": len(results["runs"]),
                 "skipped": len(results["skipped"]), "target_blur_reaches_fq_and_utility": float(t["blur_reaches_fq_and_utility"]),
                 "target_blur_at_least_weighted": float(t["blur_at_least_weighted_at_every_level"]),
                 **{f"{role}.{k}": v for role, r in results["reference"].items() for k, v in r.items()
                    if isinstance(v, (int, float))}},
        children=results["runs"], artifacts=files)


# --------------------------------------------------------------------------- entry point


def run(config: QualityConfig, bench: Bench | None = None) -> tuple[dict, dict, list[Path]]:
    """Set up (or take) the world, sweep, analyse, write the report; log to MLflow if asked."""
    started = time.perf_counter()
    harness.init_process(config.threads)
    if bench is None:
        from components.config import load_config

        bench = demo_bench(load_config(config.params).with_overrides(config.overrides), cache_root=CACHE)
    results = run_sweep(bench, config)
    results["wall_seconds"] = round(time.perf_counter() - started, 1)
    analysis = analyse(results, config)
    files = write_report(results, analysis, config)
    if config.mlflow:
        logging_started = time.perf_counter()
        log_to_mlflow(results, analysis, config, files)
        log(f"logged to MLflow ({Path(config.out_dir) / 'mlflow'}) in {time.perf_counter() - logging_started:.0f} s")
    return results, analysis, files


app = harness.cli(__doc__)


@app.command()
def main(smoke: bool = harness.typer.Option(False, "--smoke", help="a minimal sweep (one run of 2 steps per combiner)"),
         sweep: str = harness.typer.Option("default", help="which grid: " + ", ".join(SWEEPS)),
         out: Path = harness.OUT, stem: str = harness.typer.Option(None, help="file name stem (default quality[_SWEEP])"),
         budget_minutes: float = 45.0,
         set_: list[str] = harness.typer.Option([], "--set", help="override a params.yaml key, e.g. unlearn.retain_loss=kl"),
         merge: list[Path] = harness.typer.Option([], help="merge these results JSON into --stem (no training)"),
         no_mlflow: bool = harness.NO_MLFLOW, report_only: bool = harness.REPORT_ONLY) -> None:
    import yaml

    sweep = "smoke" if smoke else sweep
    stem = stem or ("quality" if sweep == "default" else f"quality_{sweep}")
    if report_only:
        harness.report_only(out, stem, renderer(stem))
        return
    if merge:
        results = merge_results([harness.read_json(p) for p in merge])
        config = QualityConfig(out_dir=out, stem=stem, mlflow=False)
        for path in write_report(results, analyse(results, config), config):
            log(f"  wrote {path}")
        return
    overrides = {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in set_)}
    config = QualityConfig(sweeps=SWEEPS[sweep], overrides=overrides, budget_minutes=budget_minutes, out_dir=out,
                           stem=stem, mlflow=not no_mlflow)
    results, analysis, files = run(config)
    t = analysis["targets"]
    log(f"done in {results['wall_seconds'] / 60:.1f} min ({len(results['runs'])} runs, {len(results['skipped'])} skipped); "
        f"targets: fq/utility {'met' if t['blur_reaches_fq_and_utility'] else 'NOT met'}, matched "
        f"{'met' if t['blur_at_least_weighted_at_every_level'] else 'NOT met'}")


if __name__ == "__main__":
    app()
