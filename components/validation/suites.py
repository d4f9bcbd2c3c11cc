"""The expectation suites, as data: what each suite expects, and what to tell a person when it fails.

Only what can fail is checked here: the world and holdout files a user supplies (duplicate
rows, holdout records inside the world), empty sets, the batch of requests as handed in,
and token lengths against the model. What holds by construction is checked where the data
is built: field types and empty fields by the loaders (components.data.loaders), well-formed
ids by the request parser, disjoint forget and retain sets and every requested record in
the forget set by the resolver (components.data.requests).

A :class:`Check` names a Great Expectations expectation class and its arguments; the GX
objects are only built when a validation runs (GX is slow to import). Every check also
carries the words for its failure: ``problem`` (what is wrong, with ``{count}`` and the
other fields of :meth:`Check.render_problem`) and ``fix`` (what to do about it). Nothing here
quotes record text: the frames the suites look at hold ids, hashes, counts and flags.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import Any

# Columns of the frames (see components/validation/frames.py).
RECORD_COLUMNS = ["record_id", "subject_hash", "kind"]
SPLIT_COLUMNS = RECORD_COLUMNS + ["n_tokens", "n_tokens_alternatives", "in_world"]
REQUEST_COLUMNS = ["request_id", "n_subjects", "n_records"]


class _PluralFormatter(string.Formatter):
    def format_field(self, value: Any, format_spec: str) -> str:
        if "|" in format_spec:
            singular, plural = format_spec.split("|", 1)
            return f"{value} {singular if value == 1 else plural}"
        return super().format_field(value, format_spec)


_PLURAL = _PluralFormatter()

INTERNAL_FIX = "the validation frames are built by components/validation/frames.py; report this as a bug"


@dataclass(frozen=True)
class Check:
    """One expectation and how its failure is worded."""

    key: str
    expectation: str  # a class in great_expectations.expectations, e.g. "ExpectColumnValuesToBeUnique"
    kwargs: dict[str, Any]
    description: str  # what is expected, shown in Data Docs
    problem: str  # what is wrong; fields {count}, {worst}, {observed} and the suite's params
    fix: str

    def render_problem(self, **fields: Any) -> str:
        """Fill in ``problem``; ``{count:row is|rows are}`` picks the words for the count."""
        return _PLURAL.format(self.problem, **fields)

    @property
    def column(self) -> str | None:
        return self.kwargs.get("column") or self.kwargs.get("column_A")


@dataclass(frozen=True)
class Suite:
    """An expectation suite over the frame of the same name; ``id_column`` names the rows in reports."""

    name: str
    label: str  # how a person calls the data: "forget set", "world", ...
    checks: tuple[Check, ...]
    id_column: str | None = "record_id"
    params: dict[str, Any] = field(default_factory=dict)


def _non_empty(what: str, fix: str) -> Check:
    return Check(
        key="non_empty",
        expectation="ExpectTableRowCountToBeBetween",
        kwargs={"min_value": 1},
        description=f"The {what} has at least one row.",
        problem="empty (no rows)",
        fix=fix,
    )


def _unique(fix: str) -> Check:
    return Check(
        key="unique",
        expectation="ExpectColumnValuesToBeUnique",
        kwargs={"column": "record_id"},
        description="Every record appears once (record_id is a hash of the record's content).",
        problem="{count:row holds|rows hold} a record that appears more than once",
        fix=fix,
    )


def _length_check(key: str, column: str, max_length: int, subject: str, problem: str, fix: str) -> Check:
    """Values of ``column`` (token counts) between 1 and ``model.max_length``."""
    return Check(
        key=key,
        expectation="ExpectColumnValuesToBeBetween",
        kwargs={"column": column, "min_value": 1, "max_value": max_length},
        description=f"Every record's {subject} fits in model.max_length = {max_length} tokens.",
        problem=problem,
        fix=fix,
    )


def _lengths(what: str, max_length: int) -> tuple[Check, ...]:
    return (
        _length_check("length", "n_tokens", max_length, "prompt + answer (as encoded for training)",
                      "{count:record is|records are} longer than model.max_length={max_length} tokens "
                      "counting prompt and answer, the longest {worst}",
                      "raise model.max_length or shorten them; longer examples would be silently truncated"),
        _length_check("alternatives_length", "n_tokens_alternatives", max_length,
                      "paraphrased and perturbed answers also",
                      "{count:record has|records have} a paraphrased or perturbed answer longer than "
                      "model.max_length={max_length} tokens, the longest {worst}",
                      "raise model.max_length or shorten those answers; evaluation would silently truncate them"),
    )


def _not_in_world(what: str, fix: str) -> Check:
    return Check(
        key="in_world",
        expectation="ExpectColumnValuesToBeInSet",
        kwargs={"column": "in_world", "value_set": [False]},
        description=f"No record of the {what} is in the world (it must never have been trained on).",
        problem="{count:record is|records are} also in the world, so the model was trained on them",
        fix=fix,
    )


def world_suite() -> Suite:
    return Suite("world", "world", (
        _non_empty("world", "check world.source and world.path in params.yaml"),
        _unique("remove the duplicate rows from the world file; a duplicated record "
                "cannot be told apart from its copy when it has to be forgotten"),
    ))


def request_suite() -> Suite:
    """The batch of requests as handed in (each file was parsed strictly on the way in)."""
    return Suite(
        name="request",
        label="request",
        id_column="request_id",
        checks=(
            _non_empty("batch of requests", "give at least one deletion request"),
            Check(
                key="request_id_unique",
                expectation="ExpectColumnValuesToBeUnique",
                kwargs={"column": "request_id"},
                description="Each request in a batch has its own request_id.",
                problem="{count:request shares|requests share} a request_id with another request of the batch",
                fix="give each request its own request_id",
            ),
        ),
    )


def split_suite(split: str, max_length: int) -> Suite:
    """The forget or retain set: not empty, each record once, each fits the model."""
    if split == "forget":
        what, empty_fix = "forget set", "the request resolved to nothing; check its subjects and records"
    else:
        what, empty_fix = "retain set", (
            "the request would erase the whole world, leaving nothing to retain; retire the model "
            "instead of unlearning"
        )
    return Suite(
        name=split,
        label=what,
        params={"max_length": max_length},
        checks=(
            _non_empty(what, empty_fix),
            _unique("remove the duplicate rows from the world file (a record the world lists twice "
                    "is listed twice here)"),
            *_lengths(what, max_length),
        ),
    )


def holdout_suite(max_length: int) -> Suite:
    return Suite(
        name="holdout",
        label="holdout set",
        params={"max_length": max_length},
        checks=(
            _unique("remove the duplicate rows from the holdout file"),
            _not_in_world(
                "holdout set",
                "remove them from the holdout file: membership inference needs records the model never saw",
            ),
            *_lengths("holdout set", max_length),
        ),
    )


def all_suites(max_length: int, *, with_holdout: bool) -> list[Suite]:
    """The suites in the order they run and are reported."""
    suites = [world_suite(), request_suite(), split_suite("forget", max_length), split_suite("retain", max_length)]
    if with_holdout:
        suites.append(holdout_suite(max_length))
    return suites
