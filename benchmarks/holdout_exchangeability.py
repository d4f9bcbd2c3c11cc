"""Is the demo world's holdout exchangeable with a forgotten subject? How it works: README appendix."""

import functools
import random
import statistics
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from benchmarks import calibration, harness
from benchmarks.harness import CACHE, REPO, fmt, log, machine, read_json, table
from components import stages
from components.config import load_config
from components.data.records import content_hash, records_digest
from components.data.world import load_world
from components.evaluation import evaluate_models
from components.evaluation.formulas import membership_auc
from components.modeling.io import load_model_dir

app = harness.cli(__doc__)  # the command: main, at the end
STEM = "holdout_exchangeability"
VERSION = 3  # of what a cached seed result holds
AUC_BAND = (0.4, 0.6)
MAX_PROB_RATIO = 1.25
MIN_FORGET = 40
NULL_DRAWS = 2000
PARAMS, REQUEST = REPO / "params.yaml", REPO / "data" / "requests" / "demo-request.json"


def _keys(config) -> tuple[str, str]:
    """The generated records' hash, and a seed result's cache key (records, request, settings)."""
    generated = load_world(config.world, config.seed, REPO)
    world = content_hash({"world": records_digest(generated.records), "holdout": records_digest(generated.holdout)})
    return world, content_hash({
        "version": VERSION, "world": world, "request": REQUEST.read_text(encoding="utf-8"),
        "model": config.model.model_dump(mode="json"), "finetune": config.finetune.model_dump(mode="json"),
        "eval": config.eval.model_dump(mode="json"), "seed": config.seed, "torch": torch.__version__})


def measure_seed(seed: int) -> dict[str, Any]:
    """One seed: train (or load) the target and oracle, score the oracle; cached by content."""
    # the relearning attack measures something else and costs minutes: off here
    config = load_config(PARAMS).with_overrides({"seed": seed, "eval.relearn.enabled": False})
    world, key = _keys(config)
    return harness.cached(CACHE / STEM / f"seed-{seed}-{key}.json", lambda: _measure(seed, config, world))


def _measure(seed: int, config, world: str) -> dict[str, Any]:
    started = time.perf_counter()
    log(f"seed {seed}: preparing the world and training the target and oracle (pipeline recipe) ...")
    # calibration's trained demo world: prepare + finetune once, in a folder named by the prepared data's content
    demo = calibration.World("demo", PARAMS, REPO, {"request": str(REQUEST)}, train_per_seed=True)
    trained = calibration.trained_world(demo, seed)[1]
    splits, finetune = stages.load_splits(trained), read_json(trained.root / "trained.json")
    forget, retain, holdout = splits["forget"], splits["retain"], splits["holdout"]
    log(f"seed {seed}: scoring the oracle ...")
    result = evaluate_models({"oracle": lambda: load_model_dir(trained.oracle)}, forget=forget, retain=retain,
                             holdout=holdout, config=config.eval, max_length=config.model.max_length,
                             show_progress=False)
    metrics, rows = result.metrics["oracle"], result.per_item["oracle"]
    probs = forget_prob, holdout_prob = metrics["forget_prob"], metrics["holdout_prob"]
    target = finetune["finetune"]["target"]
    row = {"seed": seed, "world_digest": world, "n_forget": len(forget),
           "n_forget_subjects": len({r.subject for r in forget}), "n_holdout": len(holdout),
           "n_holdout_subjects": len({r.subject for r in holdout}), "n_retain": len(retain),
           "finetune_epochs": target["epochs"], "target_train_prob": target["mean_answer_prob"],
           "oracle_forget_prob": forget_prob, "oracle_holdout_prob": holdout_prob,
           "oracle_retain_prob": metrics["retain_prob"], "prob_ratio": max(probs) / min(probs),
           **{k: metrics[k] for k in ("forget_holdout_auc", "mia_auc_loss", "mia_auc_zlib", "forget_holdout_ks_p")},
           **{f"oracle_{s}_prob_median": statistics.median(r["prob"] for r in rows[s]) for s in ("forget", "holdout")},
           "null": subject_permutation_null(forget, holdout, rows, seed=seed),
           "train_seconds": finetune["seconds"],  # target and oracle, when first trained
           "seconds": round(time.perf_counter() - started, 1)}  # this measurement (training only if not cached)
    return row | {"pass": verdict(row)}


def subject_permutation_null(forget, holdout, rows, *, seed: int, draws: int = NULL_DRAWS) -> dict[str, Any]:
    """The chance baseline of the AUC and ratio, subject numbers only (README appendix)."""
    scored = [(record.subject, row["mia_mink"], row["prob"])
              for split, records in (("forget", forget), ("holdout", holdout))
              for record, row in zip(records, rows[split])]
    subjects = sorted({subject for subject, _, _ in scored})
    chosen = {record.subject for record in forget}

    def stats(members: set) -> tuple[float, float]:
        inside = [(s, m, p) for s, m, p in scored if s in members]
        outside = [(s, m, p) for s, m, p in scored if s not in members]
        auc = membership_auc([m for _, m, _ in inside], [m for _, m, _ in outside])
        return auc, statistics.mean(p for _, _, p in inside) / statistics.mean(p for _, _, p in outside)

    rng = random.Random(f"holdout-exchangeability:{seed}")
    null = [stats(set(rng.sample(subjects, len(chosen)))) for _ in range(draws)]
    aucs = sorted(auc for auc, _ in null)
    ratios = [max(r, 1 / r) for _, r in null]
    observed = stats(chosen)[0]
    return {"draws": draws, "auc_sd": statistics.pstdev(aucs),
            "auc_5_95": [aucs[int(0.05 * draws)], aucs[int(0.95 * draws)]],
            "p_auc_outside_band": sum(not AUC_BAND[0] <= a <= AUC_BAND[1] for a in aucs) / draws,
            "p_ratio_over_max": sum(r > MAX_PROB_RATIO for r in ratios) / draws,
            "observed_auc_percentile": sum(a <= observed for a in aucs) / draws}


def verdict(row: dict[str, Any]) -> dict[str, bool]:
    """The criteria, each met or not."""
    return {"auc_in_band": AUC_BAND[0] <= row["forget_holdout_auc"] <= AUC_BAND[1],
            "prob_ratio_ok": row["prob_ratio"] <= MAX_PROB_RATIO, "forget_size_ok": row["n_forget"] >= MIN_FORGET}


def run(seeds: Sequence[int]) -> dict[str, Any]:
    started = time.perf_counter()
    harness.init_process(1)
    base, rows = load_config(PARAMS), [measure_seed(seed) for seed in seeds]
    return {"benchmark": STEM,
            "criteria": {"auc_band": list(AUC_BAND), "max_prob_ratio": MAX_PROB_RATIO,
                         "min_forget_records": MIN_FORGET},
            "world": base.world.model_dump(mode="json"), "request": str(REQUEST.relative_to(REPO)),
            "finetune": base.finetune.model_dump(mode="json"), "seeds": rows,
            "all_pass": all(all(row["pass"].values()) for row in rows), "machine": machine(),
            "wall_seconds_this_run": round(time.perf_counter() - started, 1)}


_number = functools.partial(fmt, none="n/a")  # the table's number format


def _pass(row: dict) -> str:
    return "yes" if all(row["pass"].values()) else "no (" + ", ".join(k for k, v in row["pass"].items() if not v) + ")"


COLUMNS = [("seed", "seed"), ("forget (subjects)", lambda r: f"{r['n_forget']} ({r['n_forget_subjects']})"),
           ("holdout (subjects)", lambda r: f"{r['n_holdout']} ({r['n_holdout_subjects']})"),
           ("epochs", "finetune_epochs"), ("oracle forget prob", "oracle_forget_prob"),
           ("oracle holdout prob", "oracle_holdout_prob"), ("ratio", "prob_ratio", 2),
           ("AUC min-k", "forget_holdout_auc"), ("AUC loss", "mia_auc_loss"), ("AUC zlib", "mia_auc_zlib"),
           ("KS p", "forget_holdout_ks_p"),
           ("chance AUC 5-95%", lambda r: "-".join(_number(v, 2) for v in r["null"]["auc_5_95"])),
           ("AUC percentile", ("null", "observed_auc_percentile"), 2), ("pass", _pass)]


def render(results: dict[str, Any]) -> str:
    """The report, every figure read from ``results`` (the JSON)."""
    seeds = results["seeds"]
    return harness.template("holdout_exchangeability")["main"].format(
        w=results["world"], c=results["criteria"], m=results["machine"], request=results["request"],
        table=table(seeds, COLUMNS, _number), draws=seeds[0]["null"]["draws"] if seeds else 0,
        verdict="All seeds meet the criteria." if results["all_pass"] else "Not every seed meets the criteria.",
        train=", ".join(f"seed {r['seed']} {r['train_seconds'] / 60:.1f} min" for r in seeds))


@harness.command(app, __name__)
def main(seeds: list[int] = [0, 1, 2], out: Path = harness.OUT, report_only: bool = harness.REPORT_ONLY) -> None:
    if report_only:
        return harness.report_only(out, STEM, render)
    harness.write_report(run(seeds), out, STEM, render)
