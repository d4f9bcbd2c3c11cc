"""Real text: BLUR against the weighted sum on a small MUSE-News subset (BBC articles nobody here wrote).

About 15-20 min with one thread; ``--smoke --out DIR`` for a minimal run, ``--data DIR`` for the data elsewhere
than ../shared/data/muse_news. How it works: ``benchmarks/README.md``, appendix, ``benchmarks.muse_news``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks import harness
from benchmarks.harness import RESULTS, fmt, jsonable, log, mean_std, table
from benchmarks.muse_subset import MUSE_DATA, MuseSubset, muse_bench
from benchmarks.pareto import at_least_strictly, comparison_rows, configurations, matched_comparison, pareto_figure
from benchmarks.sweep import BALANCE_NAME, COARSE, CONFIG_KEYS, DIAGNOSTICS, Sweep, jobs_of, run_sweep
from components.data.records import TextRecord
MUSE_METRICS = ("forget_verbmem", "retain_knowmem", "forget_knowmem", "privleak", "forget_prob", "retain_prob",
                "model_utility", "mia_auc", "retain_verbmem")
DEFAULT_SWEEPS = tuple(Sweep(loss, **COARSE, lrs=(1e-3,), seeds=(0, 1), eval_steps=(20, 40, 80))
                       for loss in ("npo", "ga"))
SMOKE_SWEEPS = (Sweep("npo", blur_gammas=(0.1,), ws_alphas=(10.0,), lrs=(1e-3,), seeds=(0,), eval_steps=(1, 2)),)


@dataclass
class MuseConfig(MuseSubset):
    """The MUSE-News subset, the model recipe and the sweep."""

    sweeps: tuple[Sweep, ...] = DEFAULT_SWEEPS
    verbmem_levels: tuple[float, ...] = (0.0, 0.1, 0.25, 0.5)  # fractions of the way from the oracle to the target
    budget_minutes: float = 40.0
    out_dir: Path = RESULTS
    stem: str = "muse_news"
    mlflow: bool = True
    threads: int = 1

    def jobs(self) -> list:
        return jobs_of(self.sweeps)


# --------------------------------------------------------------------------- analysis and report


def analyse(results: dict[str, Any], config: MuseConfig) -> dict[str, Any]:
    configs = configurations(results["points"], CONFIG_KEYS, MUSE_METRICS + DIAGNOSTICS)
    target, oracle = results["reference"]["target"], results["reference"]["oracle"]
    levels = [oracle["forget_verbmem"] + f * (target["forget_verbmem"] - oracle["forget_verbmem"])
              for f in config.verbmem_levels]
    matched = {}
    for loss in dict.fromkeys(c["forget_loss"] for c in configs):
        blur = [c for c in configs if c["forget_loss"] == loss and c["combiner"] == "blur"]
        ws = [c for c in configs if c["forget_loss"] == loss and c["combiner"] == "weighted_sum"]
        compare = dict(x="forget_verbmem", y="retain_knowmem", maximize_x=False)
        all_levels = matched_comparison(blur, ws, **compare)
        matched[loss] = {
            "levels": [{"level": level, "fraction": f,
                        "blur": _pick(blur, level, compare), "weighted_sum": _pick(ws, level, compare)}
                       for f, level in zip(config.verbmem_levels, levels)],
            "all_levels": comparison_rows(all_levels),
            # retain knowmem saturates at 1.0 on this subset; retain probability is a steadier utility
            "by_retain_prob": comparison_rows(matched_comparison(blur, ws, x="forget_verbmem", y="retain_prob",
                                                                 maximize_x=False)),
        }
    return {"configurations": configs, "matched": matched}


def _pick(rows, level, compare) -> dict | None:
    from benchmarks.pareto import best_at_level

    best = best_at_level(rows, level, **compare)
    keep = CONFIG_KEYS + ("seeds",) + MUSE_METRICS
    return {k: best.get(k) for k in keep} | {"retain_knowmem_std": best.get("retain_knowmem_std")} if best else None


def figures(results: dict[str, Any], out: Path, stem: str) -> list[Path]:
    configs = results["analysis"]["configurations"]
    panels = [(loss, [c for c in configs if c["forget_loss"] == loss]) for loss in dict.fromkeys(c["forget_loss"] for c in configs)]
    reference = results["reference"]
    return [
        pareto_figure(panels, x="forget_verbmem", y="retain_knowmem", maximize_x=False, references=reference,
                      path=out / f"{stem}_verbmem_vs_knowmem.png", xlabel="forget verbmem (lower is more forgotten)",
                      ylabel="retain knowmem (utility)", title="MUSE-News subset: verbatim memorisation vs retained knowledge"),
        pareto_figure(panels, x="forget_knowmem", y="retain_knowmem", maximize_x=False, references=reference,
                      path=out / f"{stem}_knowmem.png", xlabel="forget knowmem (lower is more forgotten)",
                      ylabel="retain knowmem (utility)", title="MUSE-News subset: forgotten vs retained knowledge"),
    ]


def write_report(results: dict[str, Any], analysis: dict[str, Any], config: MuseConfig) -> list[Path]:
    return harness.write_sweep(results, analysis, config.out_dir, config.stem, renderer(config.stem),
                               lambda res, out: figures(res, out, config.stem))


def renderer(stem: str):
    config = MuseConfig(stem=stem)
    return lambda results: markdown(results, analyse(results, config), config)


REFERENCE = [("model", "model"), *((h, k) for h, k in (
    ("forget verbmem", "forget_verbmem"), ("forget knowmem", "forget_knowmem"), ("retain knowmem", "retain_knowmem"),
    ("privleak", "privleak"), ("forget prob", "forget_prob"), ("retain prob", "retain_prob"), ("MIA AUC", "mia_auc")))]
LEVELS = [("verbmem <=", "level"), ("fraction", "fraction", 2),
          ("BLUR retain knowmem", lambda r: mean_std(r["blur"], "retain_knowmem")), ("BLUR config", lambda r: _config(r["blur"])),
          ("weighted-sum retain knowmem", lambda r: mean_std(r["weighted_sum"], "retain_knowmem")),
          ("weighted-sum config", lambda r: _config(r["weighted_sum"]))]
CONFIGURATIONS = [
    ("loss", "forget_loss"), ("combiner", "combiner"), ("balance", "balance", 2),
    ("lr", lambda c: f"{c['lr']:g}"), ("steps", "steps"), ("seeds", "seeds"),
    *((h, lambda c, k=k: mean_std(c, k)) for h, k in (("forget verbmem", "forget_verbmem"),
                                                     ("forget knowmem", "forget_knowmem"), ("retain knowmem", "retain_knowmem"))),
    ("privleak", "privleak", 1), ("forget prob", "forget_prob"), ("retain prob", "retain_prob"),
    ("cos", "mean_cos", 2), ("xi", "mean_xi", 3)]


def markdown(results: dict[str, Any], analysis: dict[str, Any], config: MuseConfig) -> str:
    """The write-up: prose from ``templates/muse_news.md``, every table rendered from ``results``."""
    parts, world = harness.template("muse_news"), results["world"]
    losses = ""
    for loss, block in analysis["matched"].items():
        by_prob = block["by_retain_prob"]
        shown = [r for r in by_prob if r["level"] in {x["level"] for x in block["all_levels"]}]
        losses += parts["loss"].format(
            loss=loss, table=table(block["levels"], LEVELS), n_all=len(block["all_levels"]),
            strict=sum(at_least_strictly(r) for r in block["all_levels"]), n_prob=len(by_prob),
            strict_prob=sum(at_least_strictly(r) for r in by_prob),
            shown="; ".join(f"verbmem <= {fmt(r['level'])}: {fmt(r['ours_y'])} vs {fmt(r['theirs_y'])}" for r in shown[:8]))
    rows = sorted(analysis["configurations"], key=lambda c: (c["forget_loss"], c["combiner"], c["lr"], c["balance"], c["steps"]))
    return parts["main"].format(
        stem=config.stem, m=results["machine"], w=world, c=config, wall=results["wall_seconds"] / 60,
        train=results["setup"].get("finetune", {}).get("seconds", 0), forget_qa=world["forget"] - world["forget_text"],
        target=results["setup"]["finetune"]["target"],
        reference=table([r | {"model": name} for name, r in results["reference"].items()], REFERENCE),
        losses=losses, configurations=table(rows, CONFIGURATIONS),
        tail=harness.tail(results, "Skipped for the time budget")).rstrip("\n") + "\n"


def _config(row: dict | None) -> str:
    if not row:
        return "never reached"
    return (f"{BALANCE_NAME[row['combiner']]}={row['balance']:g}, {row['steps']} steps "
            f"(verbmem {fmt(row['forget_verbmem'])}, privleak {fmt(row['privleak'], 1)})")


# --------------------------------------------------------------------------- entry point


def run(config: MuseConfig) -> tuple[dict, dict, list[Path]]:
    def sweep() -> dict:
        bench = muse_bench(config)
        trained = bench.info["finetune"]["target"]
        log(f"MUSE-News subset: {len(bench.forget)} forget / {len(bench.retain)} retain / {len(bench.holdout)} holdout "
            f"records; target {trained['epochs']} epochs, p {trained['mean_answer_prob']:.2f}")
        results = run_sweep(bench, config, metrics_kept=MUSE_METRICS)
        results["world"]["forget_text"] = sum(isinstance(r, TextRecord) for r in bench.forget)
        return results | {"benchmark": "muse_news", "config": jsonable(asdict(config))}

    def mlflow(results: dict, analysis: dict, config: MuseConfig, files: list[Path]) -> str:
        subset = {k: getattr(config, k) for k in ("n_forget_articles", "n_retain_articles", "n_holdout_articles",
                                                   "chunk_words")}
        return harness.log_benchmark(
            config.out_dir, "benchmark-muse-news", run_name=config.stem,
            params={"subset": subset, "sweeps": [asdict(s) for s in config.sweeps], "overrides": config.overrides},
            metrics={"wall_seconds": results["wall_seconds"], **harness.reference_metrics(results)},
            children=results["runs"], artifacts=files)

    return harness.run_study(config, sweep, analyse, write_report, mlflow)


app = harness.cli(__doc__)


@app.command()
def main(smoke: bool = harness.typer.Option(False, "--smoke"),
         data: Path = harness.typer.Option(MUSE_DATA, help="MUSE-News folder (muse_bench's data/bbc layout)"),
         out: Path = harness.OUT, stem: str = harness.typer.Option(None, help="default muse_news[_smoke]"),
         no_mlflow: bool = harness.NO_MLFLOW, report_only: bool = harness.REPORT_ONLY) -> None:
    stem = stem or ("muse_news_smoke" if smoke else "muse_news")
    if report_only:
        return harness.report_only(out, stem, renderer(stem))
    config = MuseConfig(data=data, sweeps=SMOKE_SWEEPS if smoke else DEFAULT_SWEEPS, out_dir=out, stem=stem,
                        mlflow=not no_mlflow)
    results, _, files = run(config)
    log(f"done in {results['wall_seconds'] / 60:.1f} min")


if __name__ == "__main__":
    app()
