"""What passes between the stages: one typed model per arrow of the flow.

    request ──► prepare ──► Resolution ──► evaluate ──► Metrics ──► register ──► GateDecision
                                                                         └──► ErasureRecord, Certificate

Each artifact names its file in :class:`~components.paths.Paths`, validates when it is built
and when it is read back (:meth:`load`), and writes the same JSON as before it had a type
(:meth:`save`). No other module reads these files by key: they load the artifact and use its
fields. A :class:`pydantic.ValidationError` becomes reasons a person can act on through
:func:`validation_reasons` (as :mod:`components.config` words them).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping, TypeVar

from pydantic import (BaseModel, ConfigDict, Field, RootModel, SerializerFunctionWrapHandler, ValidationError,
                      ValidationInfo, field_serializer, field_validator, model_serializer, model_validator)

from components.jsonfiles import read_json, write_json

# The three models every evaluation compares, in the order every table shows them.
ROLES = ("target", "oracle", "unlearned")
Role = Literal["target", "oracle", "unlearned"]
Number = float | int | None
A = TypeVar("A", bound="Artifact")


def validation_reasons(error: ValidationError, *, where: str = "") -> list[str]:
    """One line per problem: the dotted key, then what was wrong with it."""
    reasons = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"] if part not in ("function-after", "function-before"))
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        reasons.append(f"{where}{key or '(top level)'}: {message}")
    return reasons


class Artifact(BaseModel):
    """A stage output with its file: :meth:`save` writes it atomically, :meth:`load` validates it."""

    def save(self, path: str | Path) -> Path:
        return write_json(path, self.model_dump(mode="json"))

    @classmethod
    def load(cls: type[A], path: str | Path) -> A:
        return cls.model_validate(read_json(path))


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
    processed_at: str | None = None
    batch_id: str | None = None
    dvc_md5: str | None = None
    model_name: str | None = None
    model_version: str | None = None
    run_id: str | None = None

    @field_validator("model_version", mode="before")
    @classmethod
    def _version_text(cls, value: Any) -> Any:
        return None if value is None else str(value)

    @classmethod
    def parse(cls, data: "ErasureRecord | Mapping[str, Any]") -> "ErasureRecord":
        return data if isinstance(data, ErasureRecord) else cls.model_validate(data)
