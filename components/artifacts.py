"""What passes between the stages: one typed model per arrow of the flow.

    request ──► prepare ──► Resolution ──► evaluate ──► Metrics ──► register ──► GateDecision
                                                                         └──► ErasureRecord, Certificate

Beside them, the files the stages and the flow keep for themselves: prepare's :class:`PreparedSettings`
and :class:`EarlierLevels`, finetune's :class:`FinetuneSummary` (a demo model's :class:`TrainedModel`),
unlearn's :class:`UnlearnSummary` and step log (:func:`read_unlearn_log`), a model folder's
:class:`ModelRef`, the flow's :class:`BatchFailures`, :class:`PushPending` and the inbox's
:class:`SettlingJournal` and :class:`RunningBatch`, and the certificate chain's :class:`ChainHead`.

Each artifact names its file in :class:`~components.paths.Paths` (or ``ReportFiles``, ``ModelFiles``),
validates when it is built and when it is read back (:meth:`load`), and writes the same JSON as
before it had a type (:meth:`save`). No other module reads these files by key: they load the
artifact and use its fields. A file that is not JSON or does not hold its artifact is an
:class:`ArtifactError` naming the file and, through :func:`validation_reasons` (as
:mod:`components.config` words them), each bad key.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Iterator, Literal, Mapping, TypeVar

from dataclasses import field as dataclass_field

from pydantic import (BaseModel, ConfigDict, Discriminator, Field, RootModel, SerializerFunctionWrapHandler, TypeAdapter,
                      Tag, ValidationError, ValidationInfo, field_serializer, field_validator, model_serializer,
                      model_validator)
from pydantic.dataclasses import dataclass as pydantic_dataclass

from components.jsonfiles import read_json, write_json
from components.paths import schema_file

# The three models every evaluation compares, in the order every table shows them.
ROLES = ("target", "oracle", "unlearned")
Role = Literal["target", "oracle", "unlearned"]
A = TypeVar("A", bound="StoredFile")
M = TypeVar("M", bound=BaseModel)


def validation_reasons(error: ValidationError, *, where: str = "", unknown: str = "unknown key") -> list[str]:
    """One line per problem: the dotted key, then what was wrong with it (``unknown``: said of a key
    the schema does not have)."""
    reasons = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"] if part not in ("function-after", "function-before"))
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = unknown
        reasons.append(f"{where}{key or '(top level)'}: {message}")
    return reasons


class ArtifactError(ValueError):
    """A stage's file that is not JSON or does not hold its artifact; the message names the file and
    each problem by its key."""


def read_file(path: str | Path) -> Any:
    """The JSON content of an artifact's file, as stored (:class:`ArtifactError` when it is not JSON;
    a missing or unreadable file raises its :class:`OSError`)."""
    try:
        return read_json(path)
    except (ValueError, RecursionError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ArtifactError(f"{path} is not JSON ({type(error).__name__}: {str(error)[:200]})") from None


def parse_file(model: type[M], data: Any, path: str | Path) -> M:
    """``data`` (the content of ``path``) as ``model``; :class:`ArtifactError` naming the file and each bad key."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise ArtifactError(f"{path} does not hold a valid {model.__name__}: "
                            + "; ".join(validation_reasons(error))) from None


def load_file(model: type[M], path: str | Path) -> M:
    """The file at ``path`` read and validated as ``model`` (see :func:`read_file`, :func:`parse_file`)."""
    return parse_file(model, read_file(path), path)


class StoredFile:
    """What a pydantic model with a file gains (:class:`Artifact`, and root models such as
    :class:`EarlierLevels`): :meth:`save` writes it atomically, :meth:`load` validates it (a bad
    file is an :class:`ArtifactError` that names it)."""

    def to_dict(self) -> dict[str, Any]:
        """The file's content, in JSON types."""
        return self.model_dump(mode="json")  # type: ignore[attr-defined]

    def save(self, path: str | Path) -> Path:
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls: type[A], path: str | Path) -> A:
        return load_file(cls, path)  # type: ignore[type-var]


class Artifact(StoredFile, BaseModel):
    """A stage output with its file (see :class:`StoredFile`)."""


# --------------------------------------------------------------------------- the request

# One pattern per kind of id, used wherever the id is checked (requests, MLflow, certificates).
# \A and \Z, not ^ and $: '$' also matches before a final newline, so "req-1\n" would pass.
REQUEST_ID = re.compile(r"\A[A-Za-z0-9_-]{1,128}\Z")
BATCH_ID = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
REQUEST_KEYS = ("request_id", "received_at", "subjects", "records", "reason")
RECORD_KEYS = ("question", "answer", "text", "record_id", "subject")
_ISO_EXAMPLE = "2026-11-28T09:30:00Z"
_SPLIT = "\n"  # a validator's several reasons, one per line


def is_request_id(value: Any) -> bool:
    """True for a well-formed request id: 1 to 128 letters, digits, '-' or '_', nothing else."""
    return isinstance(value, str) and REQUEST_ID.fullmatch(value) is not None


def _record_spec_problem(index: int, spec: Any) -> str | None:
    where = f"records[{index}]"
    if not isinstance(spec, dict):
        return f"{where} must be an object or a record id string, got {type(spec).__name__}"
    unknown = set(spec) - set(RECORD_KEYS)
    if unknown:
        return f"{where} has unknown keys {sorted(unknown)}; allowed: {sorted(RECORD_KEYS)}"
    if not ({"question", "text", "record_id"} & set(spec)):
        return f"{where} needs 'question' (optionally with 'answer'), 'text' or 'record_id'"
    return next((f"{where}.{key} must be a non-empty string" for key, value in spec.items()
                 if not isinstance(value, str) or not value.strip()), None)


def _a_list(value: Any, key: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError(f"'{key}' must be a list, got {type(value).__name__}")
    return value


NOTHING_TO_ERASE = "nothing to erase: give at least one entry in 'subjects' or 'records'"


@pydantic_dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class DeletionRequest:
    """A deletion request file (``data/requests/...``): who asked, when, and what to erase, as
    subjects (everything about a person) and/or records. Its repr shows the id and time only, so
    a log or error message that prints a request never prints whom it names. A (pydantic) dataclass:
    ``dataclasses.replace`` validates the copy too."""

    request_id: Annotated[str, Field(description="1 to 128 letters, digits, '-' or '_'",
                                     pattern=REQUEST_ID.pattern[2:-2])]
    received_at: Annotated[datetime, Field(description=f"ISO 8601, e.g. {_ISO_EXAMPLE}")]
    subjects: tuple[str, ...] = dataclass_field(default=(), repr=False)
    records: Annotated[tuple[dict[str, str], ...], Field(description="objects with 'question' (and 'answer'), 'text' or "
                                                         "'record_id' (and 'subject'), or record ids")] = \
        dataclass_field(default=(), repr=False)
    reason: str | None = dataclass_field(default=None, repr=False)

    @classmethod
    def parse(cls, data: Any) -> "DeletionRequest":
        """Validate a request's JSON content (a :class:`pydantic.ValidationError`: see :meth:`reasons`)."""
        return TypeAdapter(cls).validate_python(data)

    @field_validator("request_id", mode="before")
    @classmethod
    def _id(cls, value: Any) -> str:
        if not is_request_id(value):
            raise ValueError("'request_id' must be 1 to 128 letters, digits, '-' or '_' (no spaces, dots or slashes)")
        return value

    @field_validator("received_at", mode="before")
    @classmethod
    def _time(cls, value: Any) -> Any:
        if isinstance(value, datetime):
            return value
        if not isinstance(value, str):
            raise ValueError(f"'received_at' must be an ISO 8601 string such as {_ISO_EXAMPLE}")
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"'received_at' is not an ISO 8601 time: '{value[:40]}'") from None

    @field_validator("subjects", mode="before")
    @classmethod
    def _subjects(cls, value: Any) -> tuple[str, ...]:
        subjects = _a_list(list(value) if isinstance(value, tuple) else value, "subjects")
        problems = [f"subjects[{i}] must be a non-empty string" for i, subject in enumerate(subjects)
                    if not isinstance(subject, str) or not subject.strip()]
        if problems:
            raise ValueError(_SPLIT.join(problems))
        return tuple(dict.fromkeys(subject.strip() for subject in subjects))

    @field_validator("records", mode="before")
    @classmethod
    def _records(cls, value: Any) -> tuple[dict[str, str], ...]:
        specs = [{"record_id": spec} if isinstance(spec, str) else spec
                 for spec in _a_list(list(value) if isinstance(value, tuple) else value, "records")]
        problems = [problem for index, spec in enumerate(specs) if (problem := _record_spec_problem(index, spec))]
        if problems:
            raise ValueError(_SPLIT.join(problems))
        return tuple(dict(spec) for spec in specs)

    @field_validator("reason", mode="before")
    @classmethod
    def _reason(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, str):
            raise ValueError("'reason' must be a string")
        return value

    @model_validator(mode="after")
    def _something_to_erase(self) -> "DeletionRequest":
        if not self.subjects and not self.records:
            raise ValueError(NOTHING_TO_ERASE)
        return self

    @classmethod
    def reasons(cls, error: ValidationError) -> list[str]:
        """What was wrong with a request, worded for the person who wrote it (never quoting its text
        beyond the time it gave)."""
        reasons, unknown = [], []
        for item in error.errors():
            key = str(item["loc"][0]) if item["loc"] else ""
            if item["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
                unknown.append(key)
            elif item["type"] == "missing":
                hint = f" (an ISO 8601 time such as {_ISO_EXAMPLE})" if key == "received_at" else ""
                reasons.append(f"missing '{key}'{hint}")
            else:
                reasons += item["msg"].removeprefix("Value error, ").split(_SPLIT)
        if unknown:
            reasons.insert(0, f"unknown keys {sorted(unknown)}; allowed: {sorted(REQUEST_KEYS)}")
        return reasons

    def fingerprint(self) -> str:
        """A content hash of the request (ids and hashes go to logs, never its text)."""
        from components.data.records import content_hash

        return content_hash(
            {"request_id": self.request_id, "subjects": list(self.subjects), "records": list(self.records)}
        )


# --------------------------------------------------------------------------- prepare -> Resolution


class Resolution(Artifact):
    """``data/prepared/resolution.json``: what a batch of requests means for the world, in ids,
    hashes and counts (the records themselves are the split files beside it)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    request_ids: list[str]
    request_hashes: dict[str, str]
    received_at: dict[str, str]
    n_subjects: int
    n_forget: int
    n_retain: int
    n_previously_forgotten: int
    forget_digest: str
    retain_digest: str
    forget_ids: list[str]
    forget_ids_by_request: dict[str, list[str]]
    n_world: int | None = None
    n_holdout: int | None = None
    earlier_requests: list[str] = Field(default_factory=list)  # re-checked: still forgotten
    max_length: int | None = None  # model.max_length as prepare derived it


class PreparedSettings(Artifact):
    """``data/prepared/settings.json``: what prepare derived from the data for the later stages
    (``model.max_length: auto`` resolved). Part of the fine-tune cache key: its bytes must not change."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    max_length: int = Field(ge=8, description="model.max_length as prepare derived it")


_RequestKey = Annotated[str, Field(pattern=f"^{REQUEST_ID.pattern[2:-2]}$")]


class EarlierLevels(StoredFile, RootModel[dict[_RequestKey, float]]):
    """``data/prepared/earlier/levels.json``: earlier request id -> the unlearned ``forget_prob`` its
    certificate recorded (what the gate's ``max_earlier_regain_ratio`` compares with)."""

    model_config = ConfigDict(frozen=True, strict=True)

    def get(self, request_id: str) -> float | None:
        return self.root.get(request_id)

    @classmethod
    def read(cls, path: str | Path) -> "EarlierLevels":
        """The levels at ``path``, none when prepare recorded none (no file)."""
        return cls.load(path) if Path(path).exists() else cls({})


# --------------------------------------------------------------------------- finetune -> FinetuneSummary


class TrainedModel(Artifact):
    """A demo model's ``training.json`` (:class:`~components.paths.ModelFiles`), also its section of
    ``reports/finetune.json``: how long it was fine-tuned and how well it learnt its records."""

    model_config = ConfigDict(frozen=True, extra="allow", strict=True)

    epochs: int = Field(ge=0)
    mean_answer_prob: float  # NaN when it had no example
    stop_reason: str
    n_records: int = Field(ge=0)


class LinkedModel(BaseModel):
    """A user's model in ``reports/finetune.json``: where it is (None: no such model, e.g. no oracle)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    source: str | None


# a section with 'source' is a user's model, any other a trained one (errors then name that model's keys)
_Finetuned = Annotated[Annotated[TrainedModel, Tag("trained")] | Annotated[LinkedModel, Tag("linked")],
                       Discriminator(lambda data: "linked" if isinstance(data, LinkedModel) or (
                           isinstance(data, Mapping) and "source" in data) else "trained")]


class FinetuneSummary(Artifact):
    """``reports/finetune.json`` (also ``.cache/finetune/<key>/finetune.json``): the target and the
    oracle as trained (the demo) or referenced (a user's model), the cache entry they came from
    (``cached``) and the stage's seconds. A key the stage did not write stays out of the file."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    target: _Finetuned
    oracle: _Finetuned
    cached: str | None = None  # the fine-tune cache entry's name (a key, never a path)
    seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_unset=True)


# --------------------------------------------------------------------------- unlearn -> UnlearnSummary


class UnlearnSummary(Artifact):
    """``reports/unlearn.json``: how the unlearning run went (what :mod:`components.unlearning` reports
    for it, kept whole) and what the stage adds: the method, the starting model and its seconds."""

    model_config = ConfigDict(frozen=True, extra="allow", strict=True)

    steps: int = Field(ge=0)
    resumed_from: int | None = None
    first_forget_loss: float | None = None
    final_forget_loss: float | None = None
    first_retain_loss: float | None = None
    final_retain_loss: float | None = None
    stop: dict[str, Any] | None = None  # the stopping rule's record, absent when it did not run
    method: dict[str, Any] = Field(default_factory=dict)
    start_model: str | None = None
    seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_unset=True)


class UnlearnStep(BaseModel):
    """One line of ``reports/unlearn_log.jsonl``: a step's number and its diagnostics (numbers by name)."""

    model_config = ConfigDict(extra="allow", strict=True)

    step: int = Field(ge=0)


def read_unlearn_log(path: str | Path) -> list[dict[str, Any]]:
    """The steps of ``reports/unlearn_log.jsonl``, each checked as an :class:`UnlearnStep` and returned
    as written; :class:`ArtifactError` names the file and line of a bad one."""
    import json

    steps = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            row = json.loads(line)
        except (ValueError, RecursionError) as error:
            raise ArtifactError(f"{where} is not JSON ({type(error).__name__}: {str(error)[:200]})") from None
        parse_file(UnlearnStep, row, where)
        steps.append(row)
    return steps


# --------------------------------------------------------------------------- each stage -> Resources


class Resources(Artifact):
    """``reports/resources.json``: each stage's wall time and peak memory (stage name -> numbers);
    ``evaluate`` also holds its cost: cache use per role, its floor and the sample sizes."""

    model_config = ConfigDict(extra="allow")

    evaluate: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def read(cls, path: str | Path) -> "Resources":
        """The record at ``path``, empty when there is none yet."""
        return cls.load(path) if Path(path).exists() else cls()

    def stage(self, name: str) -> dict[str, Any]:
        return dict(self.evaluate if name == "evaluate" else (self.model_extra or {}).get(name) or {})

    def with_stage(self, name: str, values: Mapping[str, Any]) -> "Resources":
        """A copy with stage ``name``'s entry replaced by ``values``."""
        return Resources.model_validate(self.model_dump() | {name: dict(values)})

    def fingerprint(self, role: str) -> str | None:
        """The evaluation-cache fingerprint of the model that last played ``role`` (None: not cached)."""
        return (self.evaluate.get("cache", {}).get(role) or {}).get("fingerprint")

    def cache_use(self) -> dict[str, dict[str, Any]]:
        """Role -> ``{"fingerprint", "hits", "misses"}`` of the last evaluation."""
        return dict(self.evaluate.get("cache") or {})

    def floor(self) -> dict[str, Any] | None:
        """The last evaluation's floor (:mod:`components.evaluation.floor`), None when not measured."""
        return self.evaluate.get("floor")

    def evaluate_summary(self) -> str:
        """One line on the last evaluation's cache use and its distance from the floor."""
        parts = [f"{role} cache {'hit' if entry['misses'] == 0 and entry['hits'] else 'miss'} "
                 f"({entry['hits']} reused, {entry['misses']} computed)" for role, entry in self.cache_use().items()]
        floor = self.floor() or {}
        if floor.get("ratio") is not None:
            parts.append(f"evaluate {floor['evaluate_seconds']:.1f} s = {floor['ratio']:.2f}x its floor "
                         f"({floor['floor_seconds']:.1f} s)")
            parts += [f"{name} {phase['seconds']:.1f} s (floor {phase['floor_seconds']:.1f} s)"
                      for name, phase in floor.get("phases", {}).items() if phase["seconds"]]
        return "; ".join(parts) or "no evaluation recorded"


# --------------------------------------------------------------------------- evaluate -> Metrics


def _metric_number(value: Any, where: str) -> float | int | None:
    """One idea of a number: a finite int or float; null, NaN and infinities are None; a bool or
    text is an error that names the key."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where} must be a number or null, got {type(value).__name__}")
    return value if math.isfinite(value) else None


def _checked_section(section: Any, role: str) -> dict[str, Any]:
    """One role's metrics with every value a number or None (see :func:`_metric_number`)."""
    if section is None:
        return {}
    if isinstance(section, RoleMetrics):
        section = section.root
    if not isinstance(section, Mapping):
        raise ValueError(f"metrics['{role}'] must be a mapping of metric names to numbers")
    values: dict[str, Any] = {}
    for key, value in section.items():
        where = f"metrics['{role}']['{key}']"
        if key != "earlier":
            values[key] = _metric_number(value, where)
            continue
        if not isinstance(value, Mapping):
            raise ValueError(f"{where} must map request ids to metrics")
        values[key] = {str(rid): {k: _metric_number(v, f"{where}['{rid}']['{k}']") for k, v in (found or {}).items()}
                       for rid, found in value.items()}
    return values


class RoleMetrics(RootModel[dict[str, Any]]):
    """One model's numbers (``reports/metrics.json`` under its role): metric name -> number or
    None, in the order evaluate reported them, and ``earlier`` -> request id -> metric -> number
    (absent when evaluate did not re-check earlier requests)."""

    model_config = ConfigDict(frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _absent_is_empty(cls, data: Any) -> Any:
        return {} if data is None else data

    def get(self, key: str) -> float | int | None:
        """The metric ``key`` (None: null or not reported)."""
        return None if key == "earlier" else self.root.get(key)

    def __getitem__(self, key: str) -> Any:
        return self.root[key]

    def scalars(self) -> dict[str, float | int | None]:
        """Every metric but the earlier-request sections, in the order reported."""
        return {key: value for key, value in self.root.items() if key != "earlier"}

    @property
    def earlier(self) -> dict[str, dict[str, float | int | None]] | None:
        """Request id -> the earlier request's metrics (None: evaluate did not re-check them)."""
        return self.root.get("earlier")


class Metrics(Artifact):
    """``reports/metrics.json``: each role's :class:`RoleMetrics` (empty for an absent model)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    target: RoleMetrics = Field(default_factory=lambda: RoleMetrics({}))
    oracle: RoleMetrics = Field(default_factory=lambda: RoleMetrics({}))
    unlearned: RoleMetrics = Field(default_factory=lambda: RoleMetrics({}))

    @model_validator(mode="before")
    @classmethod
    def _a_mapping(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            raise ValueError("metrics must be a mapping such as {'target': {...}, 'unlearned': {...}}")
        return data

    @field_validator("target", "oracle", "unlearned", mode="before")
    @classmethod
    def _numbers(cls, section: Any, info: ValidationInfo) -> dict[str, Any]:
        return _checked_section(section, info.field_name)

    @classmethod
    def parse(cls, data: Any) -> "Metrics":
        """``data`` as metrics; a problem is a ``ValueError`` naming the key (``metrics['unlearned']['x']``)."""
        if isinstance(data, Metrics):
            return data
        try:
            return cls.model_validate(data)
        except ValidationError as error:
            raise ValueError("; ".join(validation_reasons(error))) from None

    def role(self, role: str) -> RoleMetrics:
        return getattr(self, role)

    def __getitem__(self, role: str) -> RoleMetrics:
        return self.role(role)

    def value(self, role: str, key: str) -> float | int | None:
        """One metric of one model (None: null, not reported, or the model is absent)."""
        return self.role(role).get(key)

    def sections(self) -> Iterator[tuple[str, RoleMetrics]]:
        """(role, its metrics) in :data:`ROLES` order."""
        return ((role, self.role(role)) for role in ROLES)

    def numbers(self) -> dict[str, float]:
        """Every number by its path, for MLflow: ``unlearned.forget_prob``,
        ``unlearned.earlier.<request>.forget_prob`` (nulls left out)."""
        flat: dict[str, float] = {}
        for role, section in self.sections():
            for key, value in section.scalars().items():
                if value is not None:
                    flat[f"{role}.{key}"] = float(value)
            for request_id, values in (section.earlier or {}).items():
                flat.update({f"{role}.earlier.{request_id}.{key}": float(value)
                             for key, value in values.items() if value is not None})
        return flat


# --------------------------------------------------------------------------- register -> GateDecision


def _json_number(value: float | None) -> float | str | None:
    """JSON has no infinities: they are written as the strings "inf" / "-inf"."""
    if value is not None and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


class GateCheck(BaseModel):
    """One threshold and what the candidate scored against it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    metric: str
    op: Literal[">=", "<="]
    threshold: float
    value: float | None
    passed: bool | None  # None: skipped, the value could not be computed
    setting: str
    reason: str | None = None  # why it failed or was skipped (or, if it passed, a note)
    basis: Literal["oracle-free", "oracle"] = "oracle-free"  # "oracle": compares with the oracle model
    decides: bool = True  # False: reported beside the verdict, not part of it (gate.decide)

    @field_serializer("threshold", "value")
    def _finite_json(self, value: float | None) -> float | str | None:
        return _json_number(value)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# Keys of gate.json derived from the checks (written for readers, recomputed on load).
_DERIVED = ("reasons", "skipped", "oracle_free_passed", "oracle_passed", "verdicts_agree")


class GateDecision(Artifact):
    """The gate's verdict (``reports/gate.json``), later completed by promotion with what happened in
    the registry: ``version`` is the registered model version (None when not registered), ``alias``
    the alias moved to it (None when it did not move), ``champion_version`` the version the alias
    points to after the step."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    passed: bool
    checks: tuple[GateCheck, ...]
    model_name: str | None = None
    version: str | None = None
    alias: str | None = None
    run_id: str | None = None
    champion_version: str | None = None
    notes: tuple[str, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _drop_derived(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            return {key: value for key, value in data.items() if key not in _DERIVED}
        return data

    @property
    def reasons(self) -> list[str]:
        """Why the gate failed, one line per failed deciding check (empty when it passed)."""
        return [check.reason for check in self.checks if check.decides and check.passed is False and check.reason]

    @property
    def skipped(self) -> list[GateCheck]:
        return [check for check in self.checks if check.passed is None]

    def verdict(self, basis: str) -> bool | None:
        """Whether every ``basis`` check ("oracle-free" or "oracle") passed; None when none could be
        computed (no oracle) or none is configured."""
        checks = [c for c in self.checks if c.basis == basis and c.passed is not None]
        return all(c.passed for c in checks) if checks else None

    @property
    def agreement(self) -> bool | None:
        """Whether the oracle-free and the oracle verdicts agree (None without an oracle verdict)."""
        oracle, free = self.verdict("oracle"), self.verdict("oracle-free")
        return None if oracle is None or free is None else oracle == free

    @model_serializer(mode="wrap")
    def _with_derived(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """gate.json also spells out what follows from the checks, for a reader without this class."""
        return handler(self) | {
            "reasons": self.reasons,
            "skipped": [{"metric": c.metric, "setting": c.setting, "reason": c.reason} for c in self.skipped],
            "oracle_free_passed": self.verdict("oracle-free"), "oracle_passed": self.verdict("oracle"),
            "verdicts_agree": self.agreement}
    def completed(self, **changes: Any) -> "GateDecision":
        """A copy with registry fields filled in (``version``, ``alias``, ``run_id`` ...)."""
        return self.model_copy(update=changes)

    def with_check(self, check: GateCheck) -> "GateDecision":
        """A copy with one more check (e.g. the registry's own), ``passed`` updated."""
        return self.model_copy(update={"checks": self.checks + (check,),
                                       "passed": self.passed and check.passed is not False})

    def to_dict(self) -> dict[str, Any]:
        """The ``reports/gate.json`` content."""
        return self.model_dump(mode="json")

    def __getitem__(self, key: str) -> Any:
        """A key of :meth:`to_dict`, for callers written against ``gate.json`` (prefer the attributes)."""
        return self.to_dict()[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.to_dict().get(key, default)


# --------------------------------------------------------------------------- settle -> ErasureRecord


class ErasureRecord(Artifact):
    """``data/requests/processed/<request_id>.result.json``: a processed request, what it erased
    (record ids: content hashes), which batch and model version did it. Ids and hashes only."""

    model_config = ConfigDict(frozen=True, extra="allow")

    request_id: str
    forget_ids: list[str] = Field(default_factory=list)  # a result file without them is unreadable (Inbox)
    processed_at: str | None = Field(default=None, description="ISO 8601 time the request was settled")
    batch_id: str | None = Field(default=None, description="the flow batch that erased it")
    dvc_md5: str | None = Field(default=None, description="DVC's md5 of the request file")
    model_name: str | None = Field(default=None, description="the registered model that forgot it")
    model_version: str | None = Field(default=None, description="its first version without the records")
    run_id: str | None = Field(default=None, description="the MLflow run of that version")

    @field_validator("model_version", mode="before")
    @classmethod
    def _version_text(cls, value: Any) -> Any:
        return None if value is None else str(value)

    @classmethod
    def parse(cls, data: "ErasureRecord | Mapping[str, Any]") -> "ErasureRecord":
        return data if isinstance(data, ErasureRecord) else cls.model_validate(data)


# --------------------------------------------------------------------------- the flow's own records


class ModelRef(Artifact):
    """``model-ref.json`` of a model folder (:class:`~components.paths.ModelFiles`): the folder stands
    for the model at ``source`` (a path or hub name; None: for no model at all)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    source: str | None


class FetchedSource(Artifact):
    """A fetched model folder's ``source.json`` (``ModelFiles.fetched_source``): the registry wheel it was
    converted from, checked on the next fetch (written last: the folder is complete once it exists)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    package: str
    version: str
    sha256: str
    file: str  # the GGUF member of the wheel
    license: str
    converted_at: str = Field(description="ISO 8601 time of the conversion")


class BatchFailures(Artifact):
    """A flow batch folder's ``failures.json``: how many runs of the batch failed in a row and the
    last one's error type (never its message: it may quote a record)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    failures: int = Field(ge=0)
    last_error: str | None = None


class PushPending(Artifact):
    """``data/requests/push-pending.json``: a ``dvc push`` that did not finish, since when and why; the
    next run retries it. Both None: a record that could not be read (still a push to retry)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    since: str | None = Field(default=None, description="ISO 8601 time of the first failed push")
    error: str | None = None


class SettlingJournal(Artifact):
    """``data/requests/.settling.json``: the inbox move under way (paths relative to ``data/requests``):
    the request file, where it goes, and the note that settles it."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    source: str
    destination: str
    note: str

    @field_validator("source", "destination", "note")
    @classmethod
    def _relative(cls, value: str) -> str:
        if not value or Path(value).is_absolute() or ".." in Path(value).parts:
            raise ValueError("must be a path relative to data/requests")
        return value


class RunningBatch(Artifact):
    """``data/requests/.running.json``: what the batch under way took from the inbox (request ids and file
    names) and, once chosen, its id. Written when the inbox is taken, removed when the run ends; left by a
    run that stopped mid-batch until the next run takes the inbox. `blur request cancel` refuses what it names."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    taken_at: str = Field(description="ISO 8601 time the inbox was taken")
    request_ids: list[str] = Field(default_factory=list)
    files: list[str] = Field(default_factory=list, description="names of the inbox files taken (never logged)")
    batch_id: str | None = None
    # who took it (what `blur status` shows of a run that stopped; absent from records written before)
    pid: int | None = None
    host: str | None = None

    def describe(self) -> str:
        """The batch as `blur status` and the logs name it: its id (or when it was taken), its requests
        by id and the process that took it; never a file name."""
        who = f", by process {self.pid} on {self.host}" if self.pid is not None else ""
        return (f"batch {self.batch_id or '(no id yet)'} (taken at {self.taken_at}{who}; "
                f"{len(self.request_ids)} request(s): {', '.join(self.request_ids) or 'none'})")


class RequestIdPeek(BaseModel):
    """Only the ``request_id`` of a request file's JSON (every other key ignored): how a file that may
    fail :class:`DeletionRequest`'s checks is still named by its id in logs."""

    model_config = ConfigDict(frozen=True, extra="ignore", strict=True)

    request_id: str = Field(pattern=f"^{REQUEST_ID.pattern[2:-2]}$")

    @classmethod
    def of(cls, raw: bytes) -> str | None:
        """The well-formed request id in a file's bytes, None when there is none (or it is not JSON)."""
        import json

        try:
            return cls.model_validate(json.loads(raw)).request_id
        except (ValueError, RecursionError):  # not JSON, not UTF-8, or no well-formed id
            return None


# --------------------------------------------------------------------------- erasure -> Certificate

# What each certificate field may hold: ids, hashes, numbers and times, never text.
SHA256 = r"[0-9a-f]{64}"
MD5 = r"[0-9a-f]{32}(\.dir)?"
HEX_ID = r"[0-9a-f]{8,64}"
KEYED = r"[0-9a-f]{16}"  # an HMAC-SHA256 under the deployment's secret (erasure.safe.keyed_hash)
VERSION = r"[0-9]{1,12}"
RUN_ID = r"[0-9a-f]{32}"
RELATIVE_PATH = r"[A-Za-z0-9_.-]{1,200}(/[A-Za-z0-9_.-]{1,200})*"
GATE_WORD = r"[A-Za-z0-9_.<>=]{1,100}"
MODEL_NAME = r"[A-Za-z0-9_. /:-]{1,250}"


def _matching(pattern: str, what: str, **default: Any) -> Any:
    """A string field that must match ``pattern`` in full (``what`` it looks like, for the schema)."""
    return Field(pattern=f"^(?:{pattern})$", description=what, **default)


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class CertifiedRequest(_Strict):
    request_id: str = _matching(REQUEST_ID.pattern[2:-2], "a request id")
    content_sha256: str = _matching(f"{SHA256}|{KEYED}", "a sha256 hex digest (format 3: keyed by the deployment's secret)")
    dvc_md5: str | None = _matching(f"{MD5}|{KEYED}", "a DVC md5 (format 3: keyed by the deployment's secret)")


class CertifiedForgetSet(_Strict):
    n_records: int
    ids_digest: str = _matching(HEX_ID, "a hex hash (formats 2 and 3: keyed by the deployment's secret)")
    batch_id: str | None = _matching(BATCH_ID.pattern[2:-2], "a batch id")
    batch_dvc_md5: str | None = _matching(f"{MD5}|{KEYED}", "a DVC md5 (format 3: keyed by the deployment's secret)")


class CertifiedModel(_Strict):
    name: str = _matching(MODEL_NAME, "a model name")
    version: str = _matching(VERSION, "a model version number")
    run_id: str | None = _matching(RUN_ID, "an MLflow run id")
    weights_sha256: str = _matching(SHA256, "a sha256 hex digest")


class CertifiedEvidence(_Strict):
    measured_on: str
    oracle: bool
    metrics: dict[str, dict[Role, float]]
    # the unlearned forget_prob of this request's records alone (the gate's max_earlier_regain_ratio
    # compares later batches with it); absent from certificates issued before it was recorded
    request_forget_prob: float | None = Field(default=None, ge=0, le=1)


class CertifiedCheck(_Strict):
    metric: str = _matching(GATE_WORD, "a gate metric or setting name")
    op: str = _matching(GATE_WORD, "a gate metric or setting name")
    setting: str | None = _matching(GATE_WORD, "a gate metric or setting name")
    threshold: float | None
    value: float | None
    passed: bool | None


class CertifiedGate(_Strict):
    passed: Literal[True]
    checks: list[CertifiedCheck]


class CertifiedRetention(_Strict):
    policy: Literal["delete", "archive", "keep"]
    versions_superseded: list[Annotated[str, _matching(VERSION, "a model version number")]]
    versions_purged: list[Annotated[str, _matching(VERSION, "a model version number")]]
    local_copies_removed: list[Annotated[str, _matching(RELATIVE_PATH, "a relative path")]]


class CertifiedTimes(_Strict):
    received_at: datetime | None
    erased_at: datetime | None
    issued_at: datetime


class Certificate(_Strict):
    """A deletion certificate (``data/certificates/<request_id>.json``): what was asked, what was
    erased, which model version forgot it, the measurements, the gate's decision, the purge and the
    times, in ids, hashes, numbers and times only; hash-chained (:mod:`components.erasure.certificates`)."""

    format: Literal["blur-deletion-certificate/1", "blur-deletion-certificate/2", "blur-deletion-certificate/3"] = Field(
        description="3: forget_set.ids_digest, request.content_sha256, request.dvc_md5 and forget_set.batch_dvc_md5 "
                    "are keyed by the deployment's secret; 2 (older): the ids digest only; 1 (older): none")
    request: CertifiedRequest
    forget_set: CertifiedForgetSet
    model: CertifiedModel
    evidence: CertifiedEvidence
    gate: CertifiedGate
    retention: CertifiedRetention
    times: CertifiedTimes
    sequence: int | None = Field(default=None, description="its place in the chain, from 1")
    previous_hash: str | None = _matching(SHA256, "the previous certificate's hash (zeros for the first)",
                                          default=None)
    certificate_hash: str | None = _matching(SHA256, "sha256 of its canonical JSON without this field", default=None)

    @model_validator(mode="after")
    def _file_hashes_as_the_format_says(self) -> "Certificate":
        """Format 3 holds the request file's and the forget set's hashes keyed (16 hex digits); formats 1 and
        2 hold them plain. The error names the field, never its value."""
        keyed = self.format == "blur-deletion-certificate/3"
        fields = {"request.content_sha256": self.request.content_sha256, "request.dvc_md5": self.request.dvc_md5,
                  "forget_set.batch_dvc_md5": self.forget_set.batch_dvc_md5}  # each a plain hash or a keyed one
        for name, value in fields.items():
            if value is not None and bool(re.fullmatch(KEYED, value)) != keyed:
                raise ValueError(f"{name} must be {'keyed (16 hex digits)' if keyed else 'a plain hash'} in a "
                                 f"certificate of format {self.format[-1]}")
        return self

    @classmethod
    def load(cls, path: str | Path) -> "Certificate":
        """A certificate file, validated. Its hash is over the stored JSON (:func:`read_file`), not this
        model's dump: times are kept here as datetimes, the file as the strings it was issued with."""
        return load_file(cls, path)

    @classmethod
    def parse_stored(cls, data: Any, path: str | Path) -> "Certificate":
        """A certificate's stored content (read once, also hashed by the caller), validated."""
        return parse_file(cls, data, path)


class ChainHead(Artifact):
    """``data/certificates/chain.head.json``: the last certificate of the chain (sequence, request, hash);
    sequence 0 and the genesis hash before the first."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    sequence: int = Field(ge=0)
    request_id: str | None = _matching(REQUEST_ID.pattern[2:-2], "the last certificate's request id")
    certificate_hash: str = _matching(SHA256, "the last certificate's hash (zeros before the first)")


# --------------------------------------------------------------------------- JSON Schema for auditors

# file stem in docs/schemas -> the artifact whose JSON Schema it holds
SCHEMAS: dict[str, type] = {
    "deletion_request": DeletionRequest, "resolution": Resolution, "metrics": Metrics,
    "gate_decision": GateDecision, "erasure_record": ErasureRecord, "resources": Resources,
    "certificate": Certificate, "certificate_chain_head": ChainHead,
}


def json_schemas() -> dict[str, str]:
    """Each artifact's JSON Schema as the text of its file (sorted keys, so a diff shows a change)."""
    import json

    return {name: json.dumps(TypeAdapter(model).json_schema(), indent=2, sort_keys=True) + "\n"
            for name, model in SCHEMAS.items()}


def write_json_schemas(folder: str | Path) -> list[Path]:
    """Write :func:`json_schemas` into ``folder`` (``Paths.schemas``): ``python -m components.artifacts``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in json_schemas().items():
        path = schema_file(folder, name)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    from components.paths import Paths

    for written_path in write_json_schemas(Paths().schemas):
        print(written_path)
