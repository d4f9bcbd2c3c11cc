"""Does forgetting calibrate itself? The shipped defaults, stopped by the oracle-free rule, judged by the oracle.

    python -m benchmarks.calibration                 # every world, 3 seeds (resumes; run it in the background)
    python -m benchmarks.calibration --worlds demo   # one world
    python -m benchmarks.calibration --report-only   # rebuild the write-up from the cached runs

Three worlds, each with at least 40 forget and 40 holdout records, each with the shipped defaults
only (``params.yaml`` for the demo, ``pretrained/params.yaml`` for SmolLM2; nothing tuned per world):

* ``demo``: the embedded demo world on the tiny model trained from scratch (``make run``);
* ``smollm2``: the SmolLM2 profile's own world of fictitious authors (``make run-pretrained``);
* ``tofu``: eight real TOFU authors (``data/tofu``) on the SmolLM2 profile.

Each run is the pipeline's own stages: ``prepare`` and ``finetune`` once per world (cached by the
prepared data's content), then ``unlearn`` and ``evaluate`` (whose evaluation cache scores the
target and oracle once), and the gate of the profile. Seeds: on the demo the seed is the
pipeline's ``seed`` (world facts, models, data order); on SmolLM2, where fine-tuning costs minutes,
the target and oracle are trained once with the profile's seed and the seed varies the unlearning
run (data order).

The decision rule, fixed before the runs (issue 19): at the step where the rule stopped, in at
least 8 of the 9 runs forget quality against the oracle is at least 0.05 and |privleak| at most
25; in every run model utility is at least 0.95x the target's and (SmolLM2) world-facts accuracy
within 2 points of it; in at least 8 of 9 runs the gate's oracle-free verdict agrees with the
oracle's; in at least 8 of 9 runs the relearning attack recovers at most 0.15 more than the oracle
learns. The oracle never informs the stop: it only judges. Results: ``benchmarks/results/calibration.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import CACHE, REPO, RESULTS, init_process, log, machine, write_json
from components.data.records import content_hash

ROOT = CACHE / "calibration"
SEEDS = (0, 1, 2)
RULE = {"min_forget_quality": 0.05, "max_abs_privleak": 25.0, "min_utility_ratio": 0.95,
        "max_world_facts_drop": 0.02, "max_relearn_gap": 0.15, "min_runs_of_9": 8}
KEEP = ("forget_prob", "forget_quality", "privleak", "forget_holdout_auc", "forget_holdout_ks_p", "retain_prob",
        "model_utility", "world_facts_acc", "relearn_forget_prob", "mia_auc")


@dataclass(frozen=True)
class World:
    """A world to calibrate on: a params file, the folder its relative paths start from, overrides."""

    name: str
    params: Path
    root: Path
    overrides: dict[str, Any] = field(default_factory=dict)
    train_per_seed: bool = False  # the seed reaches the world and the models (cheap tiny models only)


WORLDS = {
    "demo": World("demo", REPO / "params.yaml", REPO, train_per_seed=True),
    "smollm2": World("smollm2", REPO / "pretrained" / "params.yaml", REPO / "pretrained"),
    "tofu": World("tofu", REPO / "pretrained" / "params.yaml", REPO / "pretrained", {
        "world.source": "file", "world.path": str(REPO / "data" / "tofu" / "world.json"),
        "world.holdout_path": str(REPO / "data" / "tofu" / "holdout.json"), "world.rows_per_subject": 20,
        "request": str(REPO / "data" / "tofu" / "request.json")}),
}


def _config(world: World, seed: int):
    from components.config import load_config

    config = load_config(world.params).with_overrides(world.overrides)
    return config.with_overrides({"seed": seed}) if world.train_per_seed else config


def _digest(folder: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def trained_world(world: World, seed: int):
    """``prepare`` (cheap) into a scratch folder, then the world's folder named by the prepared data's
    content, where ``finetune`` ran once. Returns (config, Paths of that folder)."""
    from components import stages
    from components.paths import Paths

    config = _config(world, seed)
    scratch = Paths(ROOT / "scratch" / f"{world.name}-{os.getpid()}", config_root=world.root)
    shutil.rmtree(scratch.root, ignore_errors=True)
    stages.prepare(config, scratch)
    key = content_hash({"prepared": _digest(scratch.prepared), "model": config.model.model_dump(mode="json"),
                        "finetune": config.finetune.model_dump(mode="json"), "seed": config.seed})
    paths = Paths(ROOT / f"{world.name}-{key}", config_root=world.root)
    if not (paths.root / "trained.json").exists():
        shutil.rmtree(paths.prepared, ignore_errors=True)
        paths.prepared.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(scratch.prepared, paths.prepared)
        log(f"[{world.name}] fine-tuning the target and oracle once (in {paths.root}) ...")
        started = time.perf_counter()
        stages.validate(config, paths)
        summary = stages.finetune(config, paths, show_progress=False)
        write_json(paths.root / "trained.json", {"finetune": summary, "seconds": round(time.perf_counter() - started, 1)})
    shutil.rmtree(scratch.root, ignore_errors=True)
    return config, paths


def run_one(world: World, seed: int) -> dict[str, Any]:
    """One seed of one world: unlearn with the shipped defaults, evaluate, gate (cached by its inputs)."""
    from components import stages
    from components.paths import Paths

    config, trained = trained_world(world, seed)
    config = config.with_overrides({"seed": seed})
    key = content_hash({"unlearn": config.unlearn.model_dump(mode="json"), "eval": config.eval.model_dump(mode="json"),
                        "seed": seed})  # the gate is re-applied to the stored metrics: changing it reruns nothing
    paths = Paths(trained.root / "runs" / f"seed{seed}-{key}", config_root=world.root)
    done = paths.root / "result.json"
    if done.exists():
        return with_gate(json.loads(done.read_text()), paths, config)
    for name in ("prepared",):
        (paths.root / "data").mkdir(parents=True, exist_ok=True)
        link = paths.root / "data" / name
        if not link.exists():
            link.symlink_to(trained.prepared, target_is_directory=True)
    paths.models.mkdir(parents=True, exist_ok=True)
    for role in ("target", "oracle"):
        link = paths.models / role
        if not link.exists():
            link.symlink_to(trained.models / role, target_is_directory=True)
    log(f"[{world.name} seed {seed}] unlearn ...")
    started = time.perf_counter()
    summary = stages.unlearn(config, paths, show_progress=False)
    unlearn_seconds = time.perf_counter() - started
    log(f"[{world.name} seed {seed}] evaluate ...")
    started = time.perf_counter()
    metrics = stages.evaluate(config, paths, show_progress=False)
    evaluate_seconds = time.perf_counter() - started
    cost = json.loads(paths.resources.read_text())["evaluate"]
    result = {
        "world": world.name, "seed": seed, "n_forget": metrics["unlearned"]["n_forget"],
        "n_holdout": len(stages.load_splits(paths)["holdout"]),
        "stop": {k: summary["stop"][k] for k in ("stopped_at", "reason")} if summary.get("stop") else None,
        "steps": summary["steps"], "unlearn_seconds": round(unlearn_seconds, 1),
        "evaluate_seconds": round(evaluate_seconds, 1),
        "cache": {role: {"hits": c["hits"], "misses": c["misses"]} for role, c in cost["cache"].items()},
        "floor": cost.get("floor"),
    }
    write_json(done, result)
    shutil.rmtree(paths.unlearned, ignore_errors=True)  # SmolLM2 weights: 0.5 GB a run
    return with_gate(result, paths, config)


def with_gate(result: dict[str, Any], paths, config) -> dict[str, Any]:
    """The run's metrics (``reports/metrics.json`` of its folder) and the profile's gate applied to them now."""
    from components.gate import evaluate_gate

    metrics = json.loads((paths.reports / "metrics.json").read_text())
    decision = evaluate_gate(metrics, config.gate)
    if result.get("floor") is None and paths.resources.exists():  # runs recorded before the floor was kept here
        result = result | {"floor": json.loads(paths.resources.read_text())["evaluate"].get("floor")}
    return result | {
        "metrics": {role: {k: metrics[role].get(k) for k in KEEP} for role in ("target", "oracle", "unlearned")},
        "gate": {"passed": decision.passed, "oracle_free": decision.verdict("oracle-free"),
                 "oracle": decision.verdict("oracle"), "agree": decision.agreement,
                 "checks": [c.to_dict() for c in decision.checks]}}


# --------------------------------------------------------------------------- judging


def judged(run: dict[str, Any]) -> dict[str, Any]:
    """The decision rule's tests on one run."""
    unl, tgt, orc = (run["metrics"][r] for r in ("unlearned", "target", "oracle"))
    fq, privleak = unl["forget_quality"], unl["privleak"]
    utility = unl["model_utility"] / tgt["model_utility"] if unl["model_utility"] and tgt["model_utility"] else None
    facts = (None if unl.get("world_facts_acc") is None or tgt.get("world_facts_acc") is None
             else tgt["world_facts_acc"] - unl["world_facts_acc"])
    gap = (None if unl.get("relearn_forget_prob") is None or orc.get("relearn_forget_prob") is None
           else unl["relearn_forget_prob"] - orc["relearn_forget_prob"])
    return {
        "forgotten": fq is not None and privleak is not None and fq >= RULE["min_forget_quality"]
        and abs(privleak) <= RULE["max_abs_privleak"],
        "utility_ratio": utility,
        "utility_kept": utility is not None and utility >= RULE["min_utility_ratio"]
        and (facts is None or facts <= RULE["max_world_facts_drop"]),
        "world_facts_drop": facts,
        "verdicts_agree": run["gate"]["agree"] is True,
        "relearn_gap": gap,
        "relearn_ok": gap is not None and gap <= RULE["max_relearn_gap"],
    }


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    tests = [judged(r) for r in runs]
    count = {k: sum(bool(t[k]) for t in tests) for k in ("forgotten", "utility_kept", "verdicts_agree", "relearn_ok")}
    need = RULE["min_runs_of_9"] * len(runs) / 9
    return {"runs": len(runs), "passing": count,
            "criteria_met": {"forgotten": count["forgotten"] >= need, "utility_kept": count["utility_kept"] == len(runs),
                             "verdicts_agree": count["verdicts_agree"] >= need, "relearn_ok": count["relearn_ok"] >= need}}


# --------------------------------------------------------------------------- the write-up (from the JSON)


def _f(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-3 and value != 0 else f"{value:.{digits}f}"
    return str(value)


def markdown(results: dict[str, Any]) -> str:
    lines = ["# Calibration: the shipped defaults, stopped without an oracle, judged by the oracle", "",
             "Generated by `python -m benchmarks.calibration` from `calibration.json`; do not edit by hand.", "",
             "Decision rule (fixed before the runs): at the stop step, in at least 8 of 9 runs forget quality "
             f">= {RULE['min_forget_quality']} and |privleak| <= {RULE['max_abs_privleak']:g}; in every run model "
             f"utility >= {RULE['min_utility_ratio']}x the target's and world-facts accuracy at most "
             f"{RULE['max_world_facts_drop'] * 100:g} points below it (SmolLM2); in at least 8 of 9 runs the gate's "
             "oracle-free verdict agrees with the oracle's and the relearning attack recovers at most "
             f"{RULE['max_relearn_gap']} more than the oracle learns.", "",
             "| world | seed | forget / holdout | stopped at | why | forget quality | privleak | AUC vs holdout | "
             "utility ratio | world facts drop | relearn gap | gate (oracle-free / oracle) | unlearn s | evaluate s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in results["runs"]:
        t = judged(run)
        unl = run["metrics"]["unlearned"]
        why = (run["stop"] or {}).get("reason", "") or ""
        gate = run["gate"]
        lines.append(
            f"| {run['world']} | {run['seed']} | {run['n_forget']} / {run['n_holdout']} | {run['steps']} | "
            f"{why.split(':')[0]} | {_f(unl['forget_quality'])} | {_f(unl['privleak'], 1)} | "
            f"{_f(unl['forget_holdout_auc'])} | {_f(t['utility_ratio'])} | {_f(t['world_facts_drop'])} | "
            f"{_f(t['relearn_gap'])} | {_f(gate['oracle_free'])} / {_f(gate['oracle'])} | "
            f"{run['unlearn_seconds']:.0f} | {run['evaluate_seconds']:.0f} |")
    s = results["summary"]
    lines += ["", f"Over {s['runs']} runs: forgotten (quality and privleak) in {s['passing']['forgotten']}, utility "
              f"kept in {s['passing']['utility_kept']}, verdicts agree in {s['passing']['verdicts_agree']}, "
              f"relearning within the gap in {s['passing']['relearn_ok']}.", "",
              "| criterion | met |", "|---|---|"]
    lines += [f"| {name} | {_f(met)} |" for name, met in s["criteria_met"].items()]
    lines += ["", "Evaluate against its floor (`reports/resources.json` of each run: one padding-free forward pass over "
              "every scored token plus decoding as many tokens as the reference answers have, at the throughput "
              "measured on the model; models found in the evaluation cache cost nothing and count in neither):", "",
              "| world | seed | models scored | evaluate s | floor s | ratio |", "|---|---|---|---|---|---|"]
    for run in results["runs"]:
        floor = run.get("floor") or {}
        scored = ", ".join(role for role, c in run["cache"].items() if c["misses"]) or "none"
        lines.append(f"| {run['world']} | {run['seed']} | {scored} | {_f(floor.get('evaluate_seconds'), 1)} | "
                     f"{_f(floor.get('floor_seconds'), 1)} | {_f(floor.get('ratio'), 2)} |")
    lines += ["", f"Machine: {results['machine']['cpu']}, {results['machine']['cores']} cores, torch "
              f"{results['machine']['torch']}. Total wall time of the runs (unlearn + evaluate, fine-tuning "
              f"excluded): {sum(r['unlearn_seconds'] + r['evaluate_seconds'] for r in results['runs']) / 60:.1f} min."]
    return "\n".join(lines) + "\n"


def write(runs: list[dict[str, Any]], out: Path) -> None:
    results = {"rule": RULE, "runs": runs, "summary": summary(runs), "machine": machine()}
    write_json(out / "calibration.json", results)
    (out / "calibration.md").write_text(markdown(results), encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worlds", nargs="+", default=list(WORLDS), choices=list(WORLDS))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--report-only", action="store_true", help="rebuild the write-up from cached runs")
    parser.add_argument("--train-only", action="store_true", help="only fine-tune each world's target and oracle")
    args = parser.parse_args(argv)
    init_process(threads=int(os.environ.get("BLUR_BENCH_THREADS", "2")))
    runs = []
    for name in args.worlds:
        for seed in args.seeds:
            if args.train_only:
                trained_world(WORLDS[name], seed)
                break
            if args.report_only:
                found = sorted(ROOT.glob(f"{name}-*/runs/seed{seed}-*/result.json"), key=lambda p: p.stat().st_mtime)
                if found:
                    from components.paths import Paths

                    config = _config(WORLDS[name], seed).with_overrides({"seed": seed})
                    runs.append(with_gate(json.loads(found[-1].read_text()), Paths(found[-1].parent), config))
                continue
            runs.append(run_one(WORLDS[name], seed))
            write(runs, args.out)
    write(runs, args.out)
    log(f"wrote {args.out / 'calibration.md'}")


if __name__ == "__main__":
    main()
