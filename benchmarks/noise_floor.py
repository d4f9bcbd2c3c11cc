"""The noise floor of the oracle's verdict: a second oracle, judged like an unlearned model (README appendix)."""

import itertools
import time
from pathlib import Path
from typing import Any

from benchmarks import calibration, harness
from benchmarks.harness import fmt, log, machine, read_json, table
from components import stages
from components.modeling.demo import train_model
from components.modeling.resolve import load_tokenizer
from components.stages.prepare import resolved_config

app = harness.cli(__doc__)  # the command: main, at the end
STEM = "noise_floor"
REPLICATE_SEED = 1000  # replicate r of world seed s trains with seed s + 1000 * r


def replicate(world: calibration.World, seed: int, index: int) -> dict[str, Any]:
    """Replicate oracle ``index`` of ``world`` at ``seed``, judged as the unlearned model (cached)."""
    config, trained = calibration.trained_world(world, seed)
    config = config.with_overrides({"seed": seed})
    paths = calibration.linked(world, trained, trained.root / "replicates" / f"r{index}")

    def compute() -> dict[str, Any]:
        started = time.perf_counter()
        if not (paths.unlearned / "training.json").exists():
            resolved = resolved_config(config.with_overrides({"seed": seed + REPLICATE_SEED * index}), paths)
            epochs = read_json(trained.root / "trained.json")["finetune"]["target"]["epochs"]
            log(f"[{world.name} seed {seed}] replicate oracle {index}: training ({epochs} epochs) ...")
            train_model(resolved, stages.load_splits(paths)["retain"], load_tokenizer(paths.tokenizer, resolved.model),
                        paths.unlearned, epochs=epochs, label=f"oracle r{index}", show_progress=False)
        log(f"[{world.name} seed {seed}] replicate oracle {index}: evaluate ...")
        trained_at = time.perf_counter()
        metrics = stages.evaluate(config, paths, show_progress=False)
        return {"world": world.name, "seed": seed, "replicate": index, "n_forget": metrics["unlearned"]["n_forget"],
                "n_holdout": len(stages.load_splits(paths)["holdout"]), "stop": None, "steps": 0,
                "unlearn_seconds": round(trained_at - started, 1),
                "evaluate_seconds": round(time.perf_counter() - trained_at, 1), "cache": {}, "floor": None}

    return calibration.with_gate(harness.cached(paths.root / "result.json", compute), paths, config)


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """How many replicates pass each of calibration's tests, per world and overall."""
    tests = [calibration.judged(r) for r in runs]
    passing = {k: sum(bool(t[k]) for t in tests) for k in ("forgotten", "utility_kept", "relearn_ok")}
    return {"replicates": len(runs), "passing": passing,
            "forgotten_and_relearn_ok": sum(bool(t["forgotten"] and t["relearn_ok"]) for t in tests),
            "pass_rate": {k: round(v / len(runs), 3) if runs else None for k, v in passing.items()}}


ROWS = [("world", "world"), ("seed", "seed"), ("replicate", "replicate"),
        ("forget / holdout", lambda r: f"{r['n_forget']} / {r['n_holdout']}"),
        ("forget quality", ("metrics", "unlearned", "forget_quality")),
        ("privleak", ("metrics", "unlearned", "privleak"), 1),
        ("AUC: oracle / replicate", lambda r: f"{fmt(r['metrics']['oracle']['forget_holdout_auc'])} / "
                                              f"{fmt(r['metrics']['unlearned']['forget_holdout_auc'])}"),
        ("forget prob: oracle / replicate", lambda r: f"{fmt(r['metrics']['oracle']['forget_prob'])} / "
                                                      f"{fmt(r['metrics']['unlearned']['forget_prob'])}"),
        ("utility ratio", ("judged", "utility_ratio")), ("relearn gap", ("judged", "relearn_gap")),
        ("forgotten", ("judged", "forgotten")),
        ("gate (oracle-free / oracle)", lambda r: f"{fmt(r['gate']['oracle_free'])} / {fmt(r['gate']['oracle'])}")]


def render(results: dict[str, Any]) -> str:
    """The write-up, every figure read from ``results``."""
    s = results["summary"]
    return harness.template(STEM)["main"].format(
        rule=calibration.RULE, runs=table([r | {"judged": calibration.judged(r)} for r in results["runs"]], ROWS),
        s=s, p=s["passing"], m=results["machine"], rate={k: fmt(v, 2) for k, v in s["pass_rate"].items()})


@harness.command(app, __name__)
def main(worlds: list[str] = ["demo"], seeds: list[int] = list(calibration.SEEDS), replicates: int = 3,
         out: Path = harness.OUT, report_only: bool = harness.REPORT_ONLY) -> None:
    if report_only:
        return harness.report_only(out, STEM, render)
    harness.init_process(1)
    runs = []
    for name, seed, index in itertools.product(worlds, seeds, range(1, replicates + 1)):
        runs.append(replicate(calibration.WORLDS[name], seed, index))
        harness.write_report({"rule": calibration.RULE, "runs": runs, "summary": summary(runs), "machine": machine()},
                             out, STEM, render)
