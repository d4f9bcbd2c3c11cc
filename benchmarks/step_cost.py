"""Step cost: time per optimizer step and peak memory of BLUR against the weighted sum (README appendix)."""

import statistics
import time
from dataclasses import asdict
from json import dumps
from pathlib import Path
from typing import Any

from benchmarks import harness
from benchmarks.harness import log, machine, table
from benchmarks.workload import (METHODS, ModelSize, StepCostConfig, build_workload, check_naive_matches_blur,
                                 peak_memory, time_steps)

app = harness.cli(__doc__)  # the command: main, at the end
SHORT = {"blur": "blur", "weighted_sum": "weighted", "naive_blur": "naive", "fused_weighted": "fused_weighted"}
RATIOS = (("blur", "weighted_sum"), ("naive_blur", "blur"), ("blur", "fused_weighted"),
          ("weighted_sum", "fused_weighted"))


def _stats(values: list[float]) -> dict[str, float]:
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return {"median": statistics.median(values), "p25": q[0], "p75": q[2], "min": min(values),
            "max": max(values), "n": len(values)}


def measure(size: ModelSize, config: StepCostConfig) -> dict[str, Any]:
    """One model: the naive BLUR checked, then every method timed (per-round ratios) and metered (README appendix)."""
    work = build_workload(size, config)
    n_params, param_bytes = sum(p.numel() for p in work.params), work.param_bytes
    log(f"{size.name}: {n_params / 1e6:.2f}M parameters; the naive BLUR checked, then {config.rounds} rounds ...")
    difference = check_naive_matches_blur(work, config)
    times, peaks = time_steps(work, config, METHODS), peak_memory(work, config, METHODS)
    ratios = {f"{SHORT[a]}_over_{SHORT[b]}_time": _stats([statistics.median(x) / statistics.median(y)
                                                         for x, y in zip(times[a], times[b])]) for a, b in RATIOS}
    memory = {"peak_extra_bytes": peaks} | {
        f"{SHORT[m]}_extra_bytes_over_param_bytes": (peaks[m] - peaks["fused_weighted"]) / param_bytes
        for m in ("blur", "weighted_sum", "naive_blur")}
    memory["blur_over_weighted_peak_bytes"] = peaks["blur"] / peaks["weighted_sum"]
    return {"n_params": n_params, "param_bytes": param_bytes,
            "step_seconds": {m: _stats([t for r in rounds for t in r]) for m, rounds in times.items()},
            "ratios": ratios, "memory": memory,
            "blur_over_weighted_time": ratios["blur_over_weighted_time"]["median"],
            "naive_over_blur_time": ratios["naive_over_blur_time"]["median"],
            "blur_extra_bytes_over_param_bytes": memory["blur_extra_bytes_over_param_bytes"],
            "size": asdict(size), "naive_matches_blur_max_abs_diff": difference}


def run(config: StepCostConfig) -> dict[str, Any]:
    started = time.perf_counter()
    harness.init_process(config.threads)
    models = {size.name: measure(size, config) for size in config.sizes}
    worst = {"blur_over_weighted_time": max(m["blur_over_weighted_time"] for m in models.values()),
             "blur_extra_bytes_over_param_bytes": max(m["blur_extra_bytes_over_param_bytes"] for m in models.values()),
             "naive_over_blur_time": min(m["naive_over_blur_time"] for m in models.values())}
    return {"benchmark": "step_cost", **worst,
            "top_level_keys_are": "the worst case over the models (max of the blur ratios, min of naive/blur)",
            "targets": {"blur_over_weighted_time_at_most_1.05": worst["blur_over_weighted_time"] <= 1.05,
                        "blur_extra_bytes_over_param_bytes_at_most_1.0":
                            worst["blur_extra_bytes_over_param_bytes"] <= 1.0},
            "models": models, "config": asdict(config), "machine": machine(),
            "memory_method": "peak live tensor bytes of one step beyond weights, gradients and AdamW state, counted "
                             "per operator with a TorchDispatchMode (benchmarks/workload.py: LiveBytes); extra = that "
                             "peak minus the fused weighted sum's",
            "gpu": "none lent to this session: CPU figures only",
            "wall_seconds": round(time.perf_counter() - started, 1)}


def _ms(method: str):
    return lambda m: f"{1000 * m['step_seconds'][method]['median']:.1f}"


def _ratio(key: str):
    return lambda m: "{median:.3f} [{p25:.3f}, {p75:.3f}]".format(**m["ratios"][key])


TIMES = [("model", "name"), ("params", lambda m: f"{m['n_params'] / 1e6:.2f}M"),
         *((f"ms/step {k}", _ms(k)) for k in METHODS), ("blur / weighted", _ratio("blur_over_weighted_time")),
         ("naive / blur", _ratio("naive_over_blur_time")), ("blur / fused", _ratio("blur_over_fused_weighted_time")),
         ("naive matches blur (max abs diff)", lambda m: f"{m['naive_matches_blur_max_abs_diff']:.1e}")]
MEMORY = [("model", "name"), ("blur", ("memory", "blur_extra_bytes_over_param_bytes")),
          ("weighted_sum (engine)", ("memory", "weighted_extra_bytes_over_param_bytes")),
          ("naive_blur", ("memory", "naive_extra_bytes_over_param_bytes"), 2)]


def render(results: dict[str, Any]) -> str:
    models = [m | {"name": name} for name, m in results["models"].items()]
    t_time, t_memory = ("met" if ok else "NOT met" for ok in results["targets"].values())
    return harness.template("step_cost")["main"].format(
        m=results["machine"], c=results["config"], minutes=results["wall_seconds"] / 60, gpu=results["gpu"],
        times=table(models, TIMES), memory=table(models, MEMORY), memory_method=results["memory_method"],
        t_time=t_time, t_memory=t_memory, worst_time=results["blur_over_weighted_time"],
        worst_memory=results["blur_extra_bytes_over_param_bytes"], naive=results["naive_over_blur_time"])


@harness.command(app, __name__)
def main(json: bool = harness.typer.Option(False, "--json", help="print the result as one JSON object on stdout"),
         quick: bool = harness.typer.Option(False, "--quick", help="3 rounds x 2 steps instead of 7 x 3"),
         out: Path = harness.OUT, report_only: bool = harness.REPORT_ONLY) -> None:
    if report_only:
        return harness.report_only(out, "step_cost", render)
    result = run(StepCostConfig(rounds=3, steps=2) if quick else StepCostConfig())
    harness.write_report(result, out, "step_cost", render)
    if json:
        print(dumps(result))
