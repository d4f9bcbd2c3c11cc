"""The sweep the comparison studies share (quality, muse_news): a grid of forget loss x combiner x balance x
learning rate x seed, each run unlearned once and evaluated after each of its step counts (snapshots)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Sequence

from benchmarks.common import (Bench, CandidateEvaluator, UnlearnRun, diagnostics_summary, load_snapshot, method_config,
                               unlearn_with_snapshots)
from benchmarks import harness
from benchmarks.harness import fmt, jsonable, log, machine

POINT_METRICS = ("forget_quality", "model_utility", "forget_prob", "retain_prob", "forget_rouge", "retain_rouge",
                 "forget_truth_ratio", "retain_truth_ratio", "mia_auc", "privleak", "extraction_strength")
DIAGNOSTICS = ("mean_cos", "mean_xi", "mean_norm_ratio")
CONFIG_KEYS = ("forget_loss", "combiner", "balance", "lr", "steps")
BALANCE_NAME = {"blur": "gamma", "weighted_sum": "alpha"}


#: what makes a run of fixed length whose every step count is a shorter run (no schedule, no checkpoints)
FIXED_LENGTH = {"epochs": None, "checkpoint_every": 0, "scheduler": "constant", "warmup_steps": 0}


def balance(combiner: str, value: float) -> dict[str, Any]:
    """The combiner and its balance as ``unlearn`` keys. BLUR: ``gamma`` = value. Weighted sum: forget weight 1,
    retain weight ``alpha`` = value."""
    return {"combiner": combiner} | ({"gamma": value} if combiner == "blur" else {"gamma": 1.0, "alpha": value})


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
class Run:
    """One unlearning run of a forget loss under a combiner at a balance (BLUR's gamma, the weighted sum's alpha)."""

    forget_loss: str
    combiner: str
    balance: float
    lr: float
    seed: int


@dataclass(frozen=True)
class Job(Run):
    """One unlearning run, evaluated after each of ``eval_steps`` steps."""

    eval_steps: tuple[int, ...]

    def overrides(self) -> dict[str, Any]:
        return {"forget_loss": self.forget_loss, "lr": self.lr} | balance(self.combiner, self.balance)

    @property
    def name(self) -> str:
        return f"{self.combiner}/{self.forget_loss} {BALANCE_NAME[self.combiner]}={self.balance:g} lr={self.lr:g} seed={self.seed}"

    def unlearn(self, bench: Bench) -> UnlearnRun:
        return unlearn_with_snapshots(bench, method_config(bench.config, **self.overrides()), self.seed, self.eval_steps)

    def params(self) -> dict[str, Any]:
        return asdict(self) | {"eval_steps": list(self.eval_steps)}

    def point(self, run: UnlearnRun, steps: int, eval_seconds: float) -> dict[str, Any]:
        """The point's fields besides the metrics and diagnostics: the job, its step count and timings."""
        return self.params() | {"steps": steps, "unlearn_seconds": round(run.seconds * steps / max(self.eval_steps), 2),
                                "eval_seconds": round(eval_seconds, 2)}


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




def jobs_of(sweeps: Sequence[Sweep]) -> list[Job]:
    """Seed-major order: every configuration's first seed before any second seed, so a
    budget cut drops repeats, not configurations."""
    seeds = sorted({s for sweep in sweeps for s in sweep.seeds})
    return [job for seed in seeds for sweep in sweeps if seed in sweep.seeds for job in sweep.jobs(seed)]


def run_sweep(bench: Bench, config: Any, metrics_kept: Sequence[str] = POINT_METRICS, *, jobs: Sequence | None = None,
              count_setup: bool = True) -> dict[str, Any]:
    """Every job (``config.jobs()`` unless given) within ``config.budget_minutes`` (the bench's setup counted
    unless ``count_setup`` is False), unlearned once and evaluated at each of its step counts; the raw results
    (one point per model). A job has ``name``, ``unlearn(bench)``, ``params()`` and ``point(run, steps,
    eval_seconds)``; ``metrics_kept``: the evaluator's keys stored per point."""
    started = time.perf_counter()
    evaluator = CandidateEvaluator(bench)
    reference = evaluator.reference()

    def run_one(job) -> dict:
        job_started = time.perf_counter()
        run = job.unlearn(bench)
        points, by_step = [], {}
        for steps, state in sorted(run.snapshots.items()):
            eval_started = time.perf_counter()
            metrics = evaluator(load_snapshot(bench, state))
            points.append({k: metrics.get(k) for k in metrics_kept} | diagnostics_summary(run.diagnostics, steps)
                          | job.point(run, steps, time.perf_counter() - eval_started))
            by_step[steps] = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        if points:
            log(f"    {job.name}: " + " ".join(f"{k} {fmt(points[-1].get(k))}" for k in (*metrics_kept[:2], "mean_cos", "mean_xi")))
        return {"name": job.name, "params": job.params(), "metrics_by_step": by_step, "diagnostics": run.diagnostics,
                "error": run.error, "seconds": round(time.perf_counter() - job_started, 1), "points": points}

    setup = bench.info.get("setup_seconds", 0.0) if count_setup else 0.0
    grid = harness.run_grid(jobs or config.jobs(), run_one, name=lambda job: job.name,
                            budget_minutes=config.budget_minutes, spent=setup + time.perf_counter() - started)
    return {"benchmark": "quality", "config": jsonable(asdict(config)), "machine": machine(), "setup": bench.info,
            "world": {"forget": len(bench.forget), "retain": len(bench.retain), "holdout": len(bench.holdout)},
            "reference": reference, "points": [p for run in grid["runs"] for p in run.pop("points")],
            "runs": grid["runs"], "skipped": grid["skipped"], "sweep_seconds": round(time.perf_counter() - started, 1)}


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
