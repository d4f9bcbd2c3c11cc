"""Real text: BLUR against the weighted sum on a small MUSE-News subset (BBC articles nobody here wrote).

    python -m benchmarks.muse_news                      # ~15-20 min with 1 thread
    python -m benchmarks.muse_news --smoke --out /tmp/m # a minimal run, to check that it runs
    python -m benchmarks.muse_news --data DIR           # the data elsewhere than ../shared/data/muse_news

The subset (see :func:`muse_subset`): forget articles from ``raw/forget.json`` (those a
``knowmem/forget_qa.json`` question can be traced to, by its answer appearing in exactly one
article), retain articles from ``privleak/retain2.json`` (those of ``knowmem/retain2_qa.json``
first), non-member articles from ``privleak/holdout.json``. Articles are cut into chunks
of ``chunk_words`` words (a few per article) so they fit the tiny model's 128-token context.

A tiny Llama is trained here from scratch on forget + retain (the pipeline's recipe), an
oracle on retain only. A model trained from scratch on a few dozen articles cannot answer
questions about them from the text, so, unlike MUSE (whose target is a pretrained LLM),
the knowmem question/answer pairs of the chosen articles are trained on too: *knowmem here
is memorised QA about the forgotten articles*, and the forget set is the articles' chunks
plus their QA. The non-members for membership inference are holdout chunks plus forget-QA
pairs of articles outside the subset, in the same proportion.

Metrics, all from the pipeline's evaluator: forget verbmem (ROUGE-L F1 of the continuation
of a 32-token prefix of each forget chunk; lower is more forgotten), forget knowmem (QA
ROUGE-L F1), retain knowmem (the MUSE utility), privleak (min-k% AUC against the oracle's,
in %; 0 is like the oracle), probabilities. Results: ``benchmarks/results/muse_news.*``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks import harness
from benchmarks.common import CACHE, trained_bench
from benchmarks.harness import REPO, RESULTS, fmt, jsonable, log, markdown_table, mean_std
from benchmarks.muse_subset import MUSE_DATA, MuseSubset, muse_subset
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
    runs = [{k: v for k, v in r.items() if k != "diagnostics"} for r in results["runs"]]
    return harness.write_report(results | {"runs": runs, "analysis": analysis}, config.out_dir, config.stem,
                                renderer(config.stem), lambda res, out: figures(res, out, config.stem))


def renderer(stem: str):
    config = MuseConfig(stem=stem)
    return lambda results: markdown(results, analyse(results, config), config)


def markdown(results: dict[str, Any], analysis: dict[str, Any], config: MuseConfig) -> str:
    m, ref, world = results["machine"], results["reference"], results["world"]
    lines = [
        f"# Real text: BLUR vs weighted sum on a MUSE-News subset ({config.stem})", "",
        f"Generated by `python -m benchmarks.muse_news`. Machine: {m['cpu']}, {m['cores']} cores, "
        f"{m['torch_threads']} torch thread(s), CPU only; torch {m['torch']}. Wall time "
        f"{results['wall_seconds'] / 60:.1f} min (training target and oracle "
        f"{results['setup'].get('finetune', {}).get('seconds', 0):.0f} s when not cached). Subset: "
        f"{world['forget']} forget records ({world['forget_text']} chunks of {config.n_forget_articles} articles + "
        f"{world['forget'] - world['forget_text']} QA), {world['retain']} retain, {world['holdout']} non-member records. "
        f"Target trained {results['setup']['finetune']['target']['epochs']} epochs (mean target-token probability "
        f"{results['setup']['finetune']['target']['mean_answer_prob']:.2f}).", "",
        "## Reference models", "",
        markdown_table(["model", "forget verbmem", "forget knowmem", "retain knowmem", "privleak", "forget prob",
                        "retain prob", "MIA AUC"],
                       [[name, r["forget_verbmem"], r["forget_knowmem"], r["retain_knowmem"], r["privleak"],
                         r["forget_prob"], r["retain_prob"], r["mia_auc"]] for name, r in ref.items()]),
        "", "## Matched forgetting: best retain knowmem at forget verbmem <= level", "",
        "Levels are fractions of the way from the oracle's verbmem (0) to the target's (1).", "",
    ]
    for loss, block in analysis["matched"].items():
        lines += [f"### {loss}", "", markdown_table(
            ["verbmem <=", "fraction", "BLUR retain knowmem", "BLUR config", "weighted-sum retain knowmem",
             "weighted-sum config"],
            [[fmt(r["level"]), fmt(r["fraction"], 2), mean_std(r["blur"], "retain_knowmem"), _config(r["blur"]),
              mean_std(r["weighted_sum"], "retain_knowmem"), _config(r["weighted_sum"])]
             for r in block["levels"]]), ""]
        strict = sum(at_least_strictly(r) for r in block["all_levels"])
        lines += [f"Over all {len(block['all_levels'])} verbmem levels either method reaches, BLUR's best retain "
                  f"knowmem is at least the weighted sum's at {strict}.", ""]
        by_prob = block["by_retain_prob"]
        strict = sum(at_least_strictly(r) for r in by_prob)
        shown = [r for r in by_prob if r["level"] in {x["level"] for x in block["all_levels"]}]
        lines += [f"With retain probability as the utility instead: BLUR at least as good at {strict} of "
                  f"{len(by_prob)} verbmem levels. " + "; ".join(
                      f"verbmem <= {fmt(r['level'])}: {fmt(r['ours_y'])} vs {fmt(r['theirs_y'])}"
                      for r in shown[: 8]) + ".", ""]
    lines += ["## Every configuration", "", markdown_table(
        ["loss", "combiner", "balance", "lr", "steps", "seeds", "forget verbmem", "forget knowmem", "retain knowmem",
         "privleak", "forget prob", "retain prob", "cos", "xi"],
        [[c["forget_loss"], c["combiner"], fmt(c["balance"], 2), f"{c['lr']:g}", c["steps"], c["seeds"],
          mean_std(c, "forget_verbmem"), mean_std(c, "forget_knowmem"), mean_std(c, "retain_knowmem"),
          fmt(c["privleak"], 1), fmt(c["forget_prob"]), fmt(c["retain_prob"]), fmt(c["mean_cos"], 2), fmt(c["mean_xi"], 3)]
         for c in sorted(analysis["configurations"],
                         key=lambda c: (c["forget_loss"], c["combiner"], c["lr"], c["balance"], c["steps"]))])]
    if results["skipped"]:
        lines += ["", f"Skipped for the time budget: {len(results['skipped'])} runs."]
    errors = [r for r in results["runs"] if r["error"]]
    if errors:
        lines += ["", "Runs that diverged:", "", *[f"- {r['name']}: {r['error']}" for r in errors]]
    return "\n".join(lines) + "\n"


def _config(row: dict | None) -> str:
    if not row:
        return "never reached"
    return (f"{BALANCE_NAME[row['combiner']]}={row['balance']:g}, {row['steps']} steps "
            f"(verbmem {fmt(row['forget_verbmem'])}, privleak {fmt(row['privleak'], 1)})")


# --------------------------------------------------------------------------- entry point


def run(config: MuseConfig) -> tuple[dict, dict, list[Path]]:
    from components.config import load_config

    started = time.perf_counter()
    harness.init_process(config.threads)
    forget, retain, holdout = muse_subset(config)
    settings = load_config(REPO / "params.yaml").with_overrides(config.overrides)
    bench = trained_bench(settings, forget, retain, holdout, CACHE, name="muse")
    log(f"MUSE-News subset: {len(forget)} forget / {len(retain)} retain / {len(holdout)} holdout records; target "
        f"{bench.info['finetune']['target']['epochs']} epochs, p {bench.info['finetune']['target']['mean_answer_prob']:.2f}")
    results = run_sweep(bench, config, metrics_kept=MUSE_METRICS)
    results |= {"benchmark": "muse_news", "config": jsonable(asdict(config)),
                "wall_seconds": round(time.perf_counter() - started, 1)}
    results["world"]["forget_text"] = sum(isinstance(r, TextRecord) for r in forget)
    analysis = analyse(results, config)
    Path(config.out_dir).mkdir(parents=True, exist_ok=True)
    files = write_report(results, analysis, config)
    if config.mlflow:
        harness.log_benchmark(config.out_dir, "benchmark-muse-news", run_name=config.stem,
                      params={"subset": {k: getattr(config, k) for k in ("n_forget_articles", "n_retain_articles",
                                                                           "n_holdout_articles", "chunk_words")},
                              "sweeps": [asdict(s) for s in config.sweeps], "overrides": config.overrides},
                      metrics={"wall_seconds": results["wall_seconds"],
                               **{f"{role}.{k}": v for role, r in results["reference"].items() for k, v in r.items()
                                  if isinstance(v, (int, float))}},
                      children=results["runs"], artifacts=files)
    return results, analysis, files


app = harness.cli(__doc__)


@app.command()
def main(smoke: bool = harness.typer.Option(False, "--smoke"),
         data: Path = harness.typer.Option(MUSE_DATA, help="MUSE-News folder (muse_bench's data/bbc layout)"),
         out: Path = harness.OUT, stem: str = harness.typer.Option(None, help="default muse_news[_smoke]"),
         no_mlflow: bool = harness.NO_MLFLOW, report_only: bool = harness.REPORT_ONLY) -> None:
    stem = stem or ("muse_news_smoke" if smoke else "muse_news")
    if report_only:
        harness.report_only(out, stem, renderer(stem))
        return
    config = MuseConfig(data=data, sweeps=SMOKE_SWEEPS if smoke else DEFAULT_SWEEPS, out_dir=out, stem=stem,
                        mlflow=not no_mlflow)
    results, _, files = run(config)
    log(f"done in {results['wall_seconds'] / 60:.1f} min")


if __name__ == "__main__":
    app()
