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

import argparse
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from benchmarks.common import CACHE, REPO, RESULTS, init_process, log, trained_bench, write_json
from benchmarks.pareto import (at_least_strictly, comparison_rows, configurations, fmt, markdown_table,
                              matched_comparison, mean_std, pareto_figure)
from benchmarks.quality import BALANCE_NAME, CONFIG_KEYS, COARSE, DIAGNOSTICS, Sweep, run_sweep
from components.data.records import QARecord, Record, TextRecord

MUSE_DATA = REPO.parent / "shared" / "data" / "muse_news"
MUSE_METRICS = ("forget_verbmem", "retain_knowmem", "forget_knowmem", "privleak", "forget_prob", "retain_prob",
                "model_utility", "mia_auc", "retain_verbmem")
DEFAULT_SWEEPS = tuple(Sweep(loss, **COARSE, lrs=(1e-3,), seeds=(0, 1), eval_steps=(20, 40, 80))
                       for loss in ("npo", "ga"))
SMOKE_SWEEPS = (Sweep("npo", blur_gammas=(0.1,), ws_alphas=(10.0,), lrs=(1e-3,), seeds=(0,), eval_steps=(1, 2)),)


@dataclass
class MuseConfig:
    """The MUSE-News subset, the model recipe and the sweep."""

    data: Path = MUSE_DATA
    n_forget_articles: int = 24
    n_retain_articles: int = 32
    n_holdout_articles: int = 24
    chunk_words: int = 64
    chunks_per_article: int = 4
    sweeps: tuple[Sweep, ...] = DEFAULT_SWEEPS
    overrides: dict[str, Any] = field(default_factory=lambda: {
        "model.tokenizer.vocab_size": 2048,  # news text needs more merges than the demo's 1024
        "finetune.target_prob": 0.8,
        "finetune.max_epochs": 150,
    })
    verbmem_levels: tuple[float, ...] = (0.0, 0.1, 0.25, 0.5)  # fractions of the way from the oracle to the target
    budget_minutes: float = 40.0
    out_dir: Path = RESULTS
    stem: str = "muse_news"
    mlflow: bool = True
    threads: int = 1


# --------------------------------------------------------------------------- the subset


def _read(data: Path, name: str) -> list:
    path = data / name
    if not path.is_file():
        raise SystemExit(f"MUSE-News file {path} not found: pass --data DIR, a folder laid out like "
                         "muse_bench's data/bbc (raw/, knowmem/, privleak/)")
    return json.loads(path.read_text(encoding="utf-8"))


def chunks(text: str, words: int, limit: int) -> list[str]:
    """The first ``limit`` pieces of ``words`` words (paragraph breaks become spaces)."""
    tokens = text.split()
    pieces = [" ".join(tokens[i:i + words]) for i in range(0, len(tokens), words)]
    return [p for p in pieces if len(p.split()) >= words // 2][:limit]


def owner_article(answer: str, articles: Sequence[str]) -> int | None:
    """The one article containing ``answer`` verbatim, or None (none or several)."""
    found = [i for i, article in enumerate(articles) if answer in article]
    return found[0] if len(found) == 1 else None


def muse_subset(config: MuseConfig) -> tuple[list[Record], list[Record], list[Record]]:
    """``(forget, retain, holdout)`` records of the subset (deterministic: first articles by index)."""
    raw, forget_qa = _read(config.data, "raw/forget.json"), _read(config.data, "knowmem/forget_qa.json")
    retain_texts, retain_qa = _read(config.data, "privleak/retain2.json"), _read(config.data, "knowmem/retain2_qa.json")
    holdout_texts = _read(config.data, "privleak/holdout.json")

    owned = [(item, owner_article(item["answer"], raw)) for item in forget_qa]
    forget_ids = sorted({i for _, i in owned if i is not None})[: config.n_forget_articles]
    forget = _articles(raw, forget_ids, "bbc-forget", config)
    forget += [_qa(item, f"bbc-forget-{i:03d}") for item, i in owned if i in forget_ids]

    retain_owned = [(item, owner_article(item["answer"], retain_texts)) for item in retain_qa]
    first = sorted({i for _, i in retain_owned if i is not None})
    rest = [i for i in range(len(retain_texts)) if i not in first]
    retain_ids = sorted((first + rest)[: config.n_retain_articles])
    retain = _articles(retain_texts, retain_ids, "bbc-retain", config)
    retain += [_qa(item, f"bbc-retain-{i:03d}") for item, i in retain_owned if i in retain_ids]

    n_forget_qa = sum(isinstance(r, QARecord) for r in forget)
    outside = [item for item, i in owned if i not in forget_ids][:n_forget_qa]
    holdout = _articles(holdout_texts, range(config.n_holdout_articles), "bbc-holdout", config)
    holdout += [_qa(item, "bbc-holdout-qa") for item in outside]
    return forget, retain, holdout


def _articles(texts: Sequence[str], ids, prefix: str, config: MuseConfig) -> list[Record]:
    return [TextRecord(text=piece, subject=f"{prefix}-{i:03d}")
            for i in ids for piece in chunks(texts[i], config.chunk_words, config.chunks_per_article)]


def _qa(item: dict, subject: str) -> QARecord:
    return QARecord(question=item["question"], answer=item["answer"], subject=subject)


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


def write_report(results: dict[str, Any], analysis: dict[str, Any], config: MuseConfig) -> list[Path]:
    out = Path(config.out_dir)
    configs = analysis["configurations"]
    panels = [(loss, [c for c in configs if c["forget_loss"] == loss]) for loss in dict.fromkeys(c["forget_loss"] for c in configs)]
    reference = results["reference"]
    files = [
        pareto_figure(panels, x="forget_verbmem", y="retain_knowmem", maximize_x=False, references=reference,
                      path=out / f"{config.stem}_verbmem_vs_knowmem.png", xlabel="forget verbmem (lower is more forgotten)",
                      ylabel="retain knowmem (utility)", title="MUSE-News subset: verbatim memorisation vs retained knowledge"),
        pareto_figure(panels, x="forget_knowmem", y="retain_knowmem", maximize_x=False, references=reference,
                      path=out / f"{config.stem}_knowmem.png", xlabel="forget knowmem (lower is more forgotten)",
                      ylabel="retain knowmem (utility)", title="MUSE-News subset: forgotten vs retained knowledge"),
    ]
    runs = [{k: v for k, v in r.items() if k != "diagnostics"} for r in results["runs"]]
    files.append(write_json(out / f"{config.stem}.json", results | {"runs": runs, "analysis": analysis}))
    path = out / f"{config.stem}.md"
    path.write_text(markdown(results, analysis, config), encoding="utf-8")
    files.append(path)
    return files


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
    init_process(config.threads)
    forget, retain, holdout = muse_subset(config)
    settings = load_config(REPO / "params.yaml").with_overrides(config.overrides)
    bench = trained_bench(settings, forget, retain, holdout, CACHE, name="muse")
    log(f"MUSE-News subset: {len(forget)} forget / {len(retain)} retain / {len(holdout)} holdout records; target "
        f"{bench.info['finetune']['target']['epochs']} epochs, p {bench.info['finetune']['target']['mean_answer_prob']:.2f}")
    sweep_config = _as_quality_config(config)
    results = run_sweep(bench, sweep_config, metrics_kept=MUSE_METRICS)
    results |= {"benchmark": "muse_news", "config": json.loads(json.dumps(asdict(config), default=str)),
                "wall_seconds": round(time.perf_counter() - started, 1)}
    results["world"]["forget_text"] = sum(isinstance(r, TextRecord) for r in forget)
    analysis = analyse(results, config)
    Path(config.out_dir).mkdir(parents=True, exist_ok=True)
    files = write_report(results, analysis, config)
    if config.mlflow:
        from benchmarks.tracking import benchmark_store, log_benchmark

        log_benchmark(benchmark_store(Path(config.out_dir) / "mlflow"), "benchmark-muse-news", run_name=config.stem,
                      params={"subset": {k: getattr(config, k) for k in ("n_forget_articles", "n_retain_articles",
                                                                           "n_holdout_articles", "chunk_words")},
                              "sweeps": [asdict(s) for s in config.sweeps], "overrides": config.overrides},
                      metrics={"wall_seconds": results["wall_seconds"],
                               **{f"{role}.{k}": v for role, r in results["reference"].items() for k, v in r.items()
                                  if isinstance(v, (int, float))}},
                      children=results["runs"], artifacts=files)
    return results, analysis, files


def _as_quality_config(config: MuseConfig):
    from benchmarks.quality import QualityConfig

    return QualityConfig(sweeps=config.sweeps, budget_minutes=config.budget_minutes, out_dir=config.out_dir,
                         stem=config.stem, mlflow=False, threads=config.threads)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--data", type=Path, default=MUSE_DATA, help="MUSE-News folder (muse_bench's data/bbc layout)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-mlflow", action="store_true")
    parser.add_argument("--report-only", type=Path, metavar="JSON", help="rewrite the report of an earlier run's JSON")
    args = parser.parse_args(argv)
    if args.report_only:
        config = MuseConfig(out_dir=args.out, stem=args.report_only.stem, mlflow=False)
        results = json.loads(args.report_only.read_text(encoding="utf-8"))
        for path in write_report(results, analyse(results, config), config):
            log(f"  wrote {path}")
        return
    config = MuseConfig(data=args.data, sweeps=SMOKE_SWEEPS if args.smoke else DEFAULT_SWEEPS, out_dir=args.out,
                        stem="muse_news_smoke" if args.smoke else "muse_news", mlflow=not args.no_mlflow)
    results, _, files = run(config)
    log(f"done in {results['wall_seconds'] / 60:.1f} min")
    for path in files:
        log(f"  wrote {path}")


if __name__ == "__main__":
    main()
