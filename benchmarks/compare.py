"""Does BLUR help? ``benchmarks/protocols/comparison.md``, run, every run cached (how it works: README appendix)."""

import copy
import math
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from benchmarks import calibration, harness
from benchmarks.harness import CACHE, fmt, log, machine, table
from components import stages
from components.data.records import content_hash
from components.evaluation.formulas import log_truth_ratio, membership_auc, option_share
from components.evaluation.knowledge import knowledge_wanted, load_knowledge_set
from components.modeling.encoding import encode_record
from components.modeling.io import load_model_dir
from components.modeling.scoring import mean_token_nll
from components.stages.prepare import resolved_config
from components.unlearning import RunOutputs, UnlearningDivergedError, run_unlearning

app = harness.cli(__doc__)  # the command: main, at the end
STEM = "compare"
CACHED_AS = "comparison"  # the runs' cache folder, named before the module was renamed (issue 20 names it compare)
G = {"demo": (0.03, 0.1, 0.3), "smollm2": (0.1,)}  # SmolLM2: cut to fit 90 min (protocol amendment)
SEEDS = (0, 1, 2)
STEPS = {"demo": 60, "smollm2": 40}
SGD_RATES = {"demo": (1.0, 0.33), "smollm2": (0.25,)}
LEVELS = (0.5, 0.8, 1.0)
POINTS = 5  # steps 0, 1/4, 1/2, 3/4 and all of the run
UTILITY = (("retain_nll", True), ("facts_option_prob", False))  # (measure, lower is better)
PAIRS = (("blur", "weighted_sum"), ("blur", "weighted_sum_xi"), ("blur_p", "weighted_sum"))
MINK_K = 0.4
MEASURES = "facts"  # world facts measured (protocol amendment of 2026-12-07 11:55): runs without them are not reused


@dataclass(frozen=True)
class Arm:
    """One cell of the grid: a combiner and its weight under one optimizer and rate."""

    name: str  # blur | weighted_sum | weighted_sum_xi | blur_p
    g: float  # the grid value this arm mirrors
    gamma: float
    optimizer: str = "adamw"
    lr: float | None = None  # None: the world's shipped rate

    @property
    def label(self) -> str:
        return f"{self.optimizer}{'' if self.lr is None else f' lr {self.lr:g}'}"


class Scorer:
    """Every record of the world encoded once, and the measures of the protocol on any model."""

    def __init__(self, tokenizer, splits: dict, max_length: int, facts: list | None = None):
        def encode(records: list, answer=lambda r: None) -> list:
            return [encode_record(tokenizer, r, max_length, answer=answer(r)) for r in records]

        def options(records: list) -> list[list]:  # each record's wrong answers
            return [[encode_record(tokenizer, r, max_length, answer=a) for a in r.perturbed_answers] for r in records]

        forget, self.facts = splits["forget"], facts and (encode(facts), options(facts))  # world facts: pretrained only
        self.forget, self.holdout, self.retain = encode(forget), encode(splits["holdout"]), encode(splits["retain"])
        self.para, self.perturbed = encode(forget, lambda r: r.paraphrased_answer), options(forget)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self._nll = lambda model, encoded, k=None: mean_token_nll(model, encoded, pad, mink_k=k)

    def _with_options(self, model, answers: list, options: list[list]) -> list[tuple[float, list[float]]]:
        """Each answer's mean NLL beside its wrong options' (the options scored in one pass)."""
        wrong = iter(self._nll(model, sum(options, [])).tolist())
        return [(nll, [next(wrong) for _ in group]) for nll, group in zip(self._nll(model, answers).tolist(), options)]

    def measure(self, model, oracle_log_tr: Sequence[float] | None) -> dict[str, Any]:
        """The protocol's measures; log TR per forget record: paraphrase NLL minus its perturbed answers' mean."""
        log_tr = [log_truth_ratio(nll, wrong) for nll, wrong in self._with_options(model, self.para, self.perturbed)]
        out = {"retain_nll": float(self._nll(model, self.retain).mean()),
               "forget_prob": float(torch.exp(-self._nll(model, self.forget)).mean()),
               "forget_holdout_auc": membership_auc((-self._nll(model, self.forget, MINK_K)).tolist(),
                                                    (-self._nll(model, self.holdout, MINK_K)).tolist()),
               "log_truth_ratios": log_tr}
        if oracle_log_tr is not None:
            out["tr_distance"] = statistics.fmean(abs(a - b) for a, b in zip(log_tr, oracle_log_tr))
        if self.facts:  # TOFU's option probability, as the evaluator's world_facts_prob
            out["facts_option_prob"] = statistics.fmean(option_share(nll, wrong)
                                                        for nll, wrong in self._with_options(model, *self.facts))
        return out


def run_arm(world: str, arm: Arm, seed: int, loaded: dict, config, scorer: Scorer, reference: dict) -> dict[str, Any]:
    """One trajectory: unlearn ``STEPS[world]`` steps, measured at ``POINTS`` evenly spaced steps."""
    steps = STEPS[world]
    at = sorted({round(i * steps / (POINTS - 1)) for i in range(POINTS)})
    method = config.unlearn.model_copy(update={
        "combiner": "weighted_sum" if arm.name.startswith("weighted_sum") else arm.name, "gamma": arm.gamma,
        "alpha": 1.0, "optimizer": arm.optimizer, "lr": arm.lr if arm.lr is not None else config.unlearn.lr,
        "steps": steps, "epochs": None, "checkpoint_every": 0, "momentum": 0.0,
        "stop": config.unlearn.stop.model_copy(update={"rule": "none"})})
    model = copy.deepcopy(loaded["target"].model)
    points = [{"step": 0, **{k: v for k, v in reference["target"].items() if k != "log_truth_ratios"}}]
    xis: list[float] = []

    def keep(record: dict) -> None:
        if record.get("xi") is not None:
            xis.append(float(record["xi"]))
        if record["step"] in at and record["step"]:
            measured = scorer.measure(model, reference["oracle"]["log_truth_ratios"])
            points.append({"step": record["step"], **{k: v for k, v in measured.items() if k != "log_truth_ratios"}})

    started, error = time.perf_counter(), None
    try:
        run_unlearning(model, loaded["target"].tokenizer, loaded["splits"]["forget"], loaded["splits"]["retain"],
                       method, max_length=config.model.max_length, seed=seed,
                       outputs=RunOutputs(show_progress=False, on_step=keep), holdout=loaded["splits"]["holdout"])
    except UnlearningDivergedError as diverged:
        error = str(diverged).splitlines()[0]
    log(f"[{world}] {arm.name} g {arm.g} {arm.label} seed {seed}: {time.perf_counter() - started:.0f}s")
    return {"world": world, "arm": asdict(arm), "seed": seed, "points": points, "error": error,
            "mean_xi": statistics.fmean(xis) if xis else None, "seconds": round(time.perf_counter() - started, 1)}


def at_level(points: Sequence[dict], level: float, key: str = "retain_nll") -> float | None:
    """``key`` linearly interpolated where the forget probability first falls to ``level`` (None: never)."""
    for a, b in zip(points, points[1:]):
        if a["forget_prob"] >= level >= b["forget_prob"] and a["forget_prob"] != b["forget_prob"]:
            t = (a["forget_prob"] - level) / (a["forget_prob"] - b["forget_prob"])
            return a[key] + t * (b[key] - a[key])
    return None


def verdict(a: list[float | None], b: list[float | None], lower_is_better: bool = True) -> dict[str, Any]:
    """The protocol's rule on the seeds' values of arms A and B: win / tie / loss (2 pooled SDs)."""
    if min(len(a), len(b)) < (need := max(2, len(SEEDS))):  # a pooled SD needs two seeds
        return {"verdict": f"incomplete ({min(len(a), len(b))} of {need} seeds so far)", "diff": None, "sd": None}
    if missing := [name for name, values in (("A", a), ("B", b)) if None in values]:
        return {"verdict": f"not reached ({', '.join(missing)})", "diff": None, "sd": None}
    diff = (statistics.fmean(b) - statistics.fmean(a)) * (1 if lower_is_better else -1)
    sd = math.sqrt((statistics.stdev(a) ** 2 + statistics.stdev(b) ** 2) / 2)
    word = "win" if diff > 2 * sd else "loss" if diff < -2 * sd else "tie"
    return {"verdict": word, "diff": diff, "sd": sd, "a": f"{statistics.fmean(a):.4f} ± {statistics.stdev(a):.4f}",
            "b": f"{statistics.fmean(b):.4f} ± {statistics.stdev(b):.4f}"}


def analyse(runs: list[dict], reference: dict[str, dict]) -> list[dict[str, Any]]:
    """Every (world, optimizer, g, level, pair, utility measure) verdict, for the measures the world has."""
    rows = []
    for world, ref in reference.items():
        p_t, p_o = ref["target"]["forget_prob"], ref["oracle"]["forget_prob"]
        cells: dict[tuple, list] = {}
        for run in (r for r in runs if r["world"] == world):
            cells.setdefault((Arm(**run["arm"]).label, run["arm"]["g"], run["arm"]["name"]), []).append(run)
        for (label, g, name_a), runs_a in sorted(cells.items()):
            for a, b in PAIRS:
                if name_a != a or (label, g, b) not in cells:
                    continue
                for (key, lower), q in ((u, q) for u in UTILITY if u[0] in ref["target"] for q in LEVELS):
                    level = p_t - q * (p_t - p_o)
                    values = [[at_level(r["points"], level, key) for r in sorted(c, key=lambda r: r["seed"])]
                              for c in (runs_a, cells[(label, g, b)])]
                    rows.append({"world": world, "optimizer": label, "g": g, "q": q, "level": level, "measure": key,
                                 "pair": f"{a} vs {b}", **verdict(*values, lower_is_better=lower)})
    return rows


def helps(rows: list[dict], world: str) -> dict[str, Any]:
    """The protocol's conclusion under AdamW: two wins (of three g at q = 0.8; one g: of its levels), no loss."""
    mirrored = [r for r in rows if (r["world"], r["optimizer"], r["pair"], r["measure"])
                == (world, "adamw", "blur vs weighted_sum", "retain_nll")]
    one_g = len({r["g"] for r in mirrored}) == 1  # SmolLM2's cut grid (protocols/comparison.md, amendment)
    wins = sum(r["verdict"] == "win" for r in mirrored if one_g or r["q"] == 0.8)
    losses = sum(r["verdict"] == "loss" for r in mirrored)
    done = mirrored and not any(r["verdict"].startswith("incomplete") for r in mirrored)  # else a partial world
    return {"world": world, "wins_at_0.8": wins, "losses": losses, "helps": wins > 1 and not losses if done else "open"}


def grid(world: str) -> list[Arm]:
    """The protocol's arms, ``weighted_sum_xi`` after the ``blur`` arm it reads its weight from."""
    return [Arm(name, g, g) for g in G[world] for name in ("blur", "weighted_sum", "blur_p")] + [
        Arm(name, 0.1, 0.1, "sgd", lr) for name in ("blur", "weighted_sum") for lr in SGD_RATES[world]]


def run_world(world: str, out: Path, runs: list[dict], references: dict, cached_only: bool = False) -> None:
    """Each arm and seed on calibration's ``world`` (seed 0), each cached (``cached_only``: start none); reports all."""
    if (found := calibration.trained_world(calibration.WORLDS[world], 0, train=not cached_only)) is None:
        return log(f"[{world}] not trained yet: no run of it is cached")
    config, trained = found
    config, root = resolved_config(config, trained), CACHE / CACHED_AS / f"{world}-{trained.root.name}"
    loaded = {"target": load_model_dir(trained.target), "oracle": load_model_dir(trained.oracle),
              "splits": stages.load_splits(trained)}
    facts = [calibration.WORLDS[world].root / f for f in config.eval.knowledge_sets if Path(f).stem == "world_facts"]
    facts = load_knowledge_set(facts[0]) if facts and knowledge_wanted(config.eval.knowledge, config.model) else None
    scorer = Scorer(loaded["target"].tokenizer, loaded["splits"], config.model.max_length, facts)

    def measure_reference() -> dict:
        oracle = scorer.measure(loaded["oracle"].model, None)
        return {"oracle": oracle, "target": scorer.measure(loaded["target"].model, oracle["log_truth_ratios"])}

    reference = references[world] = harness.cached(root / f"reference-{MEASURES}.json", measure_reference)
    jobs = [(arm, seed) for arm in grid(world) for seed in SEEDS]
    jobs += [(None, seed) for seed in SEEDS]  # placeholders: the weighted sum at blur's mean xi, per g, after blur
    for arm, seed in jobs:
        xis = {} if arm else {g: _xi(runs, world, g, seed, cached_only) for g in G[world]}
        for concrete in [arm] if arm else [Arm("weighted_sum_xi", g, xi) for g, xi in xis.items() if xi is not None]:
            key = content_hash({"arm": asdict(concrete), "seed": seed, "steps": STEPS[world]}, length=12)
            path = root / f"{concrete.name}-{key}-s{seed}-{MEASURES}.json"
            if path.exists() or not cached_only:
                runs.append(harness.cached(path, lambda: run_arm(world, concrete, seed, loaded, config, scorer,
                                                                 reference)))
        write_report(runs, references, out)


def _xi(runs: list[dict], world: str, g: float, seed: int, cached_only: bool = False) -> float | None:
    """BLUR's mean xi in its AdamW run on ``world`` at ``g``, ``seed`` (weighted_sum_xi's weight; None: not cached)."""
    found = [r for r in runs if (r["world"], r["arm"]["name"], r["arm"]["g"], r["arm"]["optimizer"], r["seed"])
             == (world, "blur", g, "adamw", seed) and r["mean_xi"] is not None]
    if not found and not cached_only:
        raise RuntimeError(f"no blur run at g {g}, seed {seed} to read its mean xi from")
    return round(found[0]["mean_xi"], 6) if found else None


def write_report(runs: list[dict], reference: dict, out: Path) -> None:
    rows = analyse(runs, reference)
    harness.write_report({"protocol": "benchmarks/protocols/comparison.md", "reference": {
        w: {role: {k: v for k, v in m.items() if k != "log_truth_ratios"} for role, m in r.items()}
        for w, r in reference.items()}, "runs": runs, "verdicts": rows,
        "conclusion": [helps(rows, w) for w in reference], "machine": machine()}, out, STEM, render)


def _final(key: str) -> Callable[[dict], str]:
    """A run's last measured ``key``."""
    return lambda run: fmt(run["points"][-1].get(key)) if run["points"] else "–"


RUN_ROWS = [("world", "world"), ("arm", lambda r: r["arm"]["name"]), ("g", ("arm", "g"), 2),
            ("gamma", ("arm", "gamma"), 4), ("optimizer", lambda r: Arm(**r["arm"]).label), ("seed", "seed"),
            ("final forget prob", _final("forget_prob")), ("final retain NLL", _final("retain_nll")),
            ("final AUC", _final("forget_holdout_auc")), ("final TR distance", _final("tr_distance")),
            ("final world-facts prob", _final("facts_option_prob")),
            ("mean xi", "mean_xi"), ("s", "seconds", 0), ("error", lambda r: r["error"] or "")]
VERDICT_ROWS = [("world", "world"), ("optimizer", "optimizer"), ("g", "g", 2), ("q", "q"),
                ("forget prob level", "level"), ("measure", "measure"), ("pair (A vs B)", "pair"), ("A", "a"),
                ("B", "b"), ("diff (better for A)", "diff", 4), ("pooled SD", "sd", 4), ("verdict", "verdict")]


def render(results: dict[str, Any]) -> str:
    ref = [{"world": w, "role": role, **m} for w, roles in results["reference"].items() for role, m in roles.items()]
    return harness.template(STEM)["main"].format(
        reference=table(ref, [("world", "world"), ("model", "role"), ("forget prob", "forget_prob"),
                              ("retain NLL", "retain_nll"), ("world-facts prob", "facts_option_prob"),
                              ("forget-vs-holdout AUC", "forget_holdout_auc"),
                              ("TR distance to the oracle", "tr_distance")]),
        verdicts=table(results["verdicts"], VERDICT_ROWS), runs=table(results["runs"], RUN_ROWS),
        conclusion=table(results["conclusion"], [("world", "world"), ("wins (q = 0.8; one g: any q)", "wins_at_0.8"),
                                                 ("losses", "losses"), ("BLUR helps", "helps")]),
        n=len(results["runs"]), m=results["machine"])


@harness.command(app, __name__)
def main(worlds: list[str] = ["demo"], out: Path = harness.OUT, report_only: bool = harness.REPORT_ONLY,
         cached_only: bool = harness.typer.Option(False, help="report the runs cached so far; start none")) -> None:
    if report_only:
        return harness.report_only(out, STEM, render)
    harness.init_process(1)
    if unknown := sorted(set(worlds) - set(STEPS)):  # before any world runs: a run takes hours
        raise SystemExit(f"unknown world '{unknown[0]}'; choose from {sorted(STEPS)}")
    runs, references = [], {}
    for world in worlds:
        run_world(world, out, runs, references, cached_only)
