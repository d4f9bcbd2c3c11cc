"""What a validation found, worded for the person who has to act on it.

A :class:`ValidationReport` is plain data (JSON-ready): which suites ran, and for each
failed expectation the suite, the expectation, the column, the rows (numbered from 1)
and the record ids or hashes of those rows, a summary of what was observed, what is wrong
and what to do. It never holds record text. Warnings (checks of severity ``warning``, such as
a holdout unlike the forget set) are listed the same way under ``warnings`` and do not
fail the validation. :class:`ValidationFailed` carries a failed
report; the validate stage raises it to stop the run before unlearning.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from components.jsonfiles import write_json

MAX_LISTED = 200  # rows / ids kept per failure in the JSON report
SHOWN_ROWS = 10  # rows quoted in reason()
SHOWN_IDS = 5  # ids quoted in reason()


@dataclass
class ValidationReport:
    passed: bool
    failures: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)
    suites: list[dict[str, Any]] = field(default_factory=list)
    request_ids: list[str] = field(default_factory=list)
    max_length: int | None = None
    counts: dict[str, int] = field(default_factory=dict)
    data_docs: str | None = None
    seconds: float | None = None
    great_expectations_version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"reason": self.reason()}

    def write_json(self, path: str | Path) -> Path:
        """Write the report atomically (a reader never sees half a file)."""
        return write_json(path, self.to_dict())

    def reason(self) -> str:
        """One line per problem: what, where (rows, ids) and what to do."""
        who = _requests_phrase(self.request_ids)
        warned = "".join(f"\n  - warning: {describe_failure(w)}" for w in self.warnings)
        if self.passed:
            n = sum(suite.get("evaluated", 0) for suite in self.suites)
            line = f"{who} passed validation ({len(self.suites)} suites, {n} expectations)"
            return line + (f" with {_plural(len(self.warnings), 'warning')}:" + warned if warned else "")
        head = f"{who} failed validation ({_plural(len(self.failures), 'problem')}"
        head += f"; Data Docs: {self.data_docs})" if self.data_docs else ")"
        return head + ":\n" + "\n".join(f"  - {describe_failure(f)}" for f in self.failures) + warned

    def raise_if_failed(self) -> "ValidationReport":
        if not self.passed:
            raise ValidationFailed(self)
        return self


class ValidationFailed(Exception):
    """The data of a deletion request failed validation; nothing downstream may run for it."""

    def __init__(self, report: ValidationReport):
        self.report = report
        super().__init__(report.reason())


def describe_failure(failure: dict[str, Any]) -> str:
    """E.g. 'forget set: 2 records longer than ... (rows 3, 17; ids ab.., cd..): raise ...'."""
    where = []
    rows = failure.get("rows") or []
    if rows:
        shown = ", ".join(str(row) for row in rows[:SHOWN_ROWS])
        more = failure.get("unexpected_count", len(rows)) - min(len(rows), SHOWN_ROWS)
        where.append(f"{'row' if len(rows) == 1 else 'rows'} {shown}{f' and {more} more' if more > 0 else ''}")
    ids = [str(i) for i in dict.fromkeys(failure.get("ids") or []) if i is not None]
    if ids:
        noun = failure.get("id_name", "id")
        shown = ", ".join(ids[:SHOWN_IDS]) + (", ..." if len(ids) > SHOWN_IDS else "")
        where.append(f"{noun}{'s' if len(ids) > 1 else ''} {shown}")
    located = f" ({'; '.join(where)})" if where else ""
    return f"{failure['label']}: {failure['message']}{located}: {failure['fix']}"


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _requests_phrase(request_ids: list[str]) -> str:
    if not request_ids:
        return "the deletion request"
    if len(request_ids) == 1:
        return f"request {request_ids[0]}"
    return f"requests {', '.join(request_ids)}"
