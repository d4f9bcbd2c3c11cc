"""Optimizer: does BLUR separate from the weighted sum when the step keeps the direction (SGD) rather
than rescaling it per coordinate (AdamW)? The demo world (minutes, one thread); ``--world pretrained``: SmolLM2.

How it works: ``benchmarks/README.md``, appendix, ``benchmarks.optimizers``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from benchmarks import harness
from benchmarks.common import (Bench, UnlearnRun, demo_bench, fresh_copy, method_config, pretrained_bench,
                               smoke_bench, unlearn)
from benchmarks.harness import REPO, RESULTS, fmt, log, machine, mean_std, table
from benchmarks.pareto import at_least_strictly, comparison_rows, configurations, matched_comparison, pareto_figure
from benchmarks.sweep import BALANCE_NAME, FIXED_LENGTH, balance, run_sweep as sweep_jobs

POINT_METRICS = ("forget_quality", "model_utility", "forget_prob", "retain_prob", "holdout_prob", "mia_auc",
                 "privleak", "forget_holdout_auc")
UPDATE_METRICS = ("direction_ratio", "update_ratio", "cos_u_d", "cos_u_gf", "cos_d_gf", "kept")
DIAGNOSTICS = ("mean_cos", "mean_xi", "mean_norm_ratio") + tuple(f"mean_{k}" for k in UPDATE_METRICS)
CONFIG_KEYS = ("optimizer", "forget_loss", "combiner", "balance", "lr", "steps")


@dataclass(frozen=True)
class Optimizer:
    """An optimizer setting: ``unlearn.optimizer``, ``unlearn.momentum`` and its learning rate."""

    name: str
    optimizer: str
    lr: float
    momentum: float = 0.0


@dataclass(frozen=True)
class Job:
    optimizer: Optimizer
    forget_loss: str
    combiner: str
    balance: float
    seed: int
    eval_steps: tuple[int, ...]

    def overrides(self) -> dict[str, Any]:
        o = self.optimizer
        return ({"forget_loss": self.forget_loss, "optimizer": o.optimizer, "lr": o.lr, "momentum": o.momentum,
                 "steps": max(self.eval_steps)} | FIXED_LENGTH | balance(self.combiner, self.balance))

    @property
    def name(self) -> str:
        return f"{self.optimizer.name} {self.combiner}/{self.forget_loss} {BALANCE_NAME[self.combiner]}={self.balance:g} seed={self.seed}"

    def unlearn(self, bench: Bench) -> UnlearnRun:
        return run_job(bench, self)

    def params(self) -> dict[str, Any]:
        return asdict(self) | {"optimizer": self.optimizer.name, "lr": self.optimizer.lr,
                               "momentum": self.optimizer.momentum}

    def point(self, run: UnlearnRun, steps: int, eval_seconds: float) -> dict[str, Any]:
        """The point's fields besides the metrics and diagnostics: the job, its step count and the update's means."""
        rows = [d for d in run.diagnostics if d["step"] <= steps]
        return ({k: v for k, v in self.params().items() if k != "eval_steps"} | {"steps": steps}
                | {f"mean_{k}": _mean([d[k] for d in rows]) for k in UPDATE_METRICS})


# With clipping at 1 and ||d|| mostly above it, an SGD step moves the weights by lr; AdamW at 1e-3
# moves each of the 0.79M coordinates by ~1e-3 (a step of norm ~0.9): SGD at lr 1 is the like-for-like.
OPTIMIZERS = (Optimizer("adamw", "adamw", 1e-3), Optimizer("sgd", "sgd", 1.0),
              Optimizer("sgd-momentum", "sgd", 0.1, momentum=0.9))
PAIRS = ((0.003, 300.0), (0.01, 100.0), (0.1, 10.0))  # BLUR gamma against the weighted sum's alpha


def grid(optimizers=OPTIMIZERS, pairs=PAIRS, *, loss: str = "npo", seeds=(0, 1), eval_steps=(40, 80)) -> tuple[Job, ...]:
    return tuple(Job(o, loss, combiner, balance, seed, eval_steps) for seed in seeds for o in optimizers
                 for gamma, alpha in pairs for combiner, balance in (("blur", gamma), ("weighted_sum", alpha)))


# SmolLM2-135M (pretrained/params.yaml): AdamW at the profile's 2e-5 moves each of the 135M coordinates
# by ~2e-5 (a step of norm ~0.23), so SGD at 0.25 (clipped at 1) is the like-for-like step length.
PRETRAINED_OPTIMIZERS = (Optimizer("adamw", "adamw", 2e-5), Optimizer("sgd", "sgd", 0.25),
                         Optimizer("sgd-momentum", "sgd", 0.025, momentum=0.9))
GRIDS = {"default": grid(), "smoke": grid(pairs=((0.1, 10.0),), seeds=(0,), eval_steps=(1, 2)),
         "pretrained": grid(PRETRAINED_OPTIMIZERS, pairs=((0.1, 10.0),), seeds=(0,), eval_steps=(4, 8))}


@dataclass
class OptimizerConfig:
    jobs: tuple[Job, ...] = GRIDS["default"]
    params: Path = REPO / "params.yaml"
    overrides: dict[str, Any] = field(default_factory=dict)
    budget_minutes: float = 40.0
    tie_tolerance: float = 0.005
    out_dir: Path = RESULTS
    stem: str = "optimizers"
    mlflow: bool = True
    threads: int = 1


# --------------------------------------------------------------------------- the update, measured


class UpdateMeter:
    """Hooks on the parameters and on the optimizer that measure the actual update of each step.

    A parameter's post-accumulate hook sees its gradient after each backward pass; the first of a
    step is the forget gradient (the lower level runs first; one micro-batch per level). The
    optimizer's pre-step hook sees the combined, clipped direction in ``.grad`` and the weights
    before the step; the post-step hook the weights after it.
    """

    def __init__(self, model: torch.nn.Module, gamma: float):
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.gamma, self.records, self._handles = gamma, [], []
        self._seen = [0] * len(self.params)
        self._gf: list[torch.Tensor | None] = [None] * len(self.params)
        self._before: list[torch.Tensor] = []
        self._d: list[torch.Tensor] = []
        for index, p in enumerate(self.params):
            self._handles.append(p.register_post_accumulate_grad_hook(lambda p, i=index: self._grad(i, p)))
        self._handles.append(register_optimizer_step_pre_hook(self._pre))
        self._handles.append(register_optimizer_step_post_hook(self._post))

    def _grad(self, index: int, p: torch.Tensor) -> None:
        if self._seen[index] % 2 == 0:  # the first backward of the step: the forget level
            self._gf[index] = p.grad.detach().clone()
        self._seen[index] += 1

    def _pre(self, optimizer, args, kwargs) -> None:
        self._before = [p.detach().clone() for p in self.params]
        self._d = [p.grad.detach().clone() for p in self.params]

    def _post(self, optimizer, args, kwargs) -> None:
        lr = optimizer.param_groups[0]["lr"]
        u = [(b - p.detach()) / lr for b, p in zip(self._before, self.params)]
        gf = [g if g is not None else torch.zeros_like(p) for g, p in zip(self._gf, self.params)]

        def dot(a, b) -> float:
            return float(sum((x.double() * y.double()).sum() for x, y in zip(a, b)))

        gf_sq, d_sq, u_sq = dot(gf, gf), dot(self._d, self._d), dot(u, u)
        rate = self.gamma * gf_sq
        self.records.append({
            "direction_ratio": dot(self._d, gf) / rate if rate > 0 else math.nan,
            "update_ratio": dot(u, gf) / rate if rate > 0 else math.nan,
            "cos_u_d": dot(u, self._d) / math.sqrt(u_sq * d_sq) if u_sq * d_sq > 0 else math.nan,
            "cos_u_gf": dot(u, gf) / math.sqrt(u_sq * gf_sq) if u_sq * gf_sq > 0 else math.nan,
            "cos_d_gf": dot(self._d, gf) / math.sqrt(d_sq * gf_sq) if d_sq * gf_sq > 0 else math.nan,
            "update_norm": math.sqrt(u_sq) * lr, "direction_norm": math.sqrt(d_sq),
        })
        last = self.records[-1]  # the forget-descent rate per unit step length the update kept of the direction's
        last["kept"] = last["cos_u_gf"] / last["cos_d_gf"] if last["cos_d_gf"] else math.nan
        self._gf = [None] * len(self.params)
        self._seen = [0] * len(self.params)

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


# --------------------------------------------------------------------------- running


def run_job(bench: Bench, job: Job) -> UnlearnRun:
    """Unlearn with the update meter on, keeping the weights at each evaluated step count."""
    method = method_config(bench.config, **job.overrides())
    model = fresh_copy(bench)
    meter = UpdateMeter(model, method.gamma)
    diagnostics, snapshots = [], {}

    def on_step(record: dict) -> None:
        record.update(meter.records[-1])
        diagnostics.append(record)
        if record["step"] in job.eval_steps:
            snapshots[record["step"]] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    try:
        seconds, error = unlearn(bench, model, method, job.seed, on_step)
    finally:
        meter.close()
    return UnlearnRun(snapshots, diagnostics, round(seconds, 1), error)


def run_sweep(bench: Bench, config: OptimizerConfig) -> dict[str, Any]:
    """Every job within the budget, each evaluated at its step counts; the raw results (one point per model)."""
    results = sweep_jobs(bench, config, POINT_METRICS, jobs=config.jobs, count_setup=False)
    results.pop("config")
    return results | {"benchmark": "optimizers", "jobs": [j.params() for j in config.jobs]}


def _mean(values: Sequence[float]) -> float | None:
    present = [v for v in values if v is not None and not math.isnan(v)]
    return sum(present) / len(present) if present else None


# --------------------------------------------------------------------------- analysis and report


def analyse(results: dict[str, Any], config: OptimizerConfig) -> dict[str, Any]:
    configs = configurations(results["points"], CONFIG_KEYS, POINT_METRICS + DIAGNOSTICS)
    matched = {}
    for name in dict.fromkeys(c["optimizer"] for c in configs):
        blur = [c for c in configs if c["optimizer"] == name and c["combiner"] == "blur"]
        ws = [c for c in configs if c["optimizer"] == name and c["combiner"] == "weighted_sum"]
        rows = matched_comparison(blur, ws, tolerance=config.tie_tolerance)
        by_prob = matched_comparison(blur, ws, x="forget_prob", maximize_x=False, tolerance=config.tie_tolerance)
        margins = [r["margin"] for r in rows if r["margin"] is not None]
        matched[name] = {"fq_vs_utility": comparison_rows(rows), "by_forget_prob": comparison_rows(by_prob),
                         "levels": len(rows), "blur_at_least_within_tolerance": sum(r["ours_wins"] for r in rows),
                         "blur_at_least_strictly": sum(at_least_strictly(r) for r in rows),
                         "by_prob_within_tolerance": sum(r["ours_wins"] for r in by_prob), "by_prob_levels": len(by_prob),
                         "mean_margin": _mean(margins), "min_margin": min(margins) if margins else None,
                         "max_margin": max(margins) if margins else None}
    return {"configurations": configs, "matched": matched}


def write_report(results: dict[str, Any], analysis: dict[str, Any], config: OptimizerConfig) -> list[Path]:
    configs = analysis["configurations"]
    panels = [(name, [c for c in configs if c["optimizer"] == name]) for name in dict.fromkeys(c["optimizer"] for c in configs)]
    files = [pareto_figure(panels, x="forget_quality", y="model_utility",
                           path=Path(config.out_dir) / f"{config.stem}_fq_vs_utility.png",
                           xlabel="forget quality (KS p-value, log)", ylabel="model utility", log_x=True,
                           references=results["reference"], title="Demo world: BLUR vs weighted sum per optimizer")]
    return files + harness.write_sweep(results, analysis, config.out_dir, config.stem, renderer(config.stem))


def renderer(stem: str):
    """The write-up of ``<stem>.json`` from its stored analysis."""
    return lambda results: markdown(results, results["analysis"], OptimizerConfig(stem=stem))


MATCHED = [("optimizer", "optimizer"), ("levels", "levels"), ("BLUR >= weighted (±tol)", "blur_at_least_within_tolerance"),
           ("strictly", "blur_at_least_strictly"), ("mean margin", "mean_margin"), ("min margin", "min_margin"),
           ("max margin", "max_margin"),
           ("by forget prob (±tol)", lambda b: f"{b['by_prob_within_tolerance']} of {b['by_prob_levels']}")]
CONFIGURATIONS = [
    ("optimizer", "optimizer"), ("combiner", "combiner"), ("balance", "balance", 3), ("steps", "steps"),
    ("seeds", "seeds"), ("forget quality", lambda c: mean_std(c, "forget_quality")),
    ("model utility", lambda c: mean_std(c, "model_utility")), ("forget prob", "forget_prob"), ("fh AUC", "forget_holdout_auc"),
    *((h, lambda c, k=k: fmt(c[k], 3)) for h, k in (
        ("cos(g_r,g_f)", "mean_cos"), ("xi", "mean_xi"), ("dir", "mean_direction_ratio"), ("upd", "mean_update_ratio"),
        ("cos(u,d)", "mean_cos_u_d"), ("cos(u,g_f)", "mean_cos_u_gf"), ("cos(d,g_f)", "mean_cos_d_gf"), ("kept", "mean_kept")))]


def markdown(results: dict[str, Any], analysis: dict[str, Any], config: OptimizerConfig) -> str:
    """The write-up: prose from ``templates/optimizers.md``, every table rendered from ``results``."""
    rows = sorted(analysis["configurations"], key=lambda c: (c["optimizer"], c["combiner"], c["balance"], c["steps"]))
    matched = [b | {"optimizer": name, "blur_at_least_within_tolerance": str(b["blur_at_least_within_tolerance"]),
                    "blur_at_least_strictly": str(b["blur_at_least_strictly"])} for name, b in analysis["matched"].items()]
    return harness.template("optimizers")["main"].format(
        stem=config.stem, m=results["machine"], w=results["world"], wall=results["wall_seconds"] / 60,
        matched=table(matched, MATCHED), configurations=table(rows, CONFIGURATIONS),
        tail=harness.tail(results)).rstrip("\n") + "\n"


def run(config: OptimizerConfig, bench: Bench | None = None) -> tuple[dict, dict, list[Path]]:
    from components.config import load_config

    def sweep() -> dict:
        return run_sweep(bench or demo_bench(load_config(config.params).with_overrides(config.overrides)), config)

    def mlflow(results: dict, analysis: dict, config: OptimizerConfig, files: list[Path]) -> str:
        return harness.log_benchmark(
            config.out_dir, "benchmark-optimizers", run_name=config.stem,
            params={"jobs": [j.name for j in config.jobs], "threads": config.threads},
            metrics={"wall_seconds": results["wall_seconds"], "runs": len(results["runs"])},
            children=results["runs"], artifacts=files)

    return harness.run_study(config, sweep, analyse, write_report, mlflow)


app = harness.cli(__doc__)


@app.command()
def main(smoke: bool = harness.typer.Option(False, "--smoke"), out: Path = harness.OUT,
         stem: str = harness.typer.Option(None), budget_minutes: float = 40.0,
         world: str = harness.typer.Option("demo", help="demo | pretrained (SmolLM2's target and oracle, a smaller grid)"),
         only: str = harness.typer.Option(None, help="run only the jobs whose name starts with one of these (comma-separated)"),
         no_mlflow: bool = harness.NO_MLFLOW, report_only: bool = harness.REPORT_ONLY) -> None:
    grid_name = "smoke" if smoke else ("pretrained" if world == "pretrained" else "default")
    stem = stem or {"smoke": "optimizers_smoke", "pretrained": "optimizers_pretrained"}.get(grid_name, "optimizers")
    if report_only:
        return harness.report_only(out, stem, renderer(stem))
    jobs = GRIDS[grid_name]
    if only:
        jobs = tuple(j for j in jobs if j.name.startswith(tuple(p.strip() for p in only.split(","))))
    config = OptimizerConfig(jobs=jobs, budget_minutes=budget_minutes, out_dir=out, stem=stem, mlflow=not no_mlflow)
    bench = None
    if grid_name == "pretrained":
        harness.init_process(config.threads)
        bench = pretrained_bench()
    if smoke:
        bench = smoke_bench(Path(out) / "smoke-cache")
    results, _, files = run(config, bench)
    log(f"done in {results['wall_seconds'] / 60:.1f} min; " + ", ".join(str(p) for p in files))


if __name__ == "__main__":
    app()
