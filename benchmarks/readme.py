"""The figures in ``benchmarks/README.md`` that come from results files, written between markers.

A block ``<!-- generated: NAME -->`` ... ``<!-- /generated: NAME -->`` in the README is rendered
by :data:`BLOCKS` from the JSON under ``benchmarks/results/``; nothing between the markers is
typed by hand. After a benchmark writes new results:

    python -m benchmarks.readme           # rewrite every block
    python -m benchmarks.readme --check   # exit 1 when a block differs from its results (the suite runs this)
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from benchmarks import harness
from benchmarks.harness import BENCH_DIR, fmt, log, read_json, table

README = BENCH_DIR / "README.md"
RESULTS = BENCH_DIR / "results"


def floors(results: Path = RESULTS) -> str:
    """Evaluate's distance from its floor: one row per evaluate run of the evaluation-reuse write-ups."""
    rows = []
    for stem, profile in (("eval_reuse", "SmolLM2 profile"), ("eval_reuse_demo", "demo world")):
        for run in (read_json(results / f"{stem}.json") or {}).get("runs", []):
            cache = run["evaluate"]["cache"]
            rows.append(run["evaluate"]["floor"] | {
                "world": profile, "run": f"{run['run']} `dvc repro`", "file": f"`{stem}.json`",
                "scored": ", ".join(role for role, c in cache.items() if c["misses"]) or "none"})
    return table(rows, [("world", "world"), ("run", "run"), ("models scored", "scored"),
                        ("evaluate s", "evaluate_seconds", 1), ("floor s", "floor_seconds", 1), ("ratio", "ratio", 2),
                        ("CPU ratio", "cpu_ratio", 2), ("from", "file")])


# --------------------------------------------------------------------------- helpers for the study blocks

#: The three worlds of the holdout-stop and relearning write-ups: (results stem, name in the README).
WORLDS = (("pretrained", "SmolLM2"), ("pretrained_demo_stop", "demo"), ("pretrained_muse_stop", "MUSE-News"))


def _load(results: Path, stem: str) -> dict[str, Any]:
    """``<stem>.json`` under ``results``; a missing file is an error (the block would silently go empty)."""
    found = read_json(results / f"{stem}.json")
    if found is None:
        raise FileNotFoundError(results / f"{stem}.json")
    return found


def _configs(results: Path, stem: str, **match: Any) -> list[dict[str, Any]]:
    """The configurations (means over seeds) of a study whose fields equal ``match``."""
    return [c for c in _load(results, stem)["analysis"]["configurations"]
            if all(c.get(k) == v for k, v in match.items())]


def _balance(row: Mapping[str, Any]) -> str:
    """BLUR's gamma or the weighted sum's alpha, named."""
    name = "gamma" if row["combiner"] in ("blur", "blur_p") else "alpha"
    return f"{name} {row['balance']:g}"


def _pm(key: str, digits: int = 3) -> Callable[[Mapping[str, Any]], str]:
    """``mean ± std`` over seeds (the std left out for one seed)."""
    def cell(r: Mapping[str, Any]) -> str:
        if r.get(key) is None:
            return fmt(None)
        spread = f" ± {fmt(r.get(f'{key}_std'), digits)}" if r.get("seeds", 1) > 1 else ""
        return fmt(r[key], digits) + spread
    return cell


def _span(values: Iterable[float | None], digits: int = 3) -> str:
    """``lo–hi`` of the values that are there (one value alone when they agree)."""
    values = [v for v in values if v is not None]
    if not values:
        return fmt(None)
    lo, hi = fmt(min(values), digits), fmt(max(values), digits)
    return lo if lo == hi else f"{lo} to {hi}"


def _wins(levels: list[dict[str, Any]]) -> tuple[int, int, float | None]:
    """(levels where BLUR's utility is at least the weighted sum's within the study's tolerance, levels,
    the largest shortfall where both reach the level)."""
    margins = [lv["margin"] for lv in levels if lv.get("margin") is not None]
    return sum(bool(lv["ours_wins"]) for lv in levels), len(levels), (min(margins) if margins else None)


# --------------------------------------------------------------------------- section 1: quality on the demo world


def quality_runs(results: Path = RESULTS) -> str:
    """How much the demo-world quality sweep and its probe ran, and how long they took."""
    rows = []
    for stem in ("quality", "quality_probe"):
        found = _load(results, stem)
        rows.append({"study": f"`{stem}`", "runs": len(found["runs"]), "models": len(found["points"]),
                     "wall": found["wall_seconds"] / 60, "setup": found["setup"]["setup_seconds"],
                     "sweep": found["sweep_seconds"] / 60, "file": f"`{stem}.json`"})
    return table(rows, [("study", "study"), ("unlearning runs", "runs"), ("evaluated models", "models"),
                        ("wall min", "wall", 1), ("target and oracle s", "setup", 0),
                        ("sweep min", "sweep", 1), ("from", "file")])


def quality_reference(results: Path = RESULTS) -> str:
    """The demo target and oracle of the quality sweep."""
    found = _load(results, "quality")
    rows = [found["reference"][role] | found["setup"]["finetune"][role] | {"model": role, "file": "`quality.json`"}
            for role in ("target", "oracle")]
    return table(rows, [("model", "model"), ("epochs", "epochs"), ("mean answer prob when trained", "mean_answer_prob"),
                        ("forget quality", "forget_quality"), ("model utility", "model_utility"),
                        ("forget prob", "forget_prob"),
                        ("retain prob", "retain_prob"), ("holdout prob", "holdout_prob"), ("from", "file")])


def quality_npo(results: Path = RESULTS) -> str:
    """NPO at lr 1e-3, each balance at its longest run (80 steps, the probe's 120), mean ± std over seeds."""
    rows = [c for c in _configs(results, "quality_combined", forget_loss="npo", lr=0.001) if c["steps"] >= 80]
    # gentlest first: BLUR's gamma up, the weighted sum's alpha down
    rows.sort(key=lambda c: (c["combiner"], c["steps"], c["balance"] if c["combiner"] == "blur" else -c["balance"]))
    return table(rows, [("combiner", "combiner"), ("balance", _balance), ("steps", "steps"), ("seeds", "seeds"),
                        ("forget quality", _pm("forget_quality")), ("model utility", _pm("model_utility")),
                        ("forget prob", _pm("forget_prob")), ("mean cos(g_r, g_f)", "mean_cos"),
                        ("mean xi", "mean_xi"), ("mean ‖g_f‖/‖g_r‖", "mean_norm_ratio", 1)]) + \
        ("\n\nFrom `quality_combined.json` (`analysis.configurations`); xi is the weighted sum's forget weight "
         "(1) for it.")


def quality_matched(results: Path = RESULTS) -> str:
    """Per forget loss: at how many matched levels BLUR's best utility is at least the weighted sum's."""
    found = _load(results, "quality_combined")
    tolerance = found["config"].get("tie_tolerance")
    rows = []
    for loss, matched in found["analysis"]["matched"].items():
        fq, prob = _wins(matched["all_levels"]), _wins(matched["by_forget_prob"])
        rows.append({"loss": loss, "fq": f"{fq[0]} of {fq[1]}", "fq_short": fq[2],
                     "prob": f"{prob[0]} of {prob[1]}", "prob_short": prob[2]})
    return table(rows, [("forget loss", "loss"), ("forget quality: BLUR >= weighted sum", "fq"),
                        ("smallest margin (forget quality)", "fq_short"),
                        ("forget prob: BLUR >= weighted sum", "prob"),
                        ("smallest margin (forget prob)", "prob_short")]) + \
        (f"\n\nFrom `quality_combined.json` (`analysis.matched`: `all_levels`, `by_forget_prob`); \"at least\" is "
         f"within the tolerance {fmt(tolerance)}; a margin is BLUR's utility minus the weighted sum's "
         "(negative: BLUR behind), over the levels both reach.")


# --------------------------------------------------------------------------- section 2: MUSE-News subset


def muse_news(results: Path = RESULTS) -> str:
    """The MUSE-News subset: reference models and every configuration at its longest run."""
    found = _load(results, "muse_news")
    keys = ("forget_verbmem", "forget_knowmem", "retain_knowmem", "retain_prob", "privleak", "mean_cos")
    rows = [{"model": role, "balance": "", **{k: found["reference"][role].get(k) for k in keys}}
            for role in ("target", "oracle")]
    longest = max(c["steps"] for c in found["analysis"]["configurations"])
    for c in _configs(results, "muse_news", steps=longest):
        rows.append({**c, "model": f"{c['forget_loss']} {c['combiner']}", "balance": _balance(c)})
    return table(rows, [("model", "model"), ("balance", "balance"), ("verbmem", "forget_verbmem"),
                        ("forget knowmem", "forget_knowmem"), ("retain knowmem", "retain_knowmem"),
                        ("retain prob", "retain_prob"), ("privleak", "privleak", 1),
                        ("mean cos(g_r, g_f)", "mean_cos")]) + \
        (f"\n\nUnlearned rows at {longest} steps, means over seeds; from `muse_news.json` (`reference`, "
         "`analysis.configurations`).\n\n") + muse_matched(results)


def muse_matched(results: Path = RESULTS) -> str:
    """MUSE-News subset, per forget loss: matched verbmem levels where BLUR's utility is at least the
    weighted sum's."""
    rows = []
    for loss, matched in _load(results, "muse_news")["analysis"]["matched"].items():
        knowmem, prob = _wins(matched["all_levels"]), _wins(matched["by_retain_prob"])
        rows.append({"loss": loss, "knowmem": f"{knowmem[0]} of {knowmem[1]}",
                     "prob": f"{prob[0]} of {prob[1]}"})
    return table(rows, [("forget loss", "loss"),
                        ("verbmem levels, retain knowmem: BLUR >= weighted sum", "knowmem"),
                        ("verbmem levels, retain prob: BLUR >= weighted sum", "prob")]) + \
        "\n\nFrom `muse_news.json` (`analysis.matched.*`: `all_levels`, `by_retain_prob`)."


# --------------------------------------------------------------------------- section 3: step cost


def step_cost(results: Path = RESULTS) -> str:
    """Step-time ratios (medians over rounds) and peak extra memory over the parameter bytes, per model."""
    rows = [model | {"model": name} for name, model in _load(results, "step_cost")["models"].items()]
    return table(rows, [("model", "model"), ("parameters", lambda m: f"{m['n_params'] / 1e6:.1f}M"),
                        ("BLUR / engine weighted sum", ("ratios", "blur_over_weighted_time", "median"), 2),
                        ("BLUR / fused weighted sum", ("ratios", "blur_over_fused_weighted_time", "median"), 2),
                        ("naive BLUR / BLUR", ("ratios", "naive_over_blur_time", "median"), 2),
                        ("BLUR extra memory / params", ("memory", "blur_extra_bytes_over_param_bytes"), 2),
                        ("naive extra memory / params", ("memory", "naive_extra_bytes_over_param_bytes"), 2),
                        ("naive vs engine weights, max abs diff", "naive_matches_blur_max_abs_diff", 1)]) + \
        ("\n\nFrom `step_cost.json` (`models.*.ratios.*.median`, `models.*.memory`); extra memory is over the "
         "fused weighted sum's peak.")


# --------------------------------------------------------------------------- section 5: SmolLM2


def pretrained_models(results: Path = RESULTS) -> str:
    """SmolLM2: the target, the oracle and every fixed-step model evaluated with the full tier."""
    found = _load(results, "pretrained")
    rows = [found["reference"][role] | {"model": role} for role in ("target", "oracle")]
    full = [c for c in found["analysis"]["configurations"]
            if c["kind"] == "fixed" and c.get("model_utility") is not None]
    full.sort(key=lambda c: (c["forget_loss"], c["steps"], c["combiner"], c["balance"]))
    rows += [{**c, "model": f"{c['forget_loss']} {c['combiner']} {_balance(c)}"} for c in full]
    return table(rows, [("model", "model"), ("steps", "steps"), ("forget quality", "forget_quality"),
                        ("model utility", "model_utility"), ("forget prob", "forget_prob"),
                        ("forget-vs-holdout AUC", "forget_holdout_auc"), ("privleak", "privleak", 1),
                        ("world facts", "world_facts_acc"), ("retain ROUGE", "retain_rouge"),
                        ("mean xi", "mean_xi"), ("min cos(g_r, g_f)", "min_cos")]) + \
        ("\n\nOne seed; from `pretrained.json` (`reference`, `analysis.configurations`); xi is the weighted "
         "sum's forget weight (1) for it.")


def pretrained_matched(results: Path = RESULTS) -> str:
    """SmolLM2, NPO: best utility of each combiner at each forget-quality level some run reached."""
    found = _load(results, "pretrained")
    rows = found["analysis"]["matched"]["npo"]["fq_vs_utility"]
    return table(rows, [("forget quality >=", "level"), ("BLUR utility", "ours_y"),
                        ("weighted-sum utility", "theirs_y"), ("margin", "margin"),
                        ("BLUR at least (within tolerance)", "ours_wins")]) + \
        (f"\n\nOne seed; from `pretrained.json` (`analysis.matched.npo.fq_vs_utility`; tolerance "
         f"{fmt(found['analysis']['tie_tolerance'])}).")


# --------------------------------------------------------------------------- section 6: the holdout stop


def stops(results: Path = RESULTS) -> str:
    """Per world: where the holdout rule stopped each run, and whether the oracle's forget set looks like
    the holdout."""
    rows = []
    for stem, world in WORLDS:
        found = _load(results, stem)
        runs = found["analysis"]["stop_vs_fixed"]
        stopped = [r for r in runs if r["stopped_at"] is not None]
        at_stop = [r["stop"] for r in stopped if r.get("stop")]
        reasons = sorted({r["reason"].split(":")[0] for r in runs})
        oracle = found["reference"]["oracle"]
        rows.append({"world": world, "stopped": f"{len(stopped)} of {len(runs)}", "reasons": ", ".join(reasons),
                     "steps": _span([r["stopped_at"] for r in stopped], 0),
                     "fq": _span([p.get("forget_quality") for p in at_stop]),
                     "auc": _span([p.get("forget_holdout_auc") for p in at_stop]),
                     "o_auc": oracle.get("forget_holdout_auc"), "o_ks": oracle.get("forget_holdout_ks_p"),
                     "probe_ks": max((c["probe_ks_p"] for r in runs for c in r.get("curve") or []
                                      if c.get("probe_ks_p") is not None), default=None),
                     "o_forget": oracle.get("forget_prob"), "o_holdout": oracle.get("holdout_prob"),
                     "file": f"`{stem}.json`"})
    return table(rows, [("world", "world"), ("runs the rule stopped", "stopped"), ("criterion", "reasons"),
                        ("stop steps", "steps"), ("forget quality at the stop", "fq"),
                        ("forget-vs-holdout AUC at the stop", "auc"),
                        ("oracle's forget-vs-holdout AUC", "o_auc"),
                        ("oracle's forget-vs-holdout KS p", "o_ks"), ("highest probe KS p", "probe_ks"),
                        ("oracle's forget prob", "o_forget"), ("oracle's holdout prob", "o_holdout"),
                        ("from", "file")]) + \
        ("\n\n`analysis.stop_vs_fixed` and `reference.oracle` of each file; a run the rule did not stop ran to "
         "its step cap.")


def _first_ks_step(curve: Sequence[Mapping[str, Any]], min_ks_p: float) -> int | None:
    """The first probed step whose KS p-value reaches ``min_ks_p`` (where ``criterion: ks`` stops)."""
    return next((c["step"] for c in curve if (c.get("probe_ks_p") or 0) >= min_ks_p), None)


def stops_smollm2(results: Path = RESULTS) -> str:
    """SmolLM2: each run's stop, the step ``criterion: ks`` would have chosen, and the model at the stop."""
    found = _load(results, "pretrained")
    rows = []
    for entry, run in zip(found["analysis"]["stop_vs_fixed"], found["runs"]):
        stop, at = run["stop"], entry.get("stop") or {}
        params = run["params"]
        rows.append({"run": f"{params['forget_loss']} {params['combiner']} {_balance(params)}",
                     "at": entry["stopped_at"], "reason": entry["reason"].split(":")[0],
                     "ks_at_stop": at.get("probe_ks_p"), "ks_step": _first_ks_step(stop["curve"], stop["min_ks_p"]),
                     "fq": at.get("forget_quality"), "prob": at.get("forget_prob"),
                     "auc": at.get("forget_holdout_auc"), "privleak": at.get("privleak")})
    return table(rows, [("run", "run"), ("stopped at", "at"), ("criterion", "reason"),
                        ("probe KS p there", "ks_at_stop"),
                        ("`criterion: ks` would stop at", "ks_step"), ("forget quality", "fq"),
                        ("forget prob", "prob"), ("forget-vs-holdout AUC", "auc"),
                        ("privleak", "privleak", 1)]) + \
        ("\n\nOne seed; from `pretrained.json` (`analysis.stop_vs_fixed`, each run's `stop.curve` with its "
         f"`min_ks_p` {fmt(found['runs'][0]['stop']['min_ks_p'], 1)}); the model columns are the evaluation at the "
         "step the rule stopped.")


def scaling(results: Path = RESULTS) -> str:
    """Step and evaluation time against the demo model, by model size and by forget-set size."""
    found = _load(results, "scaling")
    rows = []
    for key in ("by_model_size", "by_forget_size"):
        base = found[key][0]
        for r in found[key][1:]:
            size = f" ({r['n_params'] / 1e6:.1f}M parameters)" if key == "by_model_size" else ""
            rows.append({"what": f"{r['model']}{size}, {r['forget_records']} forget records",
                         "params": r["n_params"] / base["n_params"], "step": r["blur_step_ms"] / base["blur_step_ms"],
                         "eval": r["eval_seconds_one_model"] / base["eval_seconds_one_model"],
                         "eval_s": r["eval_seconds_one_model"]})
    return table(rows, [("model, forget records", "what"),
                        ("x parameters", "params", 1), ("x BLUR step time", "step", 1),
                        ("x evaluation time", "eval", 1), ("evaluation s", "eval_s", 1)]) + \
        ("\n\nEach row against the demo model (0.8M parameters) with 40 forget records (model sizes) or 10 (forget "
         "sizes); from `scaling.json` (`by_model_size`, `by_forget_size`: `n_params`, `blur_step_ms`, "
         "`eval_seconds_one_model`).")


# --------------------------------------------------------------------------- section 7: optimizers


def optimizers(results: Path = RESULTS) -> str:
    """Demo world: every configuration at its longest run under AdamW, SGD and SGD with momentum."""
    rows = _configs(results, "optimizers")
    longest = max(c["steps"] for c in rows)
    rows = [c for c in rows if c["steps"] == longest]
    return table(rows, [("optimizer", "optimizer"), ("combiner", "combiner"), ("balance", _balance),
                        ("seeds", "seeds"), ("forget quality", "forget_quality"),
                        ("model utility", "model_utility"), ("forget prob", "forget_prob"),
                        ("mean xi", "mean_xi"), ("cos(u, d)", "mean_cos_u_d"),
                        ("cos(d, g_f)", "mean_cos_d_gf"), ("kept", "mean_kept", 2),
                        ("upd", "mean_update_ratio", 2)]) + \
        f"\n\nAt {longest} steps, means over seeds; from `optimizers.json` (`analysis.configurations`)."


def optimizers_matched(results: Path = RESULTS) -> str:
    """Demo world, per optimizer: BLUR's utility against the weighted sum's at matched forget quality."""
    rows = [{"optimizer": name, "levels": f"{m['blur_at_least_within_tolerance']} of {m['levels']}",
             "lo": m["min_margin"], "hi": m["max_margin"]}
            for name, m in _load(results, "optimizers")["analysis"]["matched"].items()]
    return table(rows, [("optimizer", "optimizer"), ("levels where BLUR >= weighted sum", "levels"),
                        ("smallest margin", "lo"), ("largest margin", "hi")]) + \
        "\n\nMargin: BLUR's utility minus the weighted sum's; from `optimizers.json` (`analysis.matched`)."


def optimizers_pretrained(results: Path = RESULTS) -> str:
    """SmolLM2: the six optimizer runs, spread over two write-ups, one row per evaluated step count."""
    rows = []
    for stem in ("optimizers_pretrained", "optimizers_pretrained_sgd"):
        rows += [{**c, "file": f"`{stem}.json`"} for c in _configs(results, stem)]
    rows.sort(key=lambda c: (["adamw", "sgd", "sgd-momentum"].index(c["optimizer"]), c["combiner"], c["steps"]))
    return table(rows, [("optimizer", "optimizer"), ("lr", "lr", 5), ("combiner", "combiner"),
                        ("balance", _balance), ("steps", "steps"), ("forget quality", "forget_quality"),
                        ("model utility", "model_utility"), ("mean xi", "mean_xi", 3),
                        ("mean cos(g_r, g_f)", "mean_cos"), ("cos(u, d)", "mean_cos_u_d"),
                        ("cos(d, g_f)", "mean_cos_d_gf"), ("from", "file")]) + \
        "\n\nOne seed; `analysis.configurations` of each file (model utility here is the retain set's alone)."


# --------------------------------------------------------------------------- section 8: the relearning attack


def relearn(results: Path = RESULTS) -> str:
    """The relearning attack: held-out half's probability after the attack, unlearned against the oracle."""
    rows = []
    for stem, world in WORLDS:
        found = _load(results, stem)
        oracle = found["reference"]["oracle"]
        rows.append({"world": world, "model": "oracle", "relearn_forget_prob": oracle.get("relearn_forget_prob"),
                     "recovery": oracle.get("relearn_recovery"), "file": f"`{stem}.json`"})
        for c in found["analysis"]["configurations"]:
            if c["kind"] == "fixed" and c.get("relearn_forget_prob") is not None:
                baseline = oracle.get("relearn_forget_prob")
                gap = None if baseline is None else c["relearn_forget_prob"] - baseline
                rows.append({**c, "world": world, "model": f"{c['forget_loss']} {c['combiner']} {_balance(c)}",
                             "recovery": c.get("relearn_recovery"), "gap": gap, "file": f"`{stem}.json`"})
    return table(rows, [("world", "world"), ("model", "model"), ("steps", "steps"),
                        ("seeds", "seeds"), ("after the attack", _pm("relearn_forget_prob")),
                        ("gap to the oracle", "gap"), ("recovery", "recovery"), ("from", "file")]) + \
        ("\n\n`reference.oracle` and `analysis.configurations` (`relearn_forget_prob`, `relearn_recovery`) of "
         "each file; the gap is the unlearned model's `relearn_forget_prob` minus the oracle's.")


BLOCKS: dict[str, Callable[[Path], str]] = {block.__name__: block for block in (
    floors, quality_runs, quality_reference, quality_npo, quality_matched, muse_news, step_cost, pretrained_models,
    pretrained_matched, stops, stops_smollm2, scaling, optimizers, optimizers_matched, optimizers_pretrained, relearn)}


def _pattern(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- generated: {name} -->\n)(.*?)(<!-- /generated: {name} -->)", re.DOTALL)


def rendered(text: str, results: Path = RESULTS) -> str:
    """``text`` with every generated block rewritten from ``results``; a block whose markers are
    missing is an error (the README would silently stop showing it)."""
    for name, render in BLOCKS.items():
        pattern = _pattern(name)
        if not pattern.search(text):
            raise ValueError(f"{README} has no block '{name}' (<!-- generated: {name} --> ... "
                             f"<!-- /generated: {name} -->)")
        body = render(results).rstrip("\n") + "\n"
        text = pattern.sub(lambda m: m.group(1) + body + m.group(3), text)
    return text


app = harness.cli(__doc__)


@app.command()
def main(check: bool = harness.typer.Option(False, help="only compare; exit 1 when a block is stale"),
         readme: Path = README, results: Path = RESULTS) -> None:
    text = readme.read_text(encoding="utf-8")
    new = rendered(text, results)
    if check:
        if new != text:
            log(f"{readme}: generated blocks differ from {results}; run `python -m benchmarks.readme`")
            raise SystemExit(1)
        return
    readme.write_text(new, encoding="utf-8")
    log(f"wrote {readme}")


if __name__ == "__main__":
    app()
