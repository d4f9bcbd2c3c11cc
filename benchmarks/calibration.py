"""Does forgetting calibrate itself? The shipped defaults, stopped oracle-free, judged by the oracle (README)."""

import csv
import functools
import os
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from benchmarks import harness
from benchmarks.harness import CACHE, REPO, fmt, log, machine, read_json, table, write_json
from components import stages
from components.artifacts import ROLES, Metrics, Resources
from components.config import load_config
from components.data.records import content_hash
from components.evaluation.metrics import utility_hmean
from components.gate import evaluate_gate
from components.paths import Paths
from components.stages.finetune import finetune_cache
from components.stages.prepare import resolved_config

app = harness.cli(__doc__)  # the command: main, at the end
ROOT = CACHE / "calibration"
SEEDS = (0, 1, 2)
RULE = {"min_forget_quality": 0.05, "max_abs_privleak": 25.0, "min_utility_ratio": 0.95,
        "max_world_facts_drop": 0.02, "max_relearn_gap": 0.15, "min_runs_of_9": 8}
KEEP = ("forget_prob", "forget_quality", "privleak", "forget_holdout_auc", "forget_holdout_ks_p", "retain_prob",
        "retain_rouge", "retain_truth_ratio", "model_utility", "world_facts_acc", "relearn_forget_prob", "mia_auc")


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
    # tuning only (protocols/smollm2_tuning.md): the SmolLM2 profile's world drawn with another seed, so a
    # setting chosen here is never judged on the records that chose it
    "smollm2_tuning": World("smollm2_tuning", REPO / "pretrained" / "params.yaml", REPO / "pretrained", {"seed": 10}),
}


def _config(world: World, seed: int):
    config = load_config(world.params).with_overrides(world.overrides)
    return config.with_overrides({"seed": seed}) if world.train_per_seed else config


def trained_world(world: World, seed: int, train: bool = True):
    """(config, Paths) of the world's folder, named by its prepared data, where ``finetune`` ran once (README)."""
    config = _config(world, seed)
    scratch = Paths(ROOT / "scratch" / f"{world.name}-{os.getpid()}", config_root=world.root)
    shutil.rmtree(scratch.root, ignore_errors=True)
    stages.prepare(config, scratch)
    key = finetune_cache(resolved_config(config, scratch), scratch).name  # the finetune stage's own key
    paths = Paths(ROOT / f"{world.name}-{key}", config_root=world.root)
    done = (paths.root / "trained.json").exists()
    if train and not done:
        shutil.rmtree(paths.prepared, ignore_errors=True)
        shutil.copytree(scratch.prepared, paths.prepared)
        log(f"[{world.name}] fine-tuning the target and oracle once (in {paths.root}) ...")
        started = time.perf_counter()
        stages.validate(config, paths)
        finetune = {"finetune": stages.finetune(config, paths, show_progress=False).to_dict()}
        write_json(paths.root / "trained.json", finetune | {"seconds": round(time.perf_counter() - started, 1)})
    shutil.rmtree(scratch.root, ignore_errors=True)
    return (config, paths) if done or train else None


def run_one(world: World, seed: int, cached_only: bool = False) -> dict[str, Any] | None:
    """One seed of one world, unlearned, evaluated and gated (cached); ``cached_only``: cached or None."""
    found = trained_world(world, seed, train=not cached_only)
    if found is None:
        return None
    config, trained = found
    config = config.with_overrides({"seed": seed})
    paths = Paths(trained.root / "runs" / f"seed{seed}-{run_key(config, seed)}", config_root=world.root)
    done = paths.root / "result.json"
    if done.exists() or cached_only:
        return with_gate(read_json(done), paths, config) if done.exists() else None
    linked(world, trained, paths.root)
    timed = {}
    for stage in ("unlearn", "evaluate"):
        log(f"[{world.name} seed {seed}] {stage} ...")
        started = time.perf_counter()
        timed[stage] = getattr(stages, stage)(config, paths, show_progress=False), time.perf_counter() - started
    (summary, unlearn_seconds), (metrics, evaluate_seconds) = timed.values()
    cost = Resources.read(paths.resources).stage("evaluate")
    result = {"world": world.name, "seed": seed, "n_forget": metrics["unlearned"]["n_forget"],
              "n_holdout": len(stages.load_splits(paths)["holdout"]),
              "stop": summary.stop and {k: summary.stop[k] for k in ("stopped_at", "reason")} | {"holdout_nll": [
                  r["probe_holdout_nll"] for r in summary.stop["curve"][:1] + summary.stop["curve"][-1:]]},
              "steps": summary.steps, "unlearn_seconds": round(unlearn_seconds, 1),
              "evaluate_seconds": round(evaluate_seconds, 1),
              "cache": {role: {"hits": c["hits"], "misses": c["misses"]} for role, c in cost["cache"].items()},
              "floor": cost.get("floor")}
    write_json(done, result)
    shutil.rmtree(paths.unlearned, ignore_errors=True)  # SmolLM2 weights: 0.5 GB a run
    return with_gate(result, paths, config)


def run_key(config, seed: int) -> str:
    """The cache key of a run: its unlearn and eval settings and seed (the gate is re-applied)."""
    dump = {name: getattr(config, name).model_dump(mode="json") for name in ("unlearn", "eval")}
    return content_hash(dump | {"seed": seed})


def linked(world: World, trained, root: Path):
    """Paths of a run's folder ``root`` on a trained world, the world's data and models symlinked in (shared)."""
    paths = Paths(root, config_root=world.root)
    for link, target in ((paths.prepared, trained.prepared), (paths.target, trained.target),
                         (paths.oracle, trained.oracle)):
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(target.resolve(), target_is_directory=True)
    return paths


def with_gate(result: dict[str, Any], paths, config) -> dict[str, Any]:
    """The run's metrics (``reports/metrics.json`` of its folder) and the profile's gate applied to them now."""
    metrics = Metrics.load(paths.metrics)
    decision = evaluate_gate(metrics, config.gate)
    if result.get("floor") is None and paths.resources.exists():  # runs recorded before the floor was kept here
        result = result | {"floor": Resources.read(paths.resources).floor()}
    return result | {
        "run": paths.root.relative_to(ROOT).as_posix(),  # --from-cache finds this very run again
        "metrics": {role: {k: metrics.value(role, k) for k in KEEP}
                    | {"forget_truth_ratio_median": _median_tr(paths, role)} for role in ROLES},
        "gate": {"passed": decision.passed, "oracle_free": decision.verdict("oracle-free"),
                 "oracle": decision.verdict("oracle"), "agree": decision.agreement,
                 "checks": [c.to_dict() for c in decision.checks]}}


def _median_tr(paths, role: str) -> float | None:
    """Median truth ratio over the forget records (``per_item``), where forget quality's KS test looks."""
    if not (file := paths.report_files.per_item_file(role, "forget")).exists():
        return None
    with file.open(newline="") as handle:
        values = [float(row["truth_ratio"]) for row in csv.DictReader(handle) if row.get("truth_ratio")]
    return statistics.median(values) if values else None


def recorded_run(world: World, seed: int, recorded: dict[str, Any]) -> dict[str, Any]:
    """A recorded run from the folder it names (``run``), gate re-applied; as recorded if that is gone."""
    paths = Paths(ROOT / recorded["run"], config_root=world.root)
    found = read_json(paths.root / "result.json")
    return recorded if found is None else with_gate(found, paths, _config(world, seed).with_overrides({"seed": seed}))


def judged(run: dict[str, Any]) -> dict[str, Any]:
    """The decision rule's tests on one run."""
    unl, tgt, orc = (run["metrics"][r] for r in ("unlearned", "target", "oracle"))
    fq, privleak = unl["forget_quality"], unl["privleak"]
    utility = unl["model_utility"] / tgt["model_utility"] if unl["model_utility"] and tgt["model_utility"] else None
    retain, retain_tgt = retain_utility(unl), retain_utility(tgt)
    facts, gap = (None if a is None or b is None else a - b for a, b in (
        (tgt.get("world_facts_acc"), unl.get("world_facts_acc")),
        (unl.get("relearn_forget_prob"), orc.get("relearn_forget_prob"))))
    return {"forgotten": fq is not None and privleak is not None and fq >= RULE["min_forget_quality"]
            and abs(privleak) <= RULE["max_abs_privleak"],
            "utility_ratio": utility,
            "utility_kept": utility is not None and utility >= RULE["min_utility_ratio"]
            and (facts is None or facts <= RULE["max_world_facts_drop"]), "world_facts_drop": facts,
            "retain_utility_ratio": retain / retain_tgt if retain is not None and retain_tgt else None,
            "verdicts_agree": run["gate"]["agree"] is True, "relearn_gap": gap,
            "relearn_ok": gap is not None and gap <= RULE["max_relearn_gap"]}


def retain_utility(metrics: dict[str, Any]) -> float | None:
    """Model utility's retain part alone (README appendix): its probability, ROUGE-L and TR score."""
    parts = [metrics.get(k) for k in ("retain_prob", "retain_rouge", "retain_truth_ratio")]
    return None if any(p is None for p in parts) else utility_hmean(parts)


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    tests = [judged(r) for r in runs]
    count = {k: sum(bool(t[k]) for t in tests) for k in ("forgotten", "utility_kept", "verdicts_agree", "relearn_ok")}
    need = {k: len(runs) if k == "utility_kept" else RULE["min_runs_of_9"] * len(runs) / 9 for k in count}
    return {"runs": len(runs), "passing": count, "criteria_met": {k: count[k] >= need[k] for k in count}}


_f = functools.partial(fmt, none="-")  # the tables' number format


def _by_role(key: str):
    return lambda run: " / ".join(_f(run["metrics"][role].get(key)) for role in ("target", "unlearned", "oracle"))


def margin(check: dict[str, Any]) -> float | None:
    """How far inside its threshold a gate check's value is, as a fraction of the threshold (negative: failed)."""
    value, threshold = check["value"], check["threshold"]
    return None if value is None or not threshold else (
        value - threshold if check["op"] == ">=" else threshold - value) / abs(threshold)


def _tightest(run: dict[str, Any]) -> str:
    """The deciding gate check closest to its threshold, with its margin (the make-run criterion asks 10%)."""
    found = [(m, c["metric"]) for c in run["gate"]["checks"] if c.get("decides") and (m := margin(c)) is not None]
    return "-" if not found else f"{min(found)[1]} {min(found)[0]:+.1%}"


RUNS = [("world", "world"), ("seed", "seed"), ("forget / holdout", lambda r: f"{r['n_forget']} / {r['n_holdout']}"),
        ("stopped at", "steps"), ("why", lambda r: ((r["stop"] or {}).get("reason", "") or "").split(":")[0]),
        ("forget quality", ("metrics", "unlearned", "forget_quality")),
        ("privleak", ("metrics", "unlearned", "privleak"), 1),
        ("AUC vs holdout: target / unlearned / oracle", _by_role("forget_holdout_auc")),
        ("forget-vs-holdout KS p: target / unlearned / oracle", _by_role("forget_holdout_ks_p")),
        ("forget prob: target / unlearned / oracle", _by_role("forget_prob")),
        ("forget TR median: target / unlearned / oracle", _by_role("forget_truth_ratio_median")),
        ("utility ratio", ("judged", "utility_ratio")), ("retain part ratio", ("judged", "retain_utility_ratio")),
        ("world facts drop", ("judged", "world_facts_drop")), ("relearn gap", ("judged", "relearn_gap")),
        ("gate (oracle-free / oracle)", lambda r: f"{_f(r['gate']['oracle_free'])} / {_f(r['gate']['oracle'])}"),
        ("tightest deciding check", _tightest), ("unlearn s", lambda r: f"{r['unlearn_seconds']:.0f}"),
        ("evaluate s", lambda r: f"{r['evaluate_seconds']:.0f}")]
FLOORS = [("world", "world"), ("seed", "seed"),
          ("models scored", lambda r: ", ".join(role for role, c in r["cache"].items() if c["misses"]) or "none"),
          ("evaluate s", ("floor", "evaluate_seconds"), 1), ("floor s", ("floor", "floor_seconds"), 1),
          ("ratio", ("floor", "ratio"), 2), ("CPU ratio", ("floor", "cpu_ratio"), 2)]


def render(results: dict[str, Any]) -> str:
    runs, s, missing = results["runs"], results["summary"], results.get("not_run") or []
    criteria = [{"criterion": name, "met": _f(met)} for name, met in s["criteria_met"].items()]
    not_run = ", ".join(f"{m['world']} seed {m['seed']}" for m in missing)
    parts = harness.template("calibration")
    return parts["main"].format(
        overrides=", ".join(f"`{k}: {v}`" for k, v in (results.get("overrides") or {}).items())
        or "none (the shipped defaults)",
        r=results["rule"], facts_points=results["rule"]["max_world_facts_drop"] * 100, s=s, p=s["passing"],
        m=results["machine"], runs=table([r | {"judged": judged(r)} for r in runs], RUNS, _f),
        criteria=table(criteria, [("criterion", "criterion"), ("met", "met")]), floors=table(runs, FLOORS, _f),
        not_run=parts["not_run"].format(n=len(missing), names=not_run) if missing else "",
        minutes=sum(r["unlearn_seconds"] + r["evaluate_seconds"] for r in runs) / 60)


def write(runs: list[dict[str, Any]], out: Path, stem: str = "calibration",
          overrides: dict[str, Any] | None = None, planned: list[tuple[str, int]] | None = None) -> None:
    done = {(r["world"], r["seed"]) for r in runs}
    missing = [{"world": w, "seed": s} for w, s in planned or [] if (w, s) not in done]
    harness.write_report({"rule": RULE, "overrides": overrides or {}, "runs": runs, "not_run": missing,
                          "summary": summary(runs), "machine": machine()}, out, stem, render)


JUDGED = ("demo", "smollm2", "tofu")  # the three worlds; smollm2_tuning is for tuning runs only
JUDGED_STEM = "calibration"


@harness.command(app, __name__)
def main(worlds: list[str] = list(JUDGED), seeds: list[int] = list(SEEDS), out: Path = harness.OUT,
         report_only: bool = harness.REPORT_ONLY,
         from_cache: bool = harness.typer.Option(False, help="rebuild the results from the cached runs (those the "
                                                 "results file names, else today's); nothing is trained or run"),
         train_only: bool = harness.typer.Option(False, help="only fine-tune each world's target and oracle"),
         set_: list[str] = harness.typer.Option([], "--set", help="KEY=VALUE off the shipped defaults (tuning runs "
                                                "only: use seeds the judged runs do not, and another --stem)"),
         stem: str = harness.typer.Option(JUDGED_STEM, help="results file name")) -> None:
    if report_only:
        return harness.report_only(out, stem, render)
    if bad := [item for item in set_ if "=" not in item]:
        raise SystemExit(f"--set takes KEY=VALUE, got '{bad[0]}'")
    overrides = {key.strip(): yaml.safe_load(value) for key, _, value in (item.partition("=") for item in set_)}
    if overrides and stem == JUDGED_STEM:
        raise SystemExit("--set changes the shipped defaults: give the tuning run its own --stem")
    chosen = {name: World(w.name, w.params, w.root, {**w.overrides, **overrides}, w.train_per_seed)
              for name, w in WORLDS.items()}
    planned = [(name, seed) for name in worlds for seed in seeds]
    if from_cache:
        # the judged stem is today's shipped defaults by definition; a tuning stem keeps the runs it was written from
        stored = (harness.read_json(out / f"{stem}.json") if stem != JUDGED_STEM else None) or {}
        recorded = {(run["world"], run["seed"]): run for run in stored.get("runs", []) if run.get("run")}
        runs = [run for name, seed in planned
                if (run := recorded_run(chosen[name], seed, recorded[name, seed]) if (name, seed) in recorded
                    else run_one(chosen[name], seed, cached_only=True))]
        write(runs, out, stem, overrides, planned)
        return
    harness.init_process(2)
    if train_only:
        for name in worlds:
            trained_world(chosen[name], seeds[0])  # one seed a world (a demo seed's world trains when its run needs it)
        return
    runs = []
    for name, seed in planned:
        runs.append(run_one(chosen[name], seed))
        write(runs, out, stem, overrides, planned)
