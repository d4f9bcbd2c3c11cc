"""Validate a deletion request and the data it resolves to, before anything is unlearned.

:func:`validate_request_data` builds the text-free frames, runs every suite with Great
Expectations, writes Data Docs and the JSON report when asked, and returns a
:class:`ValidationReport`. It never raises for bad data: the caller decides (the validate
stage calls ``report.raise_if_failed()``, which raises :class:`ValidationFailed`).
Checks of severity ``warning`` (the holdout unlike the forget set) never fail it: they are
listed in ``report.warnings`` and logged, counts and lengths only.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any, Sequence

from components.data.records import Record, content_hash
from components.paths import data_docs_index
from components.data.requests import DeletionRequest, is_request_id
from components.validation import frames as fr
from components.validation.report import MAX_LISTED, ValidationReport, describe_failure
from components.validation.suites import (
    CRITICAL,
    INTERNAL_FIX,
    RECORD_COLUMNS,
    REQUEST_COLUMNS,
    SPLIT_COLUMNS,
    WARNING,
    Check,
    ForgetProfile,
    Suite,
    all_suites,
)

log = logging.getLogger(__name__)
ID_NAMES = {"record_id": "id", "request_id": "request id"}


def validate_request_data(
    *,
    world: Sequence[Record],
    forget: Sequence[Record],
    retain: Sequence[Record],
    request: DeletionRequest | Sequence[DeletionRequest],
    tokenizer,
    max_length: int,
    holdout: Sequence[Record] | None = None,
    docs_dir: str | Path | None = None,
    report_path: str | Path | None = None,
) -> ValidationReport:
    """Run the world, request, forget, retain (and holdout) suites.

    ``request`` is one request or the batch resolved together. ``tokenizer`` and
    ``max_length`` are the model's: lengths are counted on the encoded training example
    (prompt template and special tokens included). With ``docs_dir``, GX Data Docs are
    written there (its ``index.html`` is the entry page); with ``report_path``, the report
    is written there as JSON. ``holdout=None`` skips the holdout suite.
    """
    from components.validation.gx_run import gx_version, run_suites

    started = time.perf_counter()
    requests = [request] if isinstance(request, DeletionRequest) else list(request)
    frames = _frames(world, forget, retain, requests, holdout, tokenizer)
    # the holdout is compared with the forget set when both have records
    profile = forget_profile(frames["forget"]) if holdout else None
    suites = all_suites(max_length, with_holdout=holdout is not None, forget=profile)
    docs_dir = Path(docs_dir) if docs_dir is not None else None
    outcomes = run_suites([(suite, frames[suite.name]) for suite in suites], docs_dir,
                          run_name=_run_name(requests))
    failures = [failure for outcome in outcomes for failure in _failures(outcome)]
    warnings = [warning for outcome in outcomes for warning in _failures(outcome, severity=WARNING)]
    report = ValidationReport(
        passed=not failures,
        failures=failures,
        warnings=warnings,
        suites=[_suite_summary(outcome) for outcome in outcomes],
        request_ids=[str(r.request_id) for r in requests],
        max_length=max_length,
        counts={
            "n_requests": len(requests),
            "n_world": len(world),
            "n_forget": len(forget),
            "n_retain": len(retain),
            "n_holdout": len(holdout) if holdout is not None else 0,
        },
        data_docs=str(data_docs_index(docs_dir)) if docs_dir is not None else None,
        great_expectations_version=gx_version(),
    )
    report.seconds = round(time.perf_counter() - started, 2)
    for warning in warnings:
        log.warning("validation warning: %s", describe_failure(warning))
    if report_path is not None:
        report.write_json(report_path)
    return report


def _frames(world: Sequence[Record], forget: Sequence[Record], retain: Sequence[Record],
            requests: Sequence[DeletionRequest], holdout: Sequence[Record] | None, tokenizer) -> dict[str, fr.Frame]:
    """The text-free frame of each suite, by the suite's name."""
    world_ids = fr.ids_of(world)
    frames = {
        "world": fr.records_frame(world, RECORD_COLUMNS),
        "request": fr.request_frame(requests, REQUEST_COLUMNS),
        "forget": fr.split_frame(forget, SPLIT_COLUMNS, tokenizer=tokenizer, world_ids=world_ids),
        "retain": fr.split_frame(retain, SPLIT_COLUMNS, tokenizer=tokenizer, world_ids=world_ids),
    }
    if holdout is not None:
        frames["holdout"] = fr.split_frame(holdout, SPLIT_COLUMNS, tokenizer=tokenizer, world_ids=world_ids)
    return frames


def forget_profile(frame: fr.Frame) -> ForgetProfile | None:
    """The forget set's kinds and median scored length (None when it is empty: nothing to compare)."""
    if not len(frame):
        return None
    return ForgetProfile(kinds=tuple(sorted(set(frame.columns["kind"]))),
                         median_scored_tokens=float(statistics.median(frame.columns["n_scored_tokens"])))


def _severity(outcome, key: str) -> str:
    check = next((check for check in outcome.suite.checks if check.key == key), None)
    return check.severity if check is not None else CRITICAL


def _failures(outcome, severity: str = CRITICAL) -> list[dict[str, Any]]:
    """The failed checks of one suite of ``severity`` (critical: failures; warning: warnings), in the suite's order."""
    checks = {check.key: check for check in outcome.suite.checks}
    order = {key: index for index, key in enumerate(checks)}
    failed = sorted((r for r in outcome.checks if not r.success and _severity(outcome, r.key) == severity),
                    key=lambda r: order.get(r.key, len(order)))
    return [_failure(outcome.suite, outcome.frame, checks.get(r.key), r) for r in failed]


def _suite_summary(outcome) -> dict[str, Any]:
    failed = [c for c in outcome.checks if not c.success]
    warned = sum(_severity(outcome, c.key) == WARNING for c in failed)
    return {
        "name": outcome.suite.name,
        "label": outcome.suite.label,
        "success": len(failed) == warned,  # a warning does not fail its suite
        "evaluated": len(outcome.checks),
        "failed": len(failed) - warned,
        "warnings": warned,
        "rows": len(outcome.frame),
    }


def _run_name(requests: Sequence[DeletionRequest]) -> str:
    """The request ids when they are safe as a folder name, else a hash of them."""
    ids = [r.request_id for r in requests]
    if ids and len(ids) <= 5 and all(is_request_id(i) for i in ids):
        return "+".join(ids)
    return "requests-" + content_hash([str(i) for i in ids])


def _plain(value: Any) -> Any:
    """JSON-ready copy of a GX result value (numpy scalars, tuples)."""

    def default(obj: Any) -> Any:
        if hasattr(obj, "item"):
            return obj.item()
        if isinstance(obj, (set, frozenset)):
            return sorted(obj, key=str)
        return str(obj)

    return json.loads(json.dumps(value, default=default))


def _worst(values: list[Any]) -> Any:
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return max(numbers) if numbers else None


def _failure(suite: Suite, frame: fr.Frame, check: Check | None, outcome) -> dict[str, Any]:
    result = _plain(outcome.result)
    rows = [int(row["row"] if isinstance(row, dict) else row) for row in result.get("unexpected_index_list") or []]
    count = result.get("unexpected_count", len(rows))
    if "observed_value" in result:
        observed: dict[str, Any] = {"observed_value": result["observed_value"]}
    else:
        observed = {
            "element_count": result.get("element_count"),
            "unexpected_count": count,
            "unexpected_values": (result.get("partial_unexpected_counts") or [])[:20],
        }
    failure: dict[str, Any] = {
        "suite": suite.name,
        "label": suite.label,
        "expectation": outcome.expectation,
        "check": outcome.key,
        "column": check.column if check else None,
        "unexpected_count": count,
        "rows": rows[:MAX_LISTED],
    }
    failure["ids"] = [frame.value(suite.id_column, row) for row in rows[:MAX_LISTED]] if suite.id_column else []
    failure["id_name"] = ID_NAMES.get(suite.id_column, suite.id_column)
    failure["observed"] = observed
    if outcome.error or check is None:
        failure["message"] = f"check '{outcome.key}' could not be evaluated: {outcome.error or 'unknown check'}"
        failure["fix"] = INTERNAL_FIX
        return failure
    fields = suite.params | {
        "count": count,
        "worst": _worst(result.get("unexpected_list") or []),
        "observed": result.get("observed_value"),
    }
    failure["message"] = check.render_problem(**fields)
    failure["fix"] = check.fix
    return failure
