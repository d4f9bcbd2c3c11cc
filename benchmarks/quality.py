"""Quality: does BLUR keep more utility than the weighted sum at the same level of forgetting?

    python -m benchmarks.quality                 # the full sweep on the demo world (27 min here, 1 thread)
    python -m benchmarks.quality --smoke --out /tmp/q   # a minimal sweep, to check that it runs

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

import argparse
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from benchmarks.common import (
    CACHE,
    REPO,
    RESULTS,
    Bench,
    CandidateEvaluator,
    demo_bench,
    diagnostics_summary,
    init_process,
    load_snapshot,
    log,
    machine,
    method_config,
    unlearn_with_snapshots,
    write_json,
)
from benchmarks.pareto import (at_least_strictly, comparison_rows, configurations, fmt, markdown_table,
                              matched_comparison, mean_std, pareto_figure)

POINT_METRICS = ("forget_quality", "model_utility", "forget_prob", "retain_prob", "forget_rouge", "retain_rouge",
                 "forget_truth_ratio", "retain_truth_ratio", "mia_auc", "privleak", "extraction_strength")
DIAGNOSTICS = ("mean_cos", "mean_xi", "mean_norm_ratio")
CONFIG_KEYS = ("forget_loss", "combiner", "balance", "lr", "steps")
BALANCE_NAME = {"blur": "gamma", "weighted_sum": "alpha"}


@dataclass(frozen=True)
class Sweep:
    """The grid of one forget loss: both combiners, their balance values, learning rates, seeds, steps."""

    forget_loss: str
    blur_gammas: tuple[float, ...]
    ws_alphas: tuple[float, ...]
    lrs: tuple[float, ...]
    seeds: tuple[int, ...]
    eval_steps: tuple[int, ...]

    def jobs(self, seed: int) -> list["Job"]:
        balances = [("blur", g) for g in self.blur_gammas] + [("weighted_sum", a) for a in self.ws_alphas]
        return [Job(self.forget_loss, combiner, balance, lr, seed, self.eval_steps)
                for lr in self.lrs for combiner, balance in balances]


@dataclass(frozen=True)
class Job:
    """One unlearning run, evaluated after each of ``eval_steps`` steps."""

    forget_loss: str
    combiner: str
    balance: float
    lr: float
    seed: int
    eval_steps: tuple[int, ...]

    def overrides(self) -> dict[str, Any]:
        """BLUR: ``gamma`` = balance. Weighted sum: forget weight 1, retain weight ``alpha`` = balance."""
        method = {"forget_loss": self.forget_loss, "combiner": self.combiner, "lr": self.lr}
        if self.combiner == "blur":
            return method | {"gamma": self.balance}
        return method | {"gamma": 1.0, "alpha": self.balance}

    @property
    def name(self) -> str:
        return f"{self.combiner}/{self.forget_loss} {BALANCE_NAME[self.combiner]}={self.balance:g} lr={self.lr:g} seed={self.seed}"


BALANCED = dict(blur_gammas=(0.01, 0.03, 0.1, 0.3, 1.0), ws_alphas=(1.0, 3.0, 10.0, 30.0, 100.0))
COARSE = dict(blur_gammas=(0.01, 0.1, 1.0), ws_alphas=(1.0, 10.0, 100.0))
DEFAULT_SWEEPS = (  # sized to finish within 45 minutes on 2 shared cores with one torch thread
    Sweep("npo", **BALANCED, lrs=(1e-3,), seeds=(0, 1, 2), eval_steps=(20, 40, 80)),
    Sweep("npo", **BALANCED, lrs=(3e-3,), seeds=(0, 1), eval_steps=(20, 40)),
    *(Sweep(loss, **COARSE, lrs=(1e-3,), seeds=(0, 1), eval_steps=(40, 80)) for loss in ("ga", "simnpo", "idk", "rmu")),
)
SMOKE_SWEEPS = (Sweep("npo", blur_gammas=(0.1,), ws_alphas=(10.0,), lrs=(1e-3,), seeds=(0,), eval_steps=(1, 2)),)
# A follow-up of the NPO grid: one step further towards gentler forgetting for both combiners
# (BLUR's forget coefficient is gamma plus the projection term, so gamma=0.01 forgets more than
# alpha=100), and longer runs. Merge with the main results: --report-only quality.json quality_probe.json
PROBE_SWEEPS = (Sweep("npo", blur_gammas=(0.003, 0.005), ws_alphas=(200.0, 300.0), lrs=(1e-3,), seeds=(0, 1, 2),
                      eval_steps=(40, 80, 120)),)
SWEEPS = {"default": DEFAULT_SWEEPS, "probe": PROBE_SWEEPS, "smoke": SMOKE_SWEEPS}


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
        """Seed-major order: every configuration's first seed before any second seed, so a
        budget cut drops repeats, not configurations."""
        seeds = sorted({s for sweep in self.sweeps for s in sweep.seeds})
        return [job for seed in seeds for sweep in self.sweeps if seed in sweep.seeds for job in sweep.jobs(seed)]


# --------------------------------------------------------------------------- running


def run_sweep(bench: Bench, config: QualityConfig, metrics_kept: Sequence[str] = POINT_METRICS) -> dict[str, Any]:
    """Every job of the sweep, unlearned and evaluated; the raw results (one point per model).

    ``metrics_kept`` are the evaluator's keys stored per point (all of them go to MLflow).
    """
    started = time.perf_counter()
    evaluator = CandidateEvaluator(bench)
    reference = evaluator.reference()
    jobs = config.jobs()
    points: list[dict] = []
    runs: list[dict] = []
    skipped: list[str] = []
    durations: list[float] = []
    for index, job in enumerate(jobs, 1):
        elapsed = time.perf_counter() - started + bench.info.get("setup_seconds", 0.0)
        estimate = max(durations[-10:]) if durations else 0.0
        if elapsed + estimate > 60 * config.budget_minutes:
            skipped.append(job.name)
            continue
        job_started = time.perf_counter()
        run = unlearn_with_snapshots(bench, method_config(bench.config, **job.overrides()), job.seed, job.eval_steps)
        by_step = {}
        for steps, state in sorted(run.snapshots.items()):
            eval_started = time.perf_counter()
            metrics = evaluator(load_snapshot(bench, state))
            point = asdict(job) | {"steps": steps, "eval_steps": list(job.eval_steps)}
            point |= {k: metrics.get(k) for k in metrics_kept} | diagnostics_summary(run.diagnostics, steps)
            point |= {"unlearn_seconds": round(run.seconds * steps / max(job.eval_steps), 2),
                      "eval_seconds": round(time.perf_counter() - eval_started, 2)}
            points.append(point)
            by_step[steps] = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        runs.append({"name": job.name, "params": asdict(job) | {"eval_steps": list(job.eval_steps)},
                     "metrics_by_step": by_step, "diagnostics": run.diagnostics, "error": run.error,
                     "seconds": round(time.perf_counter() - job_started, 1)})
        durations.append(time.perf_counter() - job_started)
        last = points[-1] if by_step else {}
        log(f"[{index}/{len(jobs)}] {job.name}: {durations[-1]:.1f}s  "
            + (" ".join(f"{k} {fmt(last.get(k))}" for k in (*metrics_kept[:2], "mean_cos", "mean_xi")) if last else "")
            + (f"  [{run.error}]" if run.error else ""))
    return {
        "benchmark": "quality",
        "config": _jsonable(asdict(config)),
        "machine": machine(),
        "setup": bench.info,
        "world": {"forget": len(bench.forget), "retain": len(bench.retain), "holdout": len(bench.holdout)},
        "reference": reference,
        "points": points,
        "runs": runs,
        "skipped": skipped,
        "sweep_seconds": round(time.perf_counter() - started, 1),
    }


def merge_results(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Several runs of the benchmark on the same world as one (their reference models must agree)."""
    merged = dict(parts[0])
    for part in parts[1:]:
        if part["reference"] != merged["reference"] or part.get("setup", {}).get("cache") != merged.get("setup", {}).get("cache"):
            raise ValueError("these results come from different target/oracle models; they cannot be merged")
        for key in ("points", "runs", "skipped"):
            merged[key] = merged[key] + part[key]
        for key in ("wall_seconds", "sweep_seconds"):
            merged[key] = merged[key] + part[key]
    merged["merged_from"] = len(parts)
    return merged


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


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


def write_report(results: dict[str, Any], analysis: dict[str, Any], config: QualityConfig) -> list[Path]:
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    configs = analysis["configurations"]
    losses = list(dict.fromkeys(c["forget_loss"] for c in configs))
    reference = results["reference"]
    panels = [(loss, [c for c in configs if c["forget_loss"] == loss]) for loss in losses]
    target_mu = reference["target"]["model_utility"]
    files = [
        pareto_figure(panels, x="forget_quality", y="model_utility", path=out / f"{config.stem}_fq_vs_utility.png",
                      xlabel="forget quality (KS p-value, log)", ylabel="model utility", log_x=True,
                      references=reference, guides={"x": config.target_fq, "y": config.target_utility_ratio * target_mu},
                      title="Demo world: forget quality vs model utility (each point a configuration, mean over seeds)"),
        pareto_figure(panels, x="forget_prob", y="retain_prob", path=out / f"{config.stem}_forget_vs_retain_prob.png",
                      xlabel="forget-answer probability (lower is more forgotten)", ylabel="retain-answer probability",
                      maximize_x=False, references=reference,
                      title="Demo world: forget probability vs retain probability"),
    ]
    runs = [{k: v for k, v in r.items() if k != "diagnostics"} for r in results["runs"]]  # per-step logs: MLflow
    files.append(write_json(out / f"{config.stem}.json", results | {"runs": runs, "analysis": analysis}))
    path = out / f"{config.stem}.md"
    path.write_text(markdown(results, analysis, config), encoding="utf-8")
    files.append(path)
    return files


def markdown(results: dict[str, Any], analysis: dict[str, Any], config: QualityConfig) -> str:
    ref, t = results["reference"], analysis["targets"]
    m = results["machine"]
    lines = [
        f"# Quality: BLUR vs weighted sum on the demo world ({config.stem})", "",
        f"Generated by `python -m benchmarks.quality`"
        + (f" ({results['merged_from']} runs merged with --report-only; times are their sums)" if results.get("merged_from") else "")
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
    from benchmarks.tracking import benchmark_store, log_benchmark

    t = analysis["targets"]
    return log_benchmark(
        benchmark_store(Path(config.out_dir) / "mlflow"), "benchmark-quality", run_name=config.stem,
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
    init_process(config.threads)
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


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a minimal sweep (one run of 2 steps per combiner)")
    parser.add_argument("--sweep", choices=sorted(SWEEPS), default=None,
                        help="which grid: default, probe (the NPO follow-up), smoke (= --smoke)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where results go (default benchmarks/results)")
    parser.add_argument("--stem", default=None, help="file name stem of the results (default quality / quality_smoke)")
    parser.add_argument("--budget-minutes", type=float, default=45.0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a params.yaml key for every run, e.g. --set unlearn.retain_loss=kl")
    parser.add_argument("--no-mlflow", action="store_true")
    parser.add_argument("--report-only", type=Path, nargs="+", metavar="JSON",
                        help="re-analyse the results JSON of earlier runs (several are merged) and rewrite the "
                             "report under --stem (no training)")
    args = parser.parse_args(argv)
    import yaml

    if args.report_only:
        results = merge_results([json.loads(p.read_text(encoding="utf-8")) for p in args.report_only])
        config = QualityConfig(out_dir=args.out, stem=args.stem or args.report_only[0].stem, mlflow=False)
        for path in write_report(results, analyse(results, config), config):
            log(f"  wrote {path}")
        return

    overrides = {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in args.set)}
    sweep = "smoke" if args.smoke else (args.sweep or "default")
    config = QualityConfig(sweeps=SWEEPS[sweep], overrides=overrides, budget_minutes=args.budget_minutes,
                           out_dir=args.out, stem=args.stem or ("quality" if sweep == "default" else f"quality_{sweep}"),
                           mlflow=not args.no_mlflow)
    results, analysis, files = run(config)
    t = analysis["targets"]
    log(f"done in {results['wall_seconds'] / 60:.1f} min ({len(results['runs'])} runs, {len(results['skipped'])} skipped); "
        f"targets: fq/utility {'met' if t['blur_reaches_fq_and_utility'] else 'NOT met'}, matched "
        f"{'met' if t['blur_at_least_weighted_at_every_level'] else 'NOT met'}")
    for path in files:
        log(f"  wrote {path}")


if __name__ == "__main__":
    main()
