"""PNG plots of one pipeline run: training curves, xi over steps, forget vs retain bars.

Drawn with matplotlib's object-oriented API on the Agg canvas (``Figure.savefig``), so no
pyplot state and no display are involved and the global backend is left alone.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from components.artifacts import ROLES, Metrics

BAR_PAIRS = (("forget_prob", "retain_prob"), ("forget_rouge", "retain_rouge"),
             ("forget_truth_ratio", "retain_truth_ratio"))


def _finite(value: Any) -> float | None:
    """``value`` as a float if it is a finite number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _series(diagnostics: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    steps, values = [], []
    for index, row in enumerate(diagnostics):
        value = _finite(row.get(key))
        if value is not None:
            steps.append(float(row.get("step", index)))
            values.append(value)
    return steps, values


def _figure(width: float = 7.0, height: float = 4.0):
    from matplotlib.figure import Figure

    # Fixed margins: an automatic layout engine costs more than drawing the plot.
    figure = Figure(figsize=(width, height), dpi=100)
    figure.subplots_adjust(left=0.11, right=0.88, top=0.88, bottom=0.12, hspace=0.3, wspace=0.35)
    return figure


def _no_data(axes, message: str) -> None:
    axes.text(0.5, 0.5, message, ha="center", va="center", transform=axes.transAxes, color="grey")


def _two_scales(axes, diagnostics: Sequence[Mapping[str, Any]], left: tuple, missing: str, right: tuple):
    """Series ``left`` on ``axes`` and ``right`` on a twin axis sharing the steps, each given
    as (key, label, y label, line style); returns the twin axis (None when ``right`` is absent)."""
    key, label, ylabel, style = left
    steps, values = _series(diagnostics, key)
    if values:
        axes.plot(steps, values, label=label, **style)
        axes.set_ylabel(ylabel)
        axes.legend(loc="upper left")
    else:
        _no_data(axes, missing)
    key, label, ylabel, style = right
    steps, values = _series(diagnostics, key)
    if not values:
        return None
    twin = axes.twinx()
    twin.plot(steps, values, label=label, **style)
    twin.set_ylabel(ylabel)
    twin.legend(loc="upper right")
    return twin


def training_curves(diagnostics: Sequence[Mapping[str, Any]]):
    """Forget and retain loss per step (top), gradient norm and learning rate (bottom)."""
    figure = _figure(7.0, 5.5)
    losses, norms = figure.subplots(2, 1, sharex=True)
    for key, label in (("forget_loss", "forget loss"), ("retain_loss", "retain loss")):
        steps, values = _series(diagnostics, key)
        if values:
            losses.plot(steps, values, label=label)
    if losses.lines:
        losses.legend()
    else:
        _no_data(losses, "no loss values logged")
    losses.set_ylabel("loss")
    losses.set_title("Unlearning: losses per step")
    _two_scales(norms, diagnostics, ("grad_norm", "grad norm (of the step direction)", "grad norm",
                                      {"color": "tab:purple"}), "no gradient norms logged",
                ("lr", "learning rate", "lr", {"color": "tab:grey", "linestyle": "--"}))
    norms.set_xlabel("step")
    return figure


def xi_curve(diagnostics: Sequence[Mapping[str, Any]]):
    """BLUR's coefficient xi on the forget gradient, and cos(g_r, g_f), per step."""
    figure = _figure()
    axes = figure.subplots()
    cosine = _two_scales(axes, diagnostics, ("xi", "xi", "xi (coefficient of g_f)", {"color": "tab:red"}),
                         "xi not logged (weighted-sum combiner?)",
                         ("cos", "cos(g_r, g_f)", "cosine", {"color": "tab:blue", "alpha": 0.6}))
    if cosine is not None:
        cosine.set_ylim(-1.05, 1.05)
    axes.set_xlabel("step")
    axes.set_title("BLUR: xi over steps")
    return figure


def _value(metrics: Metrics, model: str, key: str) -> float | None:
    value = metrics.value(model, key)
    return None if value is None else float(value)


def forget_retain_bars(metrics: Metrics):
    """Forget vs retain values for the target, oracle and unlearned models, one panel per metric."""
    pairs = [pair for pair in BAR_PAIRS
             if any(_value(metrics, m, k) is not None for m in ROLES for k in pair)] or list(BAR_PAIRS[:1])
    figure = _figure(3.6 * len(pairs), 4.0)
    figure.subplots_adjust(left=0.08, right=0.97, top=0.82)
    panels = figure.subplots(1, len(pairs), squeeze=False)[0]
    width = 0.38
    for axes, (forget_key, retain_key) in zip(panels, pairs):
        top = 0.0
        for offset, key, colour in ((-width / 2, forget_key, "tab:red"), (width / 2, retain_key, "tab:green")):
            values = [_value(metrics, model, key) for model in ROLES]
            top = max([top, *(abs(v) for v in values if v is not None)])
            positions = [i + offset for i in range(len(ROLES))]
            axes.bar([p for p, v in zip(positions, values) if v is not None],
                     [v for v in values if v is not None], width, color=colour, label=key.split("_")[0])
            for position, value in zip(positions, values):
                if value is None:
                    axes.text(position, 0.01, "n/a", ha="center", va="bottom", fontsize=8, color="grey")
        axes.set_xticks(range(len(ROLES)), ROLES)
        axes.set_ylim(0, (top or 1.0) * 1.3)  # room for the legend above the bars
        axes.set_title(forget_key.replace("forget_", ""))
        axes.legend(fontsize=8, loc="upper center", ncols=2)
    figure.suptitle("Forget vs retain")
    return figure


def save_plots(diagnostics: Sequence[Mapping[str, Any]], metrics: Metrics,
               out_dir: str | Path) -> list[Path]:
    """Write the three PNGs into ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, figure in (("training_curves.png", training_curves(diagnostics)),
                         ("xi.png", xi_curve(diagnostics)),
                         ("forget_vs_retain.png", forget_retain_bars(metrics))):
        path = out_dir / name
        figure.savefig(path)
        written.append(path)
    return written
