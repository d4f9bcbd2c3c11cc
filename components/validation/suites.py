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

A check of severity ``warning`` never fails a validation: it is reported as a warning (in
the report, its ``reason()`` and the log) and the run goes on. The holdout's likeness to the
forget set is such a check (see :func:`holdout_likeness`): an unlike holdout makes the
oracle-free forgetting checks misleading, but it is not wrong data.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import Any

# Columns of the frames (see components/validation/frames.py).
RECORD_COLUMNS = ["record_id", "subject_hash", "kind"]
SPLIT_COLUMNS = RECORD_COLUMNS + ["n_tokens", "n_tokens_alternatives", "n_scored_tokens", "in_world"]
REQUEST_COLUMNS = ["request_id", "n_subjects", "n_records"]


class _PluralFormatter(string.Formatter):
    def format_field(self, value: Any, format_spec: str) -> str:
        if isinstance(value, (list, tuple)) and not format_spec:
            return ", ".join(str(item) for item in value)
        if "|" in format_spec:
            singular, plural = format_spec.split("|", 1)
            return f"{value} {singular if value == 1 else plural}"
        return super().format_field(value, format_spec)


_PLURAL = _PluralFormatter()

INTERNAL_FIX = "the validation frames are built by components/validation/frames.py; report this as a bug"

CRITICAL, WARNING = "critical", "warning"
# The holdout is unlike the forget set when the median number of scored tokens per record
# (a QA record's answer, a text record's text) of one is more than this many times the
# other's. Membership scores (mean loss, min-k%, zlib) and answer probabilities all depend on
# length, so a forget set and a holdout of different lengths differ for that reason alone.
HOLDOUT_LENGTH_RATIO = 1.5


@dataclass(frozen=True)
class Check:
    """One expectation and how its failure is worded."""

    key: str
    expectation: str  # a class in great_expectations.expectations, e.g. "ExpectColumnValuesToBeUnique"
    kwargs: dict[str, Any]
    description: str  # what is expected, shown in Data Docs
    problem: str  # what is wrong; fields {count}, {worst}, {observed} and the suite's params
    fix: str
    severity: str = CRITICAL  # critical: fails the validation | warning: reported, the run goes on

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


@dataclass(frozen=True)
class ForgetProfile:
    """What the holdout is compared with: the forget set's record kinds and median scored length."""

    kinds: tuple[str, ...]
    median_scored_tokens: float


_LIKE_FIX = ("use holdout records of the same kind and length as the ones erased, about people the model "
             "never saw (see docs/own-data.md); the forget-vs-holdout checks and the holdout stop compare the "
             "two sets, so with an unlike holdout they measure the difference in kind or length, not forgetting")


def holdout_likeness(profile: ForgetProfile, ratio: float = HOLDOUT_LENGTH_RATIO) -> tuple[Check, ...]:
    """Warnings (never failures) when the holdout is unlike the forget set: records of a kind the
    forget set has none of (text against QA), or a median scored length (tokens of a QA
    record's answer, of a text record's text) more than ``ratio`` times the forget set's or
    less than its ``1/ratio``."""
    low, high = profile.median_scored_tokens / ratio, profile.median_scored_tokens * ratio
    return (
        Check(
            key="kind_like_forget",
            expectation="ExpectColumnValuesToBeInSet",
            kwargs={"column": "kind", "value_set": list(profile.kinds)},
            description=f"Every holdout record is of a kind the forget set holds ({', '.join(profile.kinds)}).",
            problem=("{count:record is|records are} of a kind the forget set has none of "
                     "(the forget set's: {forget_kinds}) (warning)"),
            fix=_LIKE_FIX,
            severity=WARNING,
        ),
        Check(
            key="length_like_forget",
            expectation="ExpectColumnMedianToBeBetween",
            kwargs={"column": "n_scored_tokens", "min_value": low, "max_value": high},
            description=(f"The holdout's median scored length (answer or text tokens) is within {ratio:g}x of the "
                         f"forget set's ({profile.median_scored_tokens:g} tokens): between {low:.1f} and {high:.1f}."),
            problem=("median length {observed:g} scored tokens per record, the forget set's {forget_median:g}: "
                     "more than {length_ratio:g}x apart (warning)"),
            fix=_LIKE_FIX,
            severity=WARNING,
        ),
    )


def holdout_suite(max_length: int, forget: ForgetProfile | None = None) -> Suite:
    """Each holdout record once, never in the world, fits the model; with ``forget`` (the forget
    set's profile, None when it is empty) a warning when the holdout is unlike it."""
    params: dict[str, Any] = {"max_length": max_length}
    likeness: tuple[Check, ...] = ()
    if forget is not None:
        likeness = holdout_likeness(forget)
        params |= {"forget_kinds": list(forget.kinds), "forget_median": forget.median_scored_tokens,
                   "length_ratio": HOLDOUT_LENGTH_RATIO}
    return Suite(
        name="holdout",
        label="holdout set",
        params=params,
        checks=(
            _unique("remove the duplicate rows from the holdout file"),
            _not_in_world(
                "holdout set",
                "remove them from the holdout file: membership inference needs records the model never saw",
            ),
            *_lengths("holdout set", max_length),
            *likeness,
        ),
    )


def all_suites(max_length: int, *, with_holdout: bool, forget: ForgetProfile | None = None) -> list[Suite]:
    """The suites in the order they run and are reported (``forget``: see :func:`holdout_suite`)."""
    suites = [world_suite(), request_suite(), split_suite("forget", max_length), split_suite("retain", max_length)]
    if with_holdout:
        suites.append(holdout_suite(max_length, forget))
    return suites
