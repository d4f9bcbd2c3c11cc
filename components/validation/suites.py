"""The expectation suites, as data: what each suite expects, and what to tell a person when it fails.

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

from components.data.requests import REQUEST_ID_PATTERN

RECORD_ID_PATTERN = r"^[0-9a-f]{16}$"
RECORD_KINDS = ["qa", "text"]

# Columns of the frames (see components/validation/frames.py).
RECORD_COLUMNS = [
    "record_id", "subject_hash", "kind", "fields_are_strings", "min_field_chars", "subject_chars",
]
SPLIT_COLUMNS = RECORD_COLUMNS + ["n_tokens", "n_tokens_alternatives", "in_world"]
REQUEST_COLUMNS = ["request_id", "received_at", "n_subjects", "n_records", "n_items"]
COVERAGE_COLUMNS = ["request_id", "item", "item_kind", "item_hash", "n_in_world", "n_in_forget", "unambiguous"]
DISJOINT_COLUMNS = ["record_id", "in_retain"]


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
    id_column: str | None
    checks: tuple[Check, ...]
    label_column: str | None = None  # an extra column that names rows (e.g. "subjects[0]")
    params: dict[str, Any] = field(default_factory=dict)


def _columns(columns: list[str]) -> Check:
    return Check(
        key="columns",
        expectation="ExpectTableColumnsToMatchSet",
        kwargs={"column_set": list(columns), "exact_match": True},
        description="The frame has exactly the expected columns.",
        problem="the validation frame has columns {observed}",
        fix=INTERNAL_FIX,
    )


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


def _record_schema(what: str) -> tuple[Check, ...]:
    """Schema and types: a content-hash id, a known kind, non-empty string fields, a subject."""
    return (
        Check(
            key="record_id_format",
            expectation="ExpectColumnValuesToMatchRegex",
            kwargs={"column": "record_id", "regex": RECORD_ID_PATTERN},
            description="record_id is a 16-hex-digit content hash.",
            problem=(
                "{count:record id is not a 16-hex-digit content hash"
                "|record ids are not 16-hex-digit content hashes}"
            ),
            fix="build records with components.data (QARecord / TextRecord), whose id is a content hash",
        ),
        Check(
            key="kind",
            expectation="ExpectColumnValuesToBeInSet",
            kwargs={"column": "kind", "value_set": list(RECORD_KINDS)},
            description="Every record is a question/answer record or a text record.",
            problem="{count:row is|rows are} neither a question/answer nor a text record",
            fix=f"load the {what} with components.data.loaders.load_records",
        ),
        Check(
            key="fields_are_strings",
            expectation="ExpectColumnValuesToBeInSet",
            kwargs={"column": "fields_are_strings", "value_set": [True]},
            description="question, answer, text and subject are strings.",
            problem="{count:record has|records have} a question, answer, text or subject that is not a string",
            fix=f"fix those rows of the {what} file: every field must be a string",
        ),
        Check(
            key="fields_not_empty",
            expectation="ExpectColumnValuesToBeBetween",
            kwargs={"column": "min_field_chars", "min_value": 1},
            description="No record has an empty question, answer or text.",
            problem="{count:record has|records have} an empty question, answer or text",
            fix=f"fill in or remove those rows of the {what} file",
        ),
        Check(
            key="subject_not_empty",
            expectation="ExpectColumnValuesToBeBetween",
            kwargs={"column": "subject_chars", "min_value": 1},
            description="Every record names its subject.",
            problem="{count:record has|records have} an empty subject",
            fix=f"give those rows of the {what} file a subject (or set world.rows_per_subject)",
        ),
    )


def _lengths(what: str, max_length: int) -> tuple[Check, ...]:
    return (
        Check(
            key="length",
            expectation="ExpectColumnValuesToBeBetween",
            kwargs={"column": "n_tokens", "min_value": 1, "max_value": max_length},
            description=(
                f"Every record's prompt + answer (as encoded for training) fits in "
                f"model.max_length = {max_length} tokens."
            ),
            problem=(
                "{count:record is|records are} longer than model.max_length={max_length} tokens "
                "counting prompt and answer, the longest {worst}"
            ),
            fix="raise model.max_length or shorten them; longer examples would be silently truncated",
        ),
        Check(
            key="alternatives_length",
            expectation="ExpectColumnValuesToBeBetween",
            kwargs={"column": "n_tokens_alternatives", "min_value": 1, "max_value": max_length},
            description=(
                f"Every record's paraphrased and perturbed answers also fit in "
                f"model.max_length = {max_length} tokens."
            ),
            problem=(
                "{count:record has|records have} a paraphrased or perturbed answer longer than "
                "model.max_length={max_length} tokens, the longest {worst}"
            ),
            fix=(
                "raise model.max_length or shorten those answers; evaluation would silently "
                "truncate them"
            ),
        ),
    )


def _in_world(what: str, expected: bool, fix: str) -> Check:
    if expected:
        description = f"Every record of the {what} is in the world."
        problem = "{count:record is|records are} not in the world"
    else:
        description = f"No record of the {what} is in the world (it must never have been trained on)."
        problem = "{count:record is|records are} also in the world, so the model was trained on them"
    return Check(
        key="in_world",
        expectation="ExpectColumnValuesToBeInSet",
        kwargs={"column": "in_world", "value_set": [expected]},
        description=description,
        problem=problem,
        fix=fix,
    )


def world_suite() -> Suite:
    return Suite(
        name="world",
        label="world",
        id_column="record_id",
        checks=(
            _columns(RECORD_COLUMNS),
            _non_empty("world", "check world.source and world.path in params.yaml"),
            *_record_schema("world"),
            _unique("remove the duplicate rows from the world file; a duplicated record "
                    "cannot be told apart from its copy when it has to be forgotten"),
        ),
    )


def request_suite() -> Suite:
    return Suite(
        name="request",
        label="request",
        id_column="request_id",
        checks=(
            _columns(REQUEST_COLUMNS),
            _non_empty("batch of requests", "give at least one deletion request"),
            Check(
                key="request_id_format",
                expectation="ExpectColumnValuesToMatchRegex",
                kwargs={"column": "request_id", "regex": REQUEST_ID_PATTERN.pattern},
                description="request_id is 1 to 128 letters, digits, '-' or '_'.",
                problem="{count:request id is|request ids are} not 1 to 128 letters, digits, '-' or '_'",
                fix="rename the request (no spaces, dots or slashes)",
            ),
            Check(
                key="request_id_unique",
                expectation="ExpectColumnValuesToBeUnique",
                kwargs={"column": "request_id"},
                description="Each request in a batch has its own request_id.",
                problem="{count:request shares|requests share} a request_id with another request of the batch",
                fix="give each request its own request_id",
            ),
            Check(
                key="received_at",
                expectation="ExpectColumnValuesToNotBeNull",
                kwargs={"column": "received_at"},
                description="Every request says when it was received.",
                problem="{count:request has|requests have} no received_at",
                fix="add 'received_at' as an ISO 8601 time such as 2026-11-28T09:30:00Z",
            ),
            Check(
                key="something_to_erase",
                expectation="ExpectColumnValuesToBeBetween",
                kwargs={"column": "n_items", "min_value": 1},
                description="Every request names at least one subject or record.",
                problem="{count:request names|requests name} nothing to erase",
                fix="give at least one entry in 'subjects' or 'records'",
            ),
        ),
    )


def coverage_suite() -> Suite:
    return Suite(
        name="request_coverage",
        label="request coverage",
        id_column="item_hash",
        label_column="item",
        checks=(
            _columns(COVERAGE_COLUMNS),
            Check(
                key="found",
                expectation="ExpectColumnValuesToBeBetween",
                kwargs={"column": "n_in_world", "min_value": 1},
                description="Every requested subject and record is in the world.",
                problem=(
                    "{count:requested subject or record is|requested subjects or records are} "
                    "not in the world"
                ),
                fix=(
                    "check the subject's spelling, or the record's question/answer/record_id, "
                    "against the world; hashes are content_hash of the subject name or of the record spec"
                ),
            ),
            Check(
                key="unambiguous",
                expectation="ExpectColumnValuesToBeInSet",
                kwargs={"column": "unambiguous", "value_set": [True]},
                description="Every requested record matches exactly one record of the world.",
                problem=(
                    "{count:requested record matches|requested records match} "
                    "more than one record of the world"
                ),
                fix="add 'answer' or 'subject' to them, or name the record by 'record_id'",
            ),
            Check(
                key="covered",
                expectation="ExpectColumnPairValuesToBeEqual",
                kwargs={"column_A": "n_in_world", "column_B": "n_in_forget"},
                description="The forget set holds every world record that a request names.",
                problem=(
                    "{count:requested subject or record is|requested subjects or records are} "
                    "not wholly in the forget set"
                ),
                fix="resolve the request again (stage prepare): the forget set must hold every record it names",
            ),
        ),
    )


def split_suite(split: str, max_length: int) -> Suite:
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
        id_column="record_id",
        params={"max_length": max_length},
        checks=(
            _columns(SPLIT_COLUMNS),
            _non_empty(what, empty_fix),
            _unique("resolve the request again (stage prepare): each record must be listed once"),
            _in_world(what, True, "resolve the request again (stage prepare) against the current world"),
            *_lengths(what, max_length),
        ),
    )


def disjoint_suite() -> Suite:
    return Suite(
        name="forget_retain_disjoint",
        label="forget and retain sets",
        id_column="record_id",
        checks=(
            _columns(DISJOINT_COLUMNS),
            Check(
                key="disjoint",
                expectation="ExpectColumnValuesToBeInSet",
                kwargs={"column": "in_retain", "value_set": [False]},
                description="No record of the forget set is in the retain set.",
                problem="{count:record of the forget set is|records of the forget set are} also in the retain set",
                fix=(
                    "resolve the request again (stage prepare): a record to forget must never be "
                    "trained on as retain data"
                ),
            ),
        ),
    )


def holdout_suite(max_length: int) -> Suite:
    return Suite(
        name="holdout",
        label="holdout set",
        id_column="record_id",
        params={"max_length": max_length},
        checks=(
            _columns(SPLIT_COLUMNS),
            *_record_schema("holdout"),
            _unique("remove the duplicate rows from the holdout file"),
            _in_world(
                "holdout set", False,
                "remove them from the holdout file: membership inference needs records the model never saw",
            ),
            *_lengths("holdout set", max_length),
        ),
    )


def all_suites(max_length: int, *, with_holdout: bool) -> list[Suite]:
    """The suites in the order they run and are reported."""
    suites = [
        world_suite(),
        request_suite(),
        coverage_suite(),
        split_suite("forget", max_length),
        split_suite("retain", max_length),
        disjoint_suite(),
    ]
    if with_holdout:
        suites.append(holdout_suite(max_length))
    return suites
