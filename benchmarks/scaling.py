"""Scaling: how step and evaluation time grow with the forget set and the model (~5-10 min; README appendix)."""

import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks import harness
from benchmarks.harness import log, machine, table
from benchmarks.workload import DEMO, LLAMA_20M, ModelSize, StepCostConfig, build_workload, time_steps
from components.config import Config, EvalConfig
from components.data.demo_world import generate_world
from components.evaluation import evaluate_models
from components.modeling.demo import train_demo_tokenizer
from components.modeling.io import LoadedModel

app = harness.cli(__doc__)  # the command: main, at the end
MID_5M = ModelSize("llama-5M", 256, 704, 6, 4)


@dataclass
class ScalingConfig:
    forget_authors: tuple[int, ...] = (1, 4, 16)
    sizes: tuple[ModelSize, ...] = (DEMO, MID_5M, LLAMA_20M)
    size_table_forget_authors: int = 4
    retain_authors: int = 40
    holdout_authors: int = 10
    rounds: int = 5
    eval_repeats: int = 2  # evaluation time is the fastest repeat (the machine is shared)
    steps: int = 3
    threads: int = 1


def world(config: ScalingConfig):
    """``(forget_by_authors, retain, holdout, tokenizer)``: forget sets nest (1 author is in 4 is in 16)."""
    most = max(config.forget_authors)
    records, holdout = generate_world(0, most + config.retain_authors, config.holdout_authors)
    subjects = list(dict.fromkeys(r.subject for r in records))
    retain = [r for r in records if r.subject in set(subjects[most:])]
    forget = {k: [r for r in records if r.subject in set(subjects[:k])] for k in config.forget_authors}
    return forget, retain, holdout, train_demo_tokenizer(Config(), records + holdout)


def measure(size: ModelSize, forget, retain, holdout, tokenizer, config: ScalingConfig) -> dict[str, Any]:
    step_config = StepCostConfig(rounds=config.rounds, steps=config.steps)
    work = build_workload(size, step_config, records=(forget, retain), tokenizer=tokenizer)
    times = time_steps(work, step_config, ("blur", "weighted_sum"))
    step = {m: statistics.median([t for r in rounds for t in r]) for m, rounds in times.items()}
    work.reset()  # back to the initial weights
    model = work.model.eval()
    repeats = []
    for _ in range(config.eval_repeats):
        started, cpu = time.perf_counter(), time.process_time()
        # the relearning attack stays off: these timings were measured before it existed
        evaluate_models({"unlearned": lambda: LoadedModel(model, tokenizer, size.name)}, forget=forget, retain=retain,
                        holdout=holdout, config=EvalConfig(relearn={"enabled": False}),
                        max_length=step_config.max_length, show_progress=False)
        repeats.append((time.perf_counter() - started, time.process_time() - cpu))
    walls, cpus = zip(*repeats)
    log(f"  {size.name} forget {len(forget)}: blur {1000 * step['blur']:.0f} ms/step, evaluation {min(walls):.1f} s")
    return {"model": size.name, "n_params": sum(p.numel() for p in work.params), "forget_records": len(forget),
            "retain_records": len(retain), "holdout_records": len(holdout),
            "blur_step_ms": 1000 * step["blur"], "weighted_step_ms": 1000 * step["weighted_sum"],
            "eval_seconds_one_model": min(walls), "eval_cpu_seconds_one_model": min(cpus),  # least disturbed repeats
            "eval_seconds_repeats": list(walls)}


def run(config: ScalingConfig) -> dict[str, Any]:
    started = time.perf_counter()
    harness.init_process(config.threads)
    forget, retain, holdout, tokenizer = world(config)
    log("warm-up (discarded: the first measurement in a process pays one-off costs) ...")
    measure(config.sizes[0], forget[config.forget_authors[0]], retain, holdout, tokenizer, config)
    by_forget = [measure(config.sizes[0], forget[k], retain, holdout, tokenizer, config) for k in config.forget_authors]
    fixed = forget[config.size_table_forget_authors]
    by_size = [next(r for r in by_forget if r["forget_records"] == len(fixed))] + [
        measure(size, fixed, retain, holdout, tokenizer, config) for size in config.sizes[1:]]
    return {"benchmark": "scaling", "by_forget_size": by_forget, "by_model_size": by_size, "config": asdict(config),
            "machine": machine(), "gpu": "none lent to this session: CPU figures only",
            "wall_seconds": round(time.perf_counter() - started, 1)}


COLUMNS = [("model", "model"), ("parameters", lambda r: f"{r['n_params'] / 1e6:.1f}M"),
           ("forget records", "forget_records"), ("BLUR ms/step", "blur_step_ms", 0),
           ("weighted-sum ms/step", "weighted_step_ms", 0), ("evaluation s (one model)", "eval_seconds_one_model", 1),
           ("evaluation CPU s", "eval_cpu_seconds_one_model", 1)]


def render(result: dict[str, Any]) -> str:
    return harness.template("scaling")["main"].format(
        m=result["machine"], minutes=result["wall_seconds"] / 60, first=result["by_forget_size"][0],
        repeats=result["config"]["eval_repeats"], by_forget=table(result["by_forget_size"], COLUMNS),
        by_size=table(result["by_model_size"], COLUMNS))


@harness.command(app, __name__)
def main(out: Path = harness.OUT, report_only: bool = harness.REPORT_ONLY) -> None:
    if report_only:
        return harness.report_only(out, "scaling", render)
    harness.write_report(run(ScalingConfig()), out, "scaling", render)
