"""Configurations, Pareto frontiers, the matched-forgetting comparison and the Pareto plots.

A *point* is one evaluated model (one seed); a *configuration* is the mean over seeds of
the points that share a method and its hyper-parameters. Frontiers and comparisons are
over configurations, so one lucky seed cannot make a method look better than it is.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from statistics import mean, pstdev
from typing import Any, Iterable, Mapping, Sequence

COMBINER_STYLE = {"blur": ("tab:blue", "o", "BLUR"), "weighted_sum": ("tab:orange", "s", "weighted sum")}


def configurations(points: Sequence[dict], keys: Sequence[str], metrics: Sequence[str]) -> list[dict]:
    """Group points by ``keys`` and average ``metrics`` over the group (seeds).

    Each configuration has the key values, ``<metric>`` (mean), ``<metric>_std`` (population
    standard deviation over seeds), ``seeds`` (how many points were averaged) and the seeds'
    values under ``<metric>_by_seed``. A metric that is None for any seed is None.
    """
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for point in points:
        groups[tuple(point[k] for k in keys)].append(point)
    out = []
    for key, members in groups.items():
        row: dict[str, Any] = dict(zip(keys, key))
        row["seeds"] = len(members)
        for metric in metrics:
            values = [m.get(metric) for m in members]
            present = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
            ok = len(present) == len(values)
            row[metric] = mean(present) if ok and present else None
            row[f"{metric}_std"] = pstdev(present) if ok and len(present) > 1 else (0.0 if ok and present else None)
            row[f"{metric}_by_seed"] = values
        out.append(row)
    return out


def frontier(rows: Iterable[dict], x: str, y: str, *, maximize_x: bool = True, maximize_y: bool = True) -> list[dict]:
    """The non-dominated rows (better on one axis means worse on the other), sorted by ``x``."""
    sx, sy = (1 if maximize_x else -1), (1 if maximize_y else -1)
    candidates = [r for r in rows if r.get(x) is not None and r.get(y) is not None]
    candidates.sort(key=lambda r: (-sx * r[x], -sy * r[y]))
    kept, best_y = [], -math.inf
    for row in candidates:  # from the best x down: keep a row only if it beats every better-x row on y
        if sy * row[y] > best_y:
            kept.append(row)
            best_y = sy * row[y]
    return sorted(kept, key=lambda r: r[x])


def best_at_level(rows: Iterable[dict], level: float, *, x: str = "forget_quality", y: str = "model_utility",
                  maximize_x: bool = True) -> dict | None:
    """The row with the highest ``y`` among those whose ``x`` is at least ``level`` (at most, when
    lower ``x`` is better), or None."""
    eligible = [r for r in rows if r.get(x) is not None and r.get(y) is not None
                and (r[x] >= level if maximize_x else r[x] <= level)]
    return max(eligible, key=lambda r: r[y]) if eligible else None


def matched_comparison(ours: Sequence[dict], theirs: Sequence[dict], *, x: str = "forget_quality",
                       y: str = "model_utility", tolerance: float = 0.0, maximize_x: bool = True) -> list[dict]:
    """For every forget level either method reaches, the best utility of each at that level.

    Levels are all the ``x`` values the two methods reach (the frontiers only change
    there). ``ours_y``/``theirs_y`` is None where a method never reaches the level, and
    ``margin`` is ``ours_y - theirs_y`` (None unless both reach it). ``ours_wins``: ours is
    at least as good up to ``tolerance`` (reaching a level the other never reaches counts
    as a win, missing one as a loss).
    """
    levels = sorted({r[x] for r in [*ours, *theirs] if r.get(x) is not None and r.get(y) is not None})
    rows = []
    for level in levels:
        a = best_at_level(ours, level, x=x, y=y, maximize_x=maximize_x)
        b = best_at_level(theirs, level, x=x, y=y, maximize_x=maximize_x)
        a_y, b_y = (a[y] if a else None), (b[y] if b else None)
        margin = a_y - b_y if a_y is not None and b_y is not None else None
        wins = a_y is not None and (b_y is None or margin >= -tolerance)
        rows.append({"level": level, "ours_y": a_y, "theirs_y": b_y, "margin": margin, "ours_wins": wins,
                     "ours": a, "theirs": b})
    return rows


def at_least_strictly(row: Mapping[str, Any]) -> bool:
    """A :func:`matched_comparison` row where ours reaches the level and is not below theirs (no tolerance)."""
    return row["ours_y"] is not None and (row["margin"] is None or row["margin"] >= 0)


def comparison_rows(rows: Iterable[Mapping[str, Any]]) -> list[dict]:
    """:func:`matched_comparison` rows without the two winning configurations (for the results JSON)."""
    return [{k: r[k] for k in ("level", "ours_y", "theirs_y", "margin", "ours_wins")} for r in rows]


# --------------------------------------------------------------------------- plots


def pareto_figure(panels: Sequence[tuple[str, Sequence[dict]]], *, x: str, y: str, path: Path,
                  xlabel: str, ylabel: str, log_x: bool = False, maximize_x: bool = True,
                  references: dict[str, dict] | None = None, guides: dict[str, float] | None = None,
                  title: str = "") -> Path:
    """One panel per ``(title, configurations)``; each configuration a point, each combiner's frontier a line.

    ``references`` marks models such as the target and the oracle (name -> metrics);
    ``guides`` draws lines: ``{"x": value, "y": value}`` (either optional).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(panels)
    columns = min(n, 3)
    rows_n = math.ceil(n / columns)
    fig, axes = plt.subplots(rows_n, columns, figsize=(max(4.6 * columns, 9.0), 3.9 * rows_n + 0.8),
                             squeeze=False)
    for ax, (name, rows) in zip(axes.flat, panels):
        for combiner, (color, marker, label) in COMBINER_STYLE.items():
            mine = [r for r in rows if r["combiner"] == combiner and r.get(x) is not None and r.get(y) is not None]
            if not mine:
                continue
            ax.scatter([_plottable(r[x], log_x) for r in mine], [r[y] for r in mine], s=18, alpha=0.45,
                       color=color, marker=marker, label=f"{label} (configurations)")
            front = frontier(mine, x, y, maximize_x=maximize_x)
            ax.plot([_plottable(r[x], log_x) for r in front], [r[y] for r in front], color=color, lw=1.8,
                    marker=marker, ms=5, label=f"{label} frontier")
        for ref_name, values in (references or {}).items():
            if values.get(x) is not None and values.get(y) is not None:
                ax.scatter([_plottable(values[x], log_x)], [values[y]], marker="*", s=140, color="black" if
                           ref_name == "target" else "tab:green", zorder=5, label=ref_name)
        if guides and guides.get("x") is not None:
            ax.axvline(guides["x"], color="grey", ls=":", lw=1)
        if guides and guides.get("y") is not None:
            ax.axhline(guides["y"], color="grey", ls="--", lw=1)
        if log_x:
            ax.set_xscale("log")
        ax.set_title(name)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if labels:  # nothing to draw (e.g. no forget quality on a text-only world): no legend either
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 3), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.12 / rows_n, 1, 0.95 if title else 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plottable(value: float, log: bool) -> float:
    """KS p-values can be 0 to machine precision; put them at the bottom of a log axis."""
    return max(value, 1e-12) if log else value
