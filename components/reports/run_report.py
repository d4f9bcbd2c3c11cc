"""The markdown report of one pipeline run: what was forgotten, the metrics, the gate decision.

Built only from :func:`components.erasure.safe.safe_request_summary` output (ids, hashes,
counts), numbers and the gate decision: no record text can reach it.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from components.artifacts import ROLES, GateDecision, Metrics

METRIC_ORDER = (
    "forget_prob", "forget_rouge", "forget_truth_ratio", "forget_quality",
    "retain_prob", "retain_rouge", "retain_truth_ratio", "model_utility",
    "mia_auc", "privleak", "extraction_strength", "relearn_forget_prob", "relearn_recovery",
)
MAX_LISTED_IDS = 200


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        if isinstance(value, float) and math.isnan(value):
            return "NaN"
        return f"{value:.4g}"
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines


def _scalar_keys(metrics: Metrics) -> list[str]:
    keys = list(dict.fromkeys(key for _, section in metrics.sections() for key in section.scalars()))
    ordered = [k for k in METRIC_ORDER if k in keys]
    return ordered + sorted(k for k in keys if k not in ordered)


def metric_table(metrics: Metrics, models: tuple[str, ...] = ROLES) -> list[str]:
    """Markdown rows: one metric per row, one model per column."""
    rows = [[key] + [metrics.value(model, key) for model in models] for key in _scalar_keys(metrics)]
    return _table(["metric", *models], rows) if rows else ["(no metrics)"]


def _earlier_tables(metrics: Metrics) -> list[str]:
    lines: list[str] = []
    for model, section in metrics.sections():
        earlier = section.earlier
        if not earlier:
            continue
        keys = sorted({k for values in earlier.values() for k in values})
        rows = [[request_id] + [values.get(k) for k in keys] for request_id, values in sorted(earlier.items())]
        lines += ["", f"Earlier requests, {model} model (still forgotten?):", ""]
        lines += _table(["request", *keys], rows)
    return lines


def gate_lines(decision: GateDecision, *, outcome: bool = True) -> list[str]:
    """The verdict, the checks table, reasons and skips; with ``outcome``, what the registry did."""
    lines = [f"**{'PASSED' if decision.passed else 'FAILED'}**", ""]
    lines += [f"> Note: {note}" for note in decision.notes] + ([""] if decision.notes else [])
    if decision.checks:
        rows = [[c.setting, c.metric, c.basis + ("" if c.decides else " (reported)"), c.op, c.threshold, c.value,
                 {True: "pass", False: "FAIL", None: "skipped" if c.decides else "unavailable"}[c.passed]]
                for c in decision.checks]
        lines += _table(["setting", "metric", "basis", "op", "threshold", "value", "result"], rows)
        word = {True: "pass", False: "fail", None: "none (no oracle)"}
        lines += ["", f"Oracle-free verdict: {word[decision.verdict('oracle-free')]}; oracle verdict: "
                      f"{word[decision.verdict('oracle')]}"
                  + {True: " (they agree)", False: " (they DISAGREE)", None: ""}[decision.agreement] + "."]
    else:
        lines.append("No thresholds are configured (every gate.* setting is null): nothing was checked.")
    if decision.reasons:
        lines += ["", "Reasons:"] + [f"- {reason}" for reason in decision.reasons]
    if decision.skipped:
        lines += ["", "Skipped checks:"] + [f"- {check.reason}" for check in decision.skipped]
    notes = [check.reason for check in decision.checks if check.passed and check.reason]
    if notes:
        lines += ["", "About the checks that passed:"] + [f"- {note}" for note in notes]
    if not outcome:
        return lines
    lines.append("")
    if decision.version is not None:
        moved = f"; alias '{decision.alias}' moved to it" if decision.alias else ""
        lines.append(f"Registered as `{decision.model_name}` version {decision.version}{moved}.")
    elif decision.model_name:
        where = (f"version {decision.champion_version}" if decision.champion_version
                 else "no version (there is no champion yet)")
        lines.append(f"Not registered; the serving alias stays on {where} of `{decision.model_name}`.")
    return lines


def render_report(safe_summary: Mapping[str, Any], metrics: Metrics, decision: GateDecision,
                  *, run_id: str | None = None, title: str = "Unlearning run") -> str:
    """The whole report as markdown."""
    lines = [f"# {title}" + (f" `{run_id}`" if run_id else ""), "", "## What was forgotten", ""]
    requests = safe_summary.get("requests") or []
    if requests:
        rows = [[r.get("request_id"), r.get("request_hash"), r.get("dvc_md5"), r.get("received_at"),
                 r.get("n_forget")] for r in requests]
        lines += _table(["request", "request hash", "DVC md5", "received at", "records"], rows)
    else:
        lines.append("(no request summary given)")
    counts = dict(safe_summary.get("counts") or {}) | dict(safe_summary.get("digests") or {})
    if counts:
        lines += [""] + [f"- {key}: {_cell(value)}" for key, value in counts.items()]
    if safe_summary.get("earlier_requests"):
        lines.append(f"- earlier requests re-checked: {', '.join(safe_summary['earlier_requests'])}")
    forget_ids = safe_summary.get("forget_ids") or []
    if forget_ids:
        shown = ", ".join(f"`{i}`" for i in forget_ids[:MAX_LISTED_IDS])
        more = f" … and {len(forget_ids) - MAX_LISTED_IDS} more" if len(forget_ids) > MAX_LISTED_IDS else ""
        lines += ["", f"Forgotten record ids ({len(forget_ids)}, keyed hashes): {shown}{more}"]
    lines += ["", "## Metrics", ""] + metric_table(metrics) + _earlier_tables(metrics)
    lines += ["", "## Gate", ""] + gate_lines(decision)
    return "\n".join(lines) + "\n"
