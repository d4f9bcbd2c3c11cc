"""How precisely do the evaluation sets measure a utility ratio? A paired bootstrap over records (README appendix)."""

import csv
import itertools
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import hmean

from benchmarks import calibration, harness
from benchmarks.harness import fmt, machine, read_json, table
from components.paths import Paths

app = harness.cli(__doc__)  # the command: main, at the end
STEM = "utility_noise"
DRAWS = 2000
# per set: (file suffix, the columns whose means enter model utility; truth ratios as TOFU's max(0, 1 - TR))
SETS = {"retain": ("retain", ("prob", "rouge", "truth_ratio")),
        "real_authors": ("knowledge_real_authors", ("option_prob", "rouge", "truth_ratio")),
        "world_facts": ("knowledge_world_facts", ("option_prob", "rouge", "truth_ratio"))}


def _parts(per_item: Path, role: str) -> dict[str, np.ndarray]:
    """Per scored set, the role's per-record utility parts (records x 3), in record-id order."""
    out = {}
    for name, (suffix, columns) in SETS.items():
        if (per_item / f"{role}_{suffix}.csv").exists():
            with (per_item / f"{role}_{suffix}.csv").open(newline="", encoding="utf-8") as handle:
                rows = {row["record_id"]: [float(row[c]) for c in columns] for row in csv.DictReader(handle)}
            out[name] = np.array([[*rows[i][:2], max(0.0, 1.0 - rows[i][2])] for i in sorted(rows)])
    return out


def _utility(parts: dict[str, np.ndarray], picks: dict[str, np.ndarray] | None = None) -> float:
    values = np.concatenate([(parts[n] if picks is None else parts[n][picks[n]]).mean(axis=0) for n in parts])
    return 0.0 if values.min() == 0 else float(hmean(values))


def bootstrap(run_dir: Path, seed: int = 0) -> dict[str, Any]:
    """One run's paired bootstrap: ratios, 95% intervals, and the utility recomputed per record."""
    paths = Paths(run_dir)
    roles = {role: _parts(paths.report_files.per_item, role) for role in ("target", "oracle", "unlearned")}
    reported = read_json(paths.metrics)
    rng = np.random.default_rng(seed)
    ratios = {"unlearned": [], "oracle": [], "unlearned_retain": []}
    retain_only = {role: {"retain": parts["retain"]} for role, parts in roles.items()}
    for _ in range(DRAWS):
        picks = {n: rng.integers(0, len(roles["target"][n]), len(roles["target"][n])) for n in roles["target"]}
        target, target_retain = _utility(roles["target"], picks), _utility(retain_only["target"], picks)
        for role in ("unlearned", "oracle"):
            ratios[role].append(_utility(roles[role], picks) / target if target else float("nan"))
        ratios["unlearned_retain"].append(_utility(retain_only["unlearned"], picks) / target_retain)
    out = {"n_records": {n: len(roles["target"].get(n, ())) for n in SETS},
           "utility": {role: _utility(parts) for role, parts in roles.items()}
           | {f"{role}_retain": _utility(retain_only[role]) for role in ("unlearned", "target")},
           "reported_utility": {role: reported[role]["model_utility"] for role in roles}}
    for role, values in ratios.items():
        low, high = np.nanpercentile(values, [2.5, 97.5])
        base = "target_retain" if role.endswith("_retain") else "target"
        out[f"{role}_ratio"] = out["utility"][role] / out["utility"][base]
        out[f"{role}_ratio_ci"] = [float(low), float(high)]
        out[f"{role}_ratio_below_095"] = float(np.mean(np.array(values) < 0.95))
    return out


def runs(worlds: list[str]) -> list[dict[str, Any]]:
    """Every calibration run of ``worlds`` whose per-record reports are cached (newest per seed)."""
    found = []
    for name, seed in itertools.product(worlds, calibration.SEEDS):
        results = sorted(calibration.ROOT.glob(f"{name}-*/runs/seed{seed}-*/result.json"),
                         key=lambda p: p.stat().st_mtime)
        if results and Paths(results[-1].parent).report_files.per_item.exists():
            found.append({"world": name, "seed": seed, **bootstrap(results[-1].parent, seed)})
    return found


ROWS = [
    ("world", "world"), ("seed", "seed"),
    ("records (retain / real authors / world facts)", lambda r: " / ".join(str(v) for v in r["n_records"].values())),
    ("utility: target / unlearned / oracle", lambda r: " / ".join(fmt(r["utility"][k]) for k in
                                                                 ("target", "unlearned", "oracle"))),
    ("unlearned / target", "unlearned_ratio", 2),
    ("95% interval", lambda r: "{} - {}".format(*(fmt(v, 2) for v in r["unlearned_ratio_ci"]))),
    ("share of draws < 0.95", "unlearned_ratio_below_095", 2), ("oracle / target", "oracle_ratio", 2),
    ("95% interval ", lambda r: "{} - {}".format(*(fmt(v, 2) for v in r["oracle_ratio_ci"]))),
    ("retain part only: unlearned / target", "unlearned_retain_ratio", 2),
    ("95% interval  ", lambda r: "{} - {}".format(*(fmt(v, 2) for v in r["unlearned_retain_ratio_ci"])))]


def render(results: dict[str, Any]) -> str:
    return harness.template(STEM)["main"].format(runs=table(results["runs"], ROWS), draws=results["draws"],
                                                 m=results["machine"])


@harness.command(app, __name__)
def main(worlds: list[str] = ["demo", "smollm2"], out: Path = harness.OUT,
         report_only: bool = harness.REPORT_ONLY) -> None:
    if report_only:
        return harness.report_only(out, STEM, render)
    found = runs(worlds)
    for run in found:
        for role, reported in run["reported_utility"].items():
            if reported is not None and abs(run["utility"][role] - reported) > 1e-6:
                raise SystemExit(f"{run['world']} seed {run['seed']}: {role} utility {run['utility'][role]} from the "
                                 f"per-record files is not the reported {reported} (the bootstrap would measure "
                                 "another metric)")
    harness.write_report({"draws": DRAWS, "runs": found, "machine": machine()}, out, STEM, render)
