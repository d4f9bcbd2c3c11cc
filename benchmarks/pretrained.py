"""Efficacy on a pretrained LLM: BLUR against the weighted sum on SmolLM2-135M-Instruct fine-tuned on
fictitious authors (the pipeline's ``pretrained/params.yaml`` profile), with the oracle-free stop.

``--grid gpu``: the wider grid of benchmarks/gpu/pretrained.sh; ``--world demo|muse``: the stop rule on the demo
model; ``--smoke --out DIR``: a tiny Llama in seconds. How it works: ``benchmarks/README.md``, appendix.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Sequence

import torch

from benchmarks import harness
from benchmarks.common import (CACHE, PROFILE, Bench, CandidateEvaluator, diagnostics_summary, fresh_copy, method_config,
                               pretrained_bench, smoke_bench, unlearn)
from benchmarks.harness import REPO, RESULTS, fmt, jsonable, log, machine, mean_std, table, write_json
from benchmarks.pareto import at_least_strictly, comparison_rows, configurations, matched_comparison, pareto_figure
from benchmarks.sweep import BALANCE_NAME, FIXED_LENGTH, Run, balance
from components.data.records import Record, content_hash

DEFAULT_ROOT = CACHE / "pretrained"
# the light tier: every reported metric that needs no generation (what intermediate snapshots get)
LIGHT = ("forget_prob", "forget_truth_ratio", "forget_quality", "retain_prob", "holdout_prob", "mia_auc",
         "privleak", "forget_holdout_ks_p", "forget_holdout_auc", "world_facts_acc", "world_facts_prob")
POINT_METRICS = ("forget_quality", "model_utility", "forget_prob", "retain_prob", "holdout_prob", "forget_rouge",
                 "retain_rouge", "forget_truth_ratio", "retain_truth_ratio", "mia_auc", "privleak",
                 "forget_holdout_ks_p", "forget_holdout_auc", "world_facts_acc", "world_facts_prob",
                 "real_authors_acc", "real_authors_prob", "relearn_forget_prob", "relearn_recovery")
DIAGNOSTICS = ("mean_cos", "mean_xi", "mean_norm_ratio", "min_cos", "last_cos", "last_norm_ratio")
CONFIG_KEYS = ("forget_loss", "combiner", "balance", "lr", "steps", "kind")


@dataclass(frozen=True)
class Job(Run):
    """One unlearning run: light evaluation at ``light_steps``, full at ``full_steps``."""

    light_steps: tuple[int, ...]
    full_steps: tuple[int, ...]

    @property
    def steps(self) -> int:
        return max((*self.light_steps, *self.full_steps))

    def overrides(self) -> dict[str, Any]:
        return {"forget_loss": self.forget_loss, "lr": self.lr, "steps": self.steps} | FIXED_LENGTH | balance(
            self.combiner, self.balance)

    @property
    def name(self) -> str:
        return (f"{self.combiner}/{self.forget_loss} {BALANCE_NAME[self.combiner]}={self.balance:g} "
                f"lr={self.lr:g} seed={self.seed}")


def grid(losses: dict[str, tuple[tuple[float, ...], tuple[float, ...]]], *, lr: float, seeds: Sequence[int],
         light: tuple[int, ...], full: tuple[int, ...]) -> tuple[Job, ...]:
    """Seed-major, and within a seed the two combiners interleaved from the first balance on, so a
    budget cut drops the last pairs and repeats, never one side of a pair."""
    jobs = []
    for seed in seeds:
        for loss, (gammas, alphas) in losses.items():
            for gamma, alpha in zip(gammas, alphas):
                jobs += [Job(loss, "blur", gamma, lr, seed, light, full),
                         Job(loss, "weighted_sum", alpha, lr, seed, light, full)]
    return tuple(jobs)


# BLUR's gamma against the weighted sum's alpha (forget weight 1, so its effective forget weight is
# ~1/alpha under AdamW): from the demo's lesson, gamma ~0.3-0.5 x the forget weight a weighted sum needs.
# Pairs in priority order: the profile's gamma 0.1 first.
GRIDS = {
    "cpu": grid({"npo": ((0.1, 0.03), (10.0, 3.0)), "ga": ((0.1,), (10.0,))},
                lr=2e-5, seeds=(0, 1), light=(4,), full=(6, 8)),
    "gpu": grid({"npo": ((0.01, 0.03, 0.1, 0.3, 1.0), (1.0, 3.0, 10.0, 30.0, 100.0)),
                 "ga": ((0.01, 0.1, 1.0), (1.0, 10.0, 100.0)),
                 "simnpo": ((0.01, 0.1, 1.0), (1.0, 10.0, 100.0))},
                lr=2e-5, seeds=(0, 1, 2), light=(5,), full=(10, 20, 40)),
    "smoke": grid({"npo": ((0.1,), (10.0,))}, lr=1e-3, seeds=(0,), light=(1,), full=(2,)),
    # --world demo: the stop rule on the demo world and model (make run's method: BLUR-NPO gamma 0.1, lr 1e-3),
    # and the gentler balance the quality benchmark found best, against their weighted-sum counterparts
    "demo": grid({"npo": ((0.1, 0.01), (10.0, 100.0))}, lr=1e-3, seeds=(0, 1, 2), light=(), full=(20, 40, 80)),
    # --world muse: the same on the MUSE-News subset of benchmarks/muse_news.py (news text, the demo's model)
    "muse": grid({"npo": ((0.1, 0.01), (10.0, 100.0))}, lr=1e-3, seeds=(0, 1), light=(), full=(20, 40, 80)),
}


@dataclass
class PretrainedConfig:
    """What the benchmark runs and where it writes."""

    jobs: tuple[Job, ...] = GRIDS["cpu"]
    params: Path = PROFILE
    root: Path = DEFAULT_ROOT  # the pipeline folder: data/prepared, models/{target,oracle}; runs/ the run cache
    overrides: dict[str, Any] = field(default_factory=dict)
    budget_minutes: float = 75.0
    eval_retain: int | None = 24  # retain records evaluated (a fixed sample; unlearning uses all of them)
    knowledge_limit: dict[str, int] = field(default_factory=lambda: {"real_authors": 40})  # per set; absent = all
    probe_every: int = 2
    stop_tier: str = "light"  # the tier the stop step's model gets (full: with model utility; minutes more)
    probe_size: int = 32
    min_ks_p: float = 0.5
    fq_levels: tuple[float, ...] = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75)
    target_fq: float = 0.5
    target_utility_ratio: float = 0.95
    world_facts_points: float = 0.02
    tie_tolerance: float = 0.005
    out_dir: Path = RESULTS
    stem: str = "pretrained"
    mlflow: bool = True
    threads: int = 1


# --------------------------------------------------------------------------- the models


def knowledge_sets(bench: Bench, limits: dict[str, int], seed: int = 0) -> dict[str, list[Record]]:
    """The profile's knowledge sets, each cut to a fixed sample of ``limits[name]`` records where given."""
    from components.evaluation.knowledge import knowledge_wanted, load_knowledge_sets
    from components.paths import resolve_local

    if not knowledge_wanted(bench.config.eval.knowledge, bench.config.model):
        return {}
    root = Path(bench.info.get("config_root", PROFILE.parent))
    sets = load_knowledge_sets([resolve_local(p, root) for p in bench.config.eval.knowledge_sets])
    return {name: _sample(records, limits.get(name), seed) for name, records in sets.items()}


def _sample(records: Sequence[Record], n: int | None, seed: int) -> list[Record]:
    records = list(records)
    return records if n is None or n >= len(records) else random.Random(seed).sample(records, n)


class PretrainedEvaluator(CandidateEvaluator):
    """The pipeline's evaluator with the knowledge sets, in a light tier (no generation) and a full one."""

    def __init__(self, bench: Bench, knowledge: dict[str, list[Record]], eval_retain: int | None):
        from components.evaluation.evaluator import KNOWLEDGE_PREFIX

        splits = {"forget": bench.forget, "retain": _sample(bench.retain, eval_retain, 0), "holdout": bench.holdout}
        splits |= {KNOWLEDGE_PREFIX + name: records for name, records in knowledge.items()}
        super().__init__(bench, splits=splits)
        self.knowledge, self.sizes = list(knowledge), {name: len(records) for name, records in splits.items()}

    def metrics(self, role: str) -> dict[str, float | None]:
        from components.evaluation.evaluator import KNOWLEDGE_PREFIX, KNOWLEDGE_REPORTED, REPORTED

        rows = list(REPORTED) + [(f"{name}_{suffix}", metric, KNOWLEDGE_PREFIX + name)
                                 for name in self.knowledge for suffix, metric in KNOWLEDGE_REPORTED]
        return {key: self.ctx.metric(metric, role, split)["value"] for key, metric, split in rows
                if self.keys is None or key in self.keys}

    def evaluate(self, model: torch.nn.Module, tier: str) -> dict[str, float | None]:
        """Score ``model`` in place (eval mode, then back to train mode)."""
        was_training = model.training
        self.keys = LIGHT if tier == "light" else None
        try:
            return self(model)
        finally:
            self.keys = None
            model.train(was_training)


# --------------------------------------------------------------------------- one run


def run_job(bench: Bench, evaluator: PretrainedEvaluator, job: Job, config: PretrainedConfig) -> dict:
    """Unlearn, observing the holdout rule and evaluating in place; the run's points and logs."""
    from components.config import StopConfig
    from components.unlearning.stopping import build_stopper

    method = method_config(bench.config, **job.overrides())
    model = fresh_copy(bench)
    stop = StopConfig(rule="holdout", every=config.probe_every, probe=config.probe_size, min_ks_p=config.min_ks_p)
    stopper = build_stopper(model, bench.tokenizer, bench.forget, bench.holdout, method.model_copy(update={"stop": stop}),
                            max_length=bench.max_length, seed=job.seed)
    diagnostics: list[dict] = []
    points: list[dict] = []
    eval_seconds = 0.0

    def on_step(record: dict) -> None:
        nonlocal eval_seconds
        diagnostics.append(record)
        step = record["step"]
        record.update(stopper.check(step))
        kinds = [k for k, hit in (("fixed", step in (*job.light_steps, *job.full_steps)),
                                  ("stop", stopper.stopped_at == step)) if hit]
        if not kinds:
            return
        tier = "full" if step in job.full_steps or ("stop" in kinds and config.stop_tier == "full") else "light"
        started = time.perf_counter()
        metrics = evaluator.evaluate(model, tier)
        eval_seconds += time.perf_counter() - started
        for kind in kinds:
            points.append(_point(job, kind, step, tier, metrics, diagnostics, stopper))
        log(f"    {job.name} step {step} [{tier}{', stop' if 'stop' in kinds else ''}] "
            f"fq {fmt(metrics.get('forget_quality'))} fprob {fmt(metrics.get('forget_prob'))} "
            f"mu {fmt(metrics.get('model_utility'))} wf {fmt(metrics.get('world_facts_acc'))} "
            f"({time.perf_counter() - started:.0f}s)")

    seconds, error = unlearn(bench, model, method, job.seed, on_step)
    return {"name": job.name, "params": asdict(job), "points": points, "diagnostics": diagnostics,
            "stop": stopper.summary() | {"curve": stopper.readings}, "error": error,
            "seconds": round(seconds, 1), "eval_seconds": round(eval_seconds, 1),
            "train_seconds_per_step": round((seconds - eval_seconds) / max(1, len(diagnostics)), 2)}


def _point(job: Job, kind: str, step: int, tier: str, metrics: dict, diagnostics: list[dict], stopper) -> dict:
    rows = [d for d in diagnostics if d["step"] <= step]
    cos = [d["cos"] for d in rows]
    last = rows[-1]
    ratio = (last["forget_norm_sq"] / last["retain_norm_sq"]) ** 0.5 if last["retain_norm_sq"] > 0 else None
    probe = stopper.readings[-1] if stopper.readings else {}
    return (asdict(job) | {"kind": kind, "steps": step, "tier": tier}
            | {k: metrics.get(k) for k in POINT_METRICS} | diagnostics_summary(diagnostics, step)
            | {"min_cos": min(cos), "last_cos": cos[-1], "last_norm_ratio": ratio,
               "probe_ks_p": probe.get("probe_ks_p"), "stop_reason": stopper.reason if kind == "stop" else None})


# --------------------------------------------------------------------------- the sweep


def run_sweep(config: PretrainedConfig, bench: Bench | None = None) -> dict[str, Any]:
    """Every job (cached ones read back), the report rewritten after each; the raw results."""
    started = time.perf_counter()
    bench = bench or pretrained_bench(config.params, config.root, config.overrides)
    knowledge = knowledge_sets(bench, config.knowledge_limit)
    evaluator = PretrainedEvaluator(bench, knowledge, config.eval_retain)
    cache = Path(config.root) / "runs"
    key_base = _key_base(bench, config)
    where = machine() | ({"device": f"cuda ({torch.cuda.get_device_name(0)})"} if torch.cuda.is_available() else {})
    results = {"benchmark": "pretrained", "config": jsonable(asdict(config)), "machine": where,
               "setup": bench.info, "world": {"forget": len(bench.forget), "retain": len(bench.retain),
                                               "holdout": len(bench.holdout)},
               "eval_sizes": evaluator.sizes, "runs": [], "skipped": [], "cached": []}
    ref_path = cache / f"reference-{content_hash(key_base)}.json"
    if ref_path.exists():
        results["reference"] = harness.read_json(ref_path)
        for metric in ("truth_ratio", "mia_auc_mink"):  # all a candidate reads of another model (forget
            evaluator.ctx.metric(metric, "oracle", "forget")  # quality, privleak): the oracle's, not all of it
    else:
        ref_started = time.perf_counter()
        results["reference"] = evaluator.reference()
        results["reference_seconds"] = round(time.perf_counter() - ref_started, 1)
        write_json(ref_path, results["reference"])
    _write_partial(results, config, started)

    def run_one(job: Job) -> dict:
        run = run_job(bench, evaluator, job, config)
        log(f"    {job.name}: {run['train_seconds_per_step']}s/step, eval {run['eval_seconds']:.0f}s; "
            f"stop {run['stop']['stopped_at']} ({run['stop']['reason'][:40]})")
        return run

    def partial(progress: dict) -> None:
        results.update(progress)
        _write_partial(results, config, started)

    grid = harness.run_grid(config.jobs, run_one, name=lambda job: job.name, budget_minutes=config.budget_minutes,
                            cache=lambda job: cache / f"run-{content_hash(key_base | {'job': asdict(job)})}.json",
                            spent=time.perf_counter() - started, after_each=partial)
    results.update(grid)
    results["sweep_seconds"] = round(time.perf_counter() - started, 1)
    return results


def _key_base(bench: Bench, config: PretrainedConfig) -> dict:
    """What decides a run's numbers besides the job: the models, the data, the evaluation, the probe."""
    return {"root": str(Path(config.root).resolve()), "training": bench.info.get("training"),
            "params": Path(config.params).read_text(encoding="utf-8"), "overrides": config.overrides,
            "eval_retain": config.eval_retain, "knowledge_limit": config.knowledge_limit,
            "probe": [config.probe_every, config.probe_size, config.min_ks_p], "torch": torch.__version__,
            "relearn": bench.config.eval.relearn.model_dump()}


def _write_partial(results: dict, config: PretrainedConfig, started: float) -> None:
    results["wall_seconds"] = round(time.perf_counter() - started, 1)
    results["partial"] = True
    try:
        write_report(results, analyse(results, config), config)
    except Exception as error:  # a report of a partial sweep must never end the sweep
        log(f"    (partial report failed: {error!r})")


# --------------------------------------------------------------------------- analysis


def analyse(results: dict[str, Any], config: PretrainedConfig) -> dict[str, Any]:
    """Configurations (means over seeds), the matched comparison per forget loss, stop vs fixed, targets."""
    points = [p for run in results["runs"] for p in run["points"]]
    configs = configurations(points, CONFIG_KEYS, POINT_METRICS + DIAGNOSTICS)
    fixed = [c for c in configs if c["kind"] == "fixed"]
    full = [c for c in fixed if c["model_utility"] is not None]
    target = results["reference"]["target"]
    tolerance = _tie_tolerance(full, config)
    matched = {}
    for loss in dict.fromkeys(c["forget_loss"] for c in configs):
        blur = [c for c in full if c["forget_loss"] == loss and c["combiner"] == "blur"]
        ws = [c for c in full if c["forget_loss"] == loss and c["combiner"] == "weighted_sum"]
        light_b = [c for c in fixed if c["forget_loss"] == loss and c["combiner"] == "blur"]
        light_w = [c for c in fixed if c["forget_loss"] == loss and c["combiner"] == "weighted_sum"]
        matched[loss] = {
            "fq_vs_utility": comparison_rows(matched_comparison(blur, ws, tolerance=tolerance)),
            # every evaluated step count (light tier too): forget probability against world-facts accuracy
            "forget_prob_vs_world_facts": comparison_rows(matched_comparison(
                light_b, light_w, x="forget_prob", y="world_facts_acc", maximize_x=False, tolerance=0.0)),
            "fq_vs_world_facts": comparison_rows(matched_comparison(
                light_b, light_w, x="forget_quality", y="world_facts_acc", tolerance=0.0)),
        }
    return {"configurations": configs, "matched": matched, "targets": _targets(configs, matched, target, config),
            "stop_vs_fixed": _stop_vs_fixed(results), "tie_tolerance": tolerance,
            "seeds": max((c["seeds"] for c in configs), default=0)}


def _tie_tolerance(full: list[dict], config: PretrainedConfig) -> float:
    """A tie is within the utility's seed spread (the largest std over seeds of a full configuration),
    and at least ``config.tie_tolerance``."""
    spreads = [c.get("model_utility_std") or 0.0 for c in full if c["seeds"] > 1]
    return max([config.tie_tolerance, *spreads])


def _targets(configs: list[dict], matched: dict, target: dict, config: PretrainedConfig) -> dict:
    utility_bar = config.target_utility_ratio * (target.get("model_utility") or 0)
    wf = target.get("world_facts_acc")
    blur = [c for c in configs if c["forget_loss"] == "npo" and c["combiner"] == "blur"
            and c["model_utility"] is not None]
    meeting = [c for c in blur if (c["forget_quality"] or 0) >= config.target_fq
               and c["model_utility"] >= utility_bar
               and (wf is None or (c["world_facts_acc"] is not None and c["world_facts_acc"] >= wf - config.world_facts_points))]
    rows = matched.get("npo", {}).get("fq_vs_utility", [])
    return {
        "utility_bar": utility_bar, "world_facts_bar": None if wf is None else wf - config.world_facts_points,
        "blur_npo_meets_fq_utility_world_facts": bool(meeting),
        "best_meeting": max(meeting, key=lambda c: c["model_utility"]) if meeting else None,
        "best_blur_fq": max(blur, key=lambda c: c["forget_quality"] or 0) if blur else None,
        "levels_compared": len(rows),
        "blur_at_least_weighted_within_tolerance": bool(rows) and all(r["ours_wins"] for r in rows),
        "levels_blur_strictly_below": sum(not at_least_strictly(r) for r in rows),
    }


def _stop_vs_fixed(results: dict) -> list[dict]:
    """Per run: the model the holdout rule would have stopped at, next to the fixed-step models."""
    out = []
    for run in results["runs"]:
        stops = [p for p in run["points"] if p["kind"] == "stop"]
        fixed = sorted((p for p in run["points"] if p["kind"] == "fixed"), key=lambda p: p["steps"])
        out.append({"name": run["name"], "stopped_at": run["stop"]["stopped_at"], "reason": run["stop"]["reason"],
                    "stop": stops[0] if stops else None, "fixed": fixed, "curve": run["stop"]["curve"]})
    return out


# --------------------------------------------------------------------------- reporting


def write_report(results: dict[str, Any], analysis: dict[str, Any], config: PretrainedConfig) -> list[Path]:
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    configs = analysis["configurations"]
    fixed = [c for c in configs if c["kind"] == "fixed"]
    reference = results["reference"]
    losses = list(dict.fromkeys(c["forget_loss"] for c in configs)) or ["npo"]
    full = [(loss, [c for c in fixed if c["forget_loss"] == loss and c["model_utility"] is not None]) for loss in losses]
    every = [(loss, [c for c in fixed if c["forget_loss"] == loss]) for loss in losses]
    mu = reference["target"].get("model_utility")
    wf = reference["target"].get("world_facts_acc")
    has_wf = any(r.get("world_facts_acc") is not None for _, rows in every for r in rows)
    files = [
        pareto_figure(full, x="forget_quality", y="model_utility", path=out / f"{config.stem}_fq_vs_utility.png",
                      xlabel="forget quality (KS p-value, log)", ylabel="model utility (incl. knowledge sets)",
                      log_x=True, references=reference,
                      guides={"x": config.target_fq, "y": config.target_utility_ratio * mu if mu else None},
                      title=f"{results['setup'].get('base')}: forget quality vs model utility (full evaluations)"),
    ]
    if has_wf:  # a model without the knowledge sets (the demo) has no world-facts axis
        files.append(pareto_figure(every, x="forget_prob", y="world_facts_acc", path=out / f"{config.stem}_forget_prob_vs_world_facts.png",
                      xlabel="forget-answer probability (lower is more forgotten)", ylabel="world-facts accuracy",
                      maximize_x=False, references=reference,
                      guides={"y": wf - config.world_facts_points if wf is not None else None},
                      title=f"{results['setup'].get('base')}: forget probability vs world-facts accuracy (every evaluated step)"))
    return files + harness.write_sweep(results, analysis, out, config.stem, render)


def render(results: dict[str, Any]) -> str:
    """The write-up of a results JSON: its analysis, with the settings it was run with."""
    return markdown(results, results["analysis"], SimpleNamespace(**results["config"]))


REFERENCE = [("model", "model"), ("forget quality", "forget_quality"), ("model utility", "model_utility"),
             ("forget prob", "forget_prob"), ("holdout prob", "holdout_prob"), ("world facts acc", "world_facts_acc"),
             ("real authors acc", "real_authors_acc"), ("MIA AUC (forget vs holdout)", "mia_auc")]
MATCHED = [("level", "level"), ("BLUR", "ours_y"), ("weighted sum", "theirs_y"), ("margin", "margin"),
           ("BLUR at least as good", lambda r: "yes" if r["ours_wins"] else "no")]
MATCHED_LABELS = {"fq_vs_utility": "best model utility at forget quality >= level",
                  "fq_vs_world_facts": "best world-facts accuracy at forget quality >= level",
                  "forget_prob_vs_world_facts": "best world-facts accuracy at forget probability <= level"}
STOPS = [("run", "name"), ("stopped at", lambda s: s["stopped_at"] if s["stopped_at"] is not None else "– (cap)"),
         ("reason", lambda s: s["reason"].split(":")[0]),
         *((h, lambda s, k=k: (s["stop"] or {}).get(k)) for h, k in (
             ("fq (stop)", "forget_quality"), ("utility (stop)", "model_utility"), ("forget prob (stop)", "forget_prob"),
             ("forget-vs-holdout AUC (stop)", "forget_holdout_auc"))),
         ("fq at fixed steps", lambda s: ", ".join(f"{p['steps']}: {fmt(p['forget_quality'])}" for p in s["fixed"])),
         ("utility at the last step", lambda s: s["fixed"][-1]["model_utility"] if s["fixed"] else None)]
CONFIGURATIONS = [
    ("loss", "forget_loss"), ("combiner", "combiner"), ("balance", "balance", 3), ("steps", "steps"),
    ("kind", "kind"), ("fq", lambda c: mean_std(c, "forget_quality")), ("utility", "model_utility"),
    ("forget prob", "forget_prob"), ("holdout prob", "holdout_prob"), ("retain prob", "retain_prob"),
    ("wf acc", "world_facts_acc"), ("ra acc", "real_authors_acc"), ("fh AUC", "forget_holdout_auc"), ("privleak", "privleak"),
    ("cos", "mean_cos", 2), ("min cos", "min_cos", 2),
    ("last cos", "last_cos", 2), ("xi", "mean_xi", 3),
    ("ratio", "last_norm_ratio", 1)]
RUN_TIMES = [("run", "name"), ("seconds", "seconds"), ("training s/step", "train_seconds_per_step"),
             ("evaluation s", "eval_seconds")]


def markdown(results: dict[str, Any], analysis: dict[str, Any], config: PretrainedConfig) -> str:
    """The write-up: prose from ``templates/pretrained.md``, every table rendered from ``results``."""
    parts, ref, t, runs = harness.template("pretrained"), results["reference"], analysis["targets"], results["runs"]
    matched = "".join(f"### {loss}: {label}\n\n{table(block[key], MATCHED)}\n\n"
                      for loss, block in analysis["matched"].items() for key, label in MATCHED_LABELS.items() if block[key])
    rows = sorted(analysis["configurations"], key=lambda c: (c["forget_loss"], c["combiner"], c["balance"], c["kind"], c["steps"]))
    tail = (f"\n## Run times\n\n{table(runs, RUN_TIMES)}\n" if runs else "") + harness.tail(results)
    best = (f" ({_describe(t['best_meeting'])})" if t["best_meeting"] else
            (f"; its highest forget quality: {_describe(t['best_blur_fq'])}" if t["best_blur_fq"] else ""))
    return parts["main"].format(
        c=config, m=results["machine"], w=results["world"], t=t, wall=results["wall_seconds"] / 60,
        partial="**Partial: the sweep was still running when this was written.** " if results.get("partial") else "",
        s={k: results["setup"].get(k) for k in ("base", "dtype", "max_length", "root")},
        sizes=", ".join(f"{k} {v}" for k, v in results["eval_sizes"].items()),
        reference=table([r | {"model": name} for name, r in ref.items()], REFERENCE), utility_bar=fmt(t["utility_bar"]),
        wf_bar=fmt(t["world_facts_bar"]), met_fq="met" if t["blur_npo_meets_fq_utility_world_facts"] else "NOT met",
        best=best, tolerance=fmt(analysis["tie_tolerance"]),
        met_matched="met" if t["blur_at_least_weighted_within_tolerance"] else "NOT met",
        seeds_note=f"{analysis['seeds']} seeds: the tolerance is the largest seed spread (std) of a configuration's utility)"
        if analysis["seeds"] > 1 else "one seed, so no seed spread: the tolerance is fixed)",
        matched=matched, stops=table(analysis["stop_vs_fixed"], STOPS), relearn=_relearn_section(parts["relearn"], ref, rows),
        configurations=table(rows, CONFIGURATIONS), tail=tail).rstrip("\n") + "\n"


def _relearn_section(text: str, ref: dict, configs: list[dict]) -> str:
    """The relearning attack on every fully evaluated model, next to the same attack on the oracle."""
    rows = sorted((c for c in configs if c["kind"] == "fixed" and c.get("relearn_forget_prob") is not None),
                  key=lambda c: (c["forget_loss"], c["steps"], c["combiner"], c["balance"]))
    oracle = ref.get("oracle", {})
    after = oracle.get("relearn_forget_prob")
    columns = [("loss", "forget_loss"), ("combiner", "combiner"), ("balance", "balance", 3),
               ("steps", "steps"), ("fq", lambda c: mean_std(c, "forget_quality")), ("forget prob", "forget_prob"),
               ("after", lambda c: mean_std(c, "relearn_forget_prob")), ("recovery", lambda c: mean_std(c, "relearn_recovery")),
               ("gap", lambda c: None if after is None else c["relearn_forget_prob"] - after)]
    return text.format(oracle_after=fmt(after), oracle_recovery=fmt(oracle.get("relearn_recovery")),
                       table=table(rows, columns)) if rows else ""


def _describe(row: dict | None) -> str:
    if not row:
        return "–"
    return (f"{row['combiner']} {BALANCE_NAME[row['combiner']]}={row['balance']:g}, {row['steps']} steps ({row['kind']}): "
            f"forget quality {fmt(row['forget_quality'])}, utility {fmt(row['model_utility'])}, "
            f"world facts {fmt(row['world_facts_acc'])}")


def log_to_mlflow(results: dict[str, Any], analysis: dict[str, Any], config: PretrainedConfig, files: list[Path]) -> str:
    children = [{"name": run["name"], "params": run["params"],
                 "metrics_by_step": {p["steps"]: {f"{p['kind']}.{k}": p[k] for k in POINT_METRICS
                                                  if isinstance(p.get(k), (int, float))} for p in run["points"]},
                 "diagnostics": run.get("diagnostics") or []} for run in results["runs"]]
    t = analysis["targets"]
    return harness.log_benchmark(
        config.out_dir, "benchmark-pretrained", run_name=config.stem,
        params={"jobs": [j.name for j in config.jobs], "overrides": config.overrides, "threads": config.threads,
                "eval_sizes": results["eval_sizes"], **{f"machine.{k}": v for k, v in results["machine"].items()}},
        metrics={"wall_seconds": results["wall_seconds"], "runs": len(results["runs"]),
                 "skipped": len(results["skipped"]),
                 "target_blur_npo_meets": float(t["blur_npo_meets_fq_utility_world_facts"]),
                 "target_blur_at_least_weighted": float(t["blur_at_least_weighted_within_tolerance"]),
                 **harness.reference_metrics(results)},
        children=children, artifacts=files)


# --------------------------------------------------------------------------- entry point


def run(config: PretrainedConfig, bench: Bench | None = None) -> tuple[dict, dict, list[Path]]:
    """Sweep (resuming from the run cache), analyse, write the report; log to MLflow if asked."""
    return harness.run_study(config, lambda: run_sweep(config, bench) | {"partial": False}, analyse, write_report,
                             log_to_mlflow)


def demo_bench_for(world: str) -> Bench:
    """The demo world's, or the MUSE-News subset's, target and oracle on the demo model (cached)."""
    from benchmarks.common import demo_bench
    from benchmarks.muse_subset import MuseSubset, muse_bench
    from components.config import load_config

    if world == "demo":
        bench = demo_bench(load_config(REPO / "params.yaml"))
        bench.info |= {"base": "demo tiny Llama (from scratch)", "max_length": bench.max_length}
        return bench
    bench = muse_bench(MuseSubset())
    bench.info |= {"base": "demo tiny Llama on MUSE-News (from scratch)", "max_length": bench.max_length}
    return bench


app = harness.cli(__doc__)


@app.command()
def main(grid: str = harness.typer.Option(None, help="cpu (default), gpu, smoke, demo, muse"),
         world: str = harness.typer.Option("pretrained", help="pretrained | demo (the demo world and tiny model) | "
                                           "muse (the MUSE-News subset on the demo model)"),
         smoke: bool = harness.typer.Option(False, "--smoke", help="tiny Llama, tiny grid, seconds (= --grid smoke)"),
         root: Path = harness.typer.Option(DEFAULT_ROOT, help="pipeline folder with the target/oracle"),
         out: Path = harness.OUT, stem: str = harness.typer.Option(None), budget_minutes: float = 75.0,
         eval_retain: int = harness.typer.Option(24, help="retain records evaluated (0: all)"), threads: int = 1,
         no_mlflow: bool = harness.NO_MLFLOW, report_only: bool = harness.REPORT_ONLY) -> None:
    grid_name = "smoke" if smoke else (grid or {"demo": "demo", "muse": "muse"}.get(world, "cpu"))
    if world in ("demo", "muse") and not smoke:
        stem = stem or f"pretrained_{world}_stop"
    stem = stem or ("pretrained" if grid_name == "cpu" else f"pretrained_{grid_name}")
    if report_only:
        return harness.report_only(out, stem, render)
    config = PretrainedConfig(jobs=GRIDS[grid_name], root=root, budget_minutes=budget_minutes,
                              eval_retain=eval_retain or None, out_dir=out, threads=threads, stem=stem,
                              mlflow=not no_mlflow, stop_tier="full" if grid_name == "gpu" else "light")
    if grid_name == "gpu":  # evaluation is cheap there: every retain record and both knowledge sets whole
        config = replace(config, eval_retain=None, knowledge_limit={})
    bench = None
    if grid_name == "smoke":
        config = replace(config, knowledge_limit={"world_facts": 6, "real_authors": 4}, probe_every=1)
        bench = smoke_bench(Path(root) if root != DEFAULT_ROOT else Path(out) / "smoke-cache")
        config.root = Path(bench.info["cache"])
    if world in ("demo", "muse") and not smoke:
        harness.init_process(threads)
        bench = demo_bench_for(world)
        config = replace(config, root=Path(bench.info["cache"]), probe_every=5, stop_tier="full")
    results, analysis, files = run(config, bench)
    log(f"done in {results['wall_seconds'] / 60:.1f} min ({len(results['runs'])} runs, "
        f"{len(results['skipped'])} cut); files: " + ", ".join(str(p) for p in files))


if __name__ == "__main__":
    app()
