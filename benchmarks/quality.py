"""Quality: does BLUR keep more utility than the weighted sum at the same level of forgetting?

On the demo world (``--smoke``: a minimal sweep; ``--sweep probe``: the NPO follow-up; ``--merge A --merge B
--stem S``: results as one, no training). How it works: ``benchmarks/README.md``, appendix, ``benchmarks.quality``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from benchmarks import harness
from benchmarks.common import Bench, demo_bench
from benchmarks.harness import REPO, RESULTS, fmt, log, mean_std, table
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
    return harness.write_sweep(results, analysis, config.out_dir, config.stem, renderer(config.stem),
                               lambda res, out: figures(res, out, config.stem, config))


def renderer(stem: str):
    """The write-up of ``<stem>.json``: its points analysed (pure arithmetic) with the default targets and levels."""
    config = QualityConfig(stem=stem)
    return lambda results: markdown(results, analyse(results, config), config)


REFERENCE = [("model", "model"), ("forget quality", "forget_quality"), ("model utility", "model_utility"),
             ("forget prob", "forget_prob"), ("retain prob", "retain_prob"), ("MIA AUC", "mia_auc")]
LEVELS = [("forget quality >=", "level"), ("BLUR utility", lambda r: mean_std(r["blur"], "model_utility")),
          ("BLUR config", lambda r: _config(r["blur"])),
          ("weighted-sum utility", lambda r: mean_std(r["weighted_sum"], "model_utility")),
          ("weighted-sum config", lambda r: _config(r["weighted_sum"]))]
CONFIGURATIONS = [
    ("loss", "forget_loss"), ("combiner", "combiner"), ("balance", "balance", 2),
    ("lr", lambda c: f"{c['lr']:g}"), ("steps", "steps"), ("seeds", "seeds"),
    ("forget quality", lambda c: mean_std(c, "forget_quality")), ("model utility", lambda c: mean_std(c, "model_utility")),
    ("forget prob", "forget_prob"), ("retain prob", "retain_prob"), ("cos", "mean_cos", 2),
    ("xi", "mean_xi", 3), ("‖g_f‖/‖g_r‖", "mean_norm_ratio", 1)]


def markdown(results: dict[str, Any], analysis: dict[str, Any], config: QualityConfig) -> str:
    """The write-up: prose from ``templates/quality.md``, every table rendered from ``results``."""
    parts, ref, t = harness.template("quality"), results["reference"], analysis["targets"]
    best = lambda row: f" (best: {_describe(row)})" if row else ""  # noqa: E731
    note = "" if not t["target_fq_already_met_by_target"] else parts["note"].format(
        fq=fmt(ref["target"]["forget_quality"]), c=config, met=harness.met(t["blur_reaches_it_while_forgetting"]),
        best=best(t["best_meeting_while_forgetting"]))
    below = t["levels_where_blur_is_below"]
    losses = ""
    for loss, block in analysis["matched"].items():
        by_prob = block["by_forget_prob"]
        reached = [r for r in by_prob if r["margin"] is not None]
        worst = min(reached, key=lambda r: r["margin"]) if reached else None
        losses += parts["loss"].format(
            loss=loss, table=table(block["levels"], LEVELS), n_all=len(block["all_levels"]), c=config,
            strict=sum(at_least_strictly(r) for r in block["all_levels"]), wins=sum(r["ours_wins"] for r in block["all_levels"]),
            n_prob=len(by_prob), strict_prob=sum(at_least_strictly(r) for r in by_prob),
            wins_prob=sum(r["ours_wins"] for r in by_prob),
            shortfall=f"; largest shortfall {fmt(-worst['margin'])} at forget prob <= {fmt(worst['level'])}"
            if worst and worst["margin"] < 0 else "")
    rows = sorted(analysis["configurations"], key=lambda c: (c["forget_loss"], c["combiner"], c["lr"], c["balance"], c["steps"]))
    return parts["main"].format(
        c=config, m=results["machine"], w=results["world"], t=t, wall=results["wall_seconds"] / 60,
        merged=f" ({results['merged_from']} runs merged with --merge; times are their sums)"
        if results.get("merged_from", 1) > 1 else "",
        setup=results["setup"].get("setup_seconds", 0), sweep=results["sweep_seconds"] / 60,
        reference=table([r | {"model": name} for name, r in ref.items()], REFERENCE),
        utility_bar=fmt(t["utility_bar"]), met_fq=harness.met(t["blur_reaches_fq_and_utility"]), best=best(t["best_meeting"]),
        note=note, met_matched=harness.met(t["blur_at_least_weighted_at_every_level"]),
        median_std=fmt(t["median_seed_std_of_utility"]),
        below=f" (below at {len(below)} level(s): " + ", ".join(
            f"fq>={fmt(r['level'])}: {fmt(r['ours_y'])} vs {fmt(r['theirs_y'])}" for r in below[:8]) + ")" if below else "",
        losses=losses, configurations=table(rows, CONFIGURATIONS),
        tail=harness.tail(results, "Skipped for the time budget")).rstrip("\n") + "\n"


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
                 **harness.reference_metrics(results)},
        children=results["runs"], artifacts=files)


def run(config: QualityConfig, bench: Bench | None = None) -> tuple[dict, dict, list[Path]]:
    """Set up (or take) the world, sweep, analyse, write the report; log to MLflow if asked."""
    from components.config import load_config

    def sweep() -> dict:
        return run_sweep(bench or demo_bench(load_config(config.params).with_overrides(config.overrides)), config)

    return harness.run_study(config, sweep, analyse, write_report, log_to_mlflow)


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
        return harness.report_only(out, stem, renderer(stem))
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
        f"targets: fq/utility {harness.met(t['blur_reaches_fq_and_utility'])}, "
        f"matched {harness.met(t['blur_at_least_weighted_at_every_level'])}")


if __name__ == "__main__":
    app()
