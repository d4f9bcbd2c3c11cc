"""Evaluate the target, oracle and unlearned models on the forget, retain and holdout sets.

:func:`evaluate_models` returns the numbers; :func:`components.evaluation.reports.write_reports`
writes them. It loads one model at a time, runs every pass that model's metrics need, and
frees it before loading the next, so peak memory is one model. Model outputs are computed
lazily and once per (model, split, kind): a teacher-forced pass over each record's own
target, one over the paraphrased and perturbed answers, and greedy generation. Every metric
is then read off those by the registered metric functions (:mod:`components.evaluation.metrics`).
"""

from __future__ import annotations

import gc
import re
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import quote

import numpy as np
import torch
from rich.progress import Progress

from components.config import EvalConfig
from components.data.records import QARecord, Record
from components.evaluation.formulas import QA_STOP_STRINGS, cut_at_stop_strings
from components.evaluation.inference import TokenEvidence, greedy_generate, prompt_ids, teacher_forced
from components.evaluation.metrics import (
    FORGET,
    HOLDOUT,
    PER_ITEM,
    RETAIN,
    Alternatives,
    Generation,
    MetricResult,
    get_metric,
    null_result,
    result,
)
from components.evaluation.floor import Seconds, clock
from components.evaluation.cache import EvalCache, Ragged, model_fingerprint, settings_key, split_fingerprint
from components.evaluation.relearn import ATTACK_RECIPE, relearn_attack, relearn_halves
from components.modeling.encoding import Encoded, encode_record, ensure_pad_token
from components.modeling.io import LoadedModel
from components.progress import progress_bar

MODEL_ROLES = ("target", "oracle", "unlearned")
UTILITY_PREFIX, KNOWLEDGE_PREFIX, EARLIER_PREFIX = "utility:", "knowledge:", "earlier:"
RESERVED_SET_NAMES = {FORGET, RETAIN, HOLDOUT, "earlier", "model", "mia", "privleak", "extraction"}
# Outputs kept in the evaluation cache (besides the relearning attack's), and the metrics read off generations,
# which are cached as per-record scores so no generated text is stored.
_CACHED_KINDS = ("targets", "alternatives", "generations")
GENERATION_METRICS = ("rouge", "knowmem", "verbmem")
# What evaluate_models is given per role: a function that loads the model (None: absent).
ModelLoader = Callable[[], "LoadedModel | None"]


@dataclass(frozen=True)
class FromDisk:
    """A model loader that reads the model from disk on each call, so nobody else holds what it
    returns: the relearning attack may fine-tune that model in place (one model's memory saved)."""

    load: ModelLoader

    def __call__(self) -> "LoadedModel | None":
        return self.load()

# metrics.json: (key, metric, split) for each model.
REPORTED: tuple[tuple[str, str, str], ...] = (
    ("forget_prob", "prob", FORGET),
    ("forget_rouge", "rouge", FORGET),
    ("forget_truth_ratio", "truth_ratio_forget", FORGET),
    ("forget_quality", "forget_quality", FORGET),
    ("forget_knowmem", "knowmem", FORGET),
    ("forget_verbmem", "verbmem", FORGET),
    ("extraction_strength", "extraction_strength", FORGET),
    ("retain_prob", "prob", RETAIN),
    ("retain_rouge", "rouge", RETAIN),
    ("retain_truth_ratio", "truth_ratio_utility", RETAIN),
    ("retain_knowmem", "knowmem", RETAIN),
    ("retain_verbmem", "verbmem", RETAIN),
    ("holdout_prob", "prob", HOLDOUT),
    ("model_utility", "model_utility", RETAIN),
    ("mia_auc", "mia_auc_mink", FORGET),
    ("mia_auc_loss", "mia_auc_loss", FORGET),
    ("mia_auc_zlib", "mia_auc_zlib", FORGET),
    ("privleak", "privleak", FORGET),
    # Oracle-free: does the forget set look like the holdout (records the model never saw)?
    ("forget_holdout_ks_p", "forget_holdout_ks_p", FORGET),
    ("forget_holdout_auc", "mia_auc_mink", FORGET),  # the same AUC as mia_auc, under the name gates read
    # The relearning attack (eval.relearn; oracle and unlearned model only): the held-out half afterwards.
    ("relearn_forget_prob", "relearn_forget_prob", FORGET),
    ("relearn_recovery", "relearn_recovery", FORGET),
)
# The models the relearning attack is run on: the unlearned one, and the oracle as its baseline.
RELEARN_ROLES = ("oracle", "unlearned")
# Per extra utility set NAME: NAME_prob, NAME_rouge, NAME_truth_ratio.
UTILITY_REPORTED = (("prob", "prob"), ("rouge", "rouge"), ("truth_ratio", "truth_ratio_utility"))
# Per knowledge set NAME (TOFU real authors, world facts): NAME_acc, NAME_prob, NAME_rouge, NAME_truth_ratio.
KNOWLEDGE_REPORTED = (("acc", "option_acc"), ("prob", "option_prob"), ("rouge", "rouge"),
                      ("truth_ratio", "truth_ratio_utility"))
# Under "earlier" -> request id, for each earlier forget set ("still forgotten").
EARLIER_REPORTED = (
    ("forget_prob", "prob"),
    ("forget_rouge", "rouge"),
    ("forget_truth_ratio", "truth_ratio_forget"),
    ("forget_quality", "forget_quality"),
    ("forget_knowmem", "knowmem"),
    ("forget_verbmem", "verbmem"),
    ("extraction_strength", "extraction_strength"),
)
# Per-item columns (reports/per_item/<model>_<split>.csv), by kind of split.
_QUALITY_COLUMNS = ("prob", "rouge", "knowmem", "verbmem", "truth_ratio", "extraction_strength")
_MIA_COLUMNS = ("mia_loss", "mia_mink", "mia_zlib")
PER_ITEM_COLUMNS = {
    FORGET: _QUALITY_COLUMNS + _MIA_COLUMNS,
    RETAIN: _QUALITY_COLUMNS,
    HOLDOUT: ("prob", "extraction_strength") + _MIA_COLUMNS + ("truth_ratio",),
    "utility": _QUALITY_COLUMNS,
    "knowledge": ("option_acc", "option_prob", "rouge", "truth_ratio"),
    "earlier": _QUALITY_COLUMNS,
}


@dataclass
class PhaseWork:
    """Tokens one phase ran models on: teacher-forced (prompts of generations included), decoded
    (each answer up to its own end: what ROUGE reads, not what the longest answer of its batch ran
    to) and trained (the relearning attack), and the wall and process-CPU seconds it took.
    :mod:`components.evaluation.floor` turns the tokens into the seconds they need at least."""

    forward_tokens: int = 0
    decode_tokens: int = 0
    train_tokens: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0


# The phases of evaluation, each timed apart so the report says where evaluate's time goes.
PHASES = ("teacher_forced", "generation", "relearn")


@dataclass
class ScoredWork:
    """What a context ran models on, per phase (:data:`PHASES`)."""

    phases: dict[str, PhaseWork] = field(default_factory=lambda: {name: PhaseWork() for name in PHASES})

    def total(self, attribute: str) -> int:
        return sum(getattr(phase, attribute) for phase in self.phases.values())

    @contextmanager
    def timed(self, phase: str):
        """Add the seconds of the ``with`` body to ``phase``."""
        started = clock()
        try:
            yield self.phases[phase]
        finally:
            took = clock() - started
            self.phases[phase].seconds += took.wall
            self.phases[phase].cpu_seconds += took.cpu


@dataclass
class EvaluationResult:
    """Everything evaluation found, free of record text.

    ``metrics`` is the content of ``reports/metrics.json``: role -> key -> number or None
    (plus ``earlier`` -> request id -> key -> number or None). ``per_item`` is role ->
    split -> rows, one flat row per record (``record_id``, ``kind`` and per-item values).
    """

    metrics: dict[str, dict[str, Any]]
    per_item: dict[str, dict[str, list[dict[str, Any]]]]
    seconds: float
    # role -> {"fingerprint", "hits", "misses"}: cache entries reused and computed (absent roles left out)
    cache: dict[str, dict[str, Any]] = field(default_factory=dict)
    floor: dict[str, Any] | None = None  # see components.evaluation.floor.evaluation_floor
    sample_sizes: dict[str, int] = field(default_factory=dict)  # records scored per split


class EvaluationContext:
    """Lazily runs the models and caches every metric: the ``MetricContext`` metrics see.

    A role is present once given a model; :meth:`release` frees the model but keeps what was
    computed from it, so its metrics can still be read (and compared) after it is gone.
    """

    def __init__(
        self,
        models: Mapping[str, LoadedModel | None],
        splits: Mapping[str, Sequence[Record]],
        config: EvalConfig,
        *,
        max_length: int,
        progress: Progress | None = None,
    ):
        self.models = dict(models)
        self.present = {role for role, loaded in self.models.items() if loaded is not None}
        self.splits = {name: list(records) for name, records in splits.items()}
        self.config = config
        self.max_length = max_length
        self._progress = progress
        self._metrics: dict[tuple[str, str, str], MetricResult] = {}
        self._evidence: dict[tuple[str, str, str], list] = {}
        self._encodings: dict[tuple[int, str, str], Any] = {}
        self.work = ScoredWork()  # what this context ran models on (for the floor)

    # -- what metrics may ask for
    def records(self, split: str) -> list[Record]:
        try:
            return self.splits[split]
        except KeyError:
            raise KeyError(f"no split named '{split}' (have: {', '.join(self.splits)})") from None

    def has_model(self, model: str) -> bool:
        return model in self.present

    def utility_splits(self) -> list[str]:
        return [name for name in self.splits if name.startswith(UTILITY_PREFIX)]

    def knowledge_splits(self) -> list[str]:
        return [name for name in self.splits if name.startswith(KNOWLEDGE_PREFIX)]

    def metric(self, name: str, model: str, split: str) -> MetricResult:
        key = (name, model, split)
        if key not in self._metrics:
            fn = get_metric(name)
            if not self.has_model(model):
                self._metrics[key] = null_result(len(self.records(split)) if name in PER_ITEM else 0)
            else:
                self._metrics[key] = fn(self, model, split)
        return self._metrics[key]

    def targets(self, model: str, split: str) -> list[TokenEvidence]:
        def compute(loaded: LoadedModel) -> list[TokenEvidence]:
            encoded = self._encoded(loaded.tokenizer, split, "targets")
            with self.work.timed("teacher_forced") as phase, self._task(model, split, "scoring", len(encoded)) as advance:
                phase.forward_tokens += sum(len(e.input_ids) for e in encoded)
                return self._teacher_forced(loaded, encoded, advance)

        return self._once(model, split, "targets", compute)

    def alternatives(self, model: str, split: str) -> list[Alternatives | None]:
        def compute(loaded: LoadedModel) -> list[Alternatives | None]:
            owners, encoded = self._encoded(loaded.tokenizer, split, "alternatives")
            with self.work.timed("teacher_forced") as phase, \
                    self._task(model, split, "truth ratio", len(encoded)) as advance:
                phase.forward_tokens += sum(len(e.input_ids) for e in encoded)
                evidence = self._teacher_forced(loaded, encoded, advance)
            grouped: list[list[TokenEvidence]] = [[] for _ in self.records(split)]
            for index, item in zip(owners, evidence):
                grouped[index].append(item)
            return [Alternatives(g[0], tuple(g[1:])) if g else None for g in grouped]

        return self._once(model, split, "alternatives", compute)

    def generations(self, model: str, split: str) -> list[Generation | None]:
        def compute(loaded: LoadedModel) -> list[Generation | None]:
            tokenizer = loaded.tokenizer
            jobs = self._encoded(tokenizer, split, "generation")
            live = [i for i, job in enumerate(jobs) if job is not None]
            records = self.records(split)
            # QA answers are cut at the first stop string, so their decoding stops there; continuations run on
            groups = [([i for i in live if isinstance(records[i], QARecord)], QA_STOP_STRINGS),
                      ([i for i in live if not isinstance(records[i], QARecord)], ())]
            outputs: dict[int, list[int]] = {}
            with self.work.timed("generation") as phase, self._task(model, split, "generation", len(live)) as advance:
                phase.forward_tokens += sum(len(jobs[i][0]) for i in live)
                for members, stop_strings in groups:
                    outputs.update(zip(members, greedy_generate(
                        loaded.model, tokenizer, [jobs[i][0] for i in members],
                        max_new_tokens=[jobs[i][1] for i in members], batch_size=self.config.batch_size,
                        on_batch=advance, stop_strings=stop_strings,
                    )))
                # the answer ROUGE reads, up to its end (the eos step counted; a cut-off answer ends at the limit)
                phase.decode_tokens += sum(min(len(ids) + 1, jobs[i][1]) for i, ids in outputs.items())
            found: list[Generation | None] = [None] * len(jobs)
            for i, ids in sorted(outputs.items()):
                text = tokenizer.decode(ids, skip_special_tokens=True)
                record = self.records(split)[i]
                if isinstance(record, QARecord):
                    found[i] = Generation(cut_at_stop_strings(text).strip(), record.answer)
                else:
                    found[i] = Generation(text, tokenizer.decode(jobs[i][2], skip_special_tokens=True))
            return found

        return self._once(model, split, "generations", compute)

    def relearned(self, model: str, split: str) -> list[TokenEvidence] | None:
        """Held-out-half evidence after the relearning attack, or None when ``model`` was not attacked."""
        return self._evidence.get((model, split, "relearned"))

    def relearn_held_out(self, split: str) -> tuple[int, ...]:
        halves = relearn_halves(len(self.records(split)), self.config.relearn.seed)
        return halves.held_out if halves else ()

    def attacks(self, model: str, split: str = FORGET) -> bool:
        """Whether the relearning attack runs on ``model``: the oracle and the unlearned model, when
        ``eval.relearn`` is enabled and the split has a record to train on and one to score."""
        return model in RELEARN_ROLES and self.config.relearn.enabled and len(self.records(split)) >= 2

    def run_relearn(self, model: str, split: str = FORGET, *, in_place: bool = False) -> None:
        """Run the relearning attack on ``model`` (present and loaded) and keep what it found.

        ``in_place=True`` fine-tunes the loaded model itself: only for a model about to be freed.
        """
        loaded = self.models.get(model)
        if loaded is None:
            raise LookupError(f"model '{model}' is not loaded: cannot run the relearning attack on it")
        halves = relearn_halves(len(self.records(split)), self.config.relearn.seed)
        with self.work.timed("relearn") as phase, self._task(model, split, "relearn", 1) as advance:
            if halves is not None:
                lengths = [len(e.input_ids) for e in self._encoded(loaded.tokenizer, split, "targets")]
                phase.train_tokens += self.config.relearn.epochs * sum(lengths[i] for i in halves.attacked)
                phase.forward_tokens += sum(lengths[i] for i in halves.held_out)
            self._evidence[(model, split, "relearned")] = relearn_attack(
                loaded.model, loaded.tokenizer, self.records(split), self.config.relearn,
                max_length=self.max_length, batch_size=self.config.batch_size, in_place=in_place)
            if advance:
                advance(1)
        self._metrics = {key: value for key, value in self._metrics.items()
                         if not (key[0].startswith("relearn_") and key[1] == model)}

    # -- reuse across candidates (sweeps, benchmarks)
    def replace_model(self, role: str, loaded: LoadedModel | None) -> None:
        """Let ``loaded`` play ``role`` from now on, forgetting everything computed from the old one.

        The other models' outputs stay cached, so many candidates can be evaluated against
        the same target and oracle without running those again. The role's metrics and every
        whole-model metric are dropped (forget quality and privleak compare two models); the
        other models' per-item metrics read only their own outputs and stay. Encodings are
        dropped when the tokenizer changes.
        """
        if role not in self.models:
            raise KeyError(f"no model role '{role}' in this context (have: {', '.join(self.models)})")
        old = self.models[role]
        if old is not None and (loaded is None or loaded.tokenizer is not old.tokenizer):
            self._encodings.clear()
        self.models[role] = loaded
        if loaded is None:
            self.present.discard(role)
        else:
            self.present.add(role)
        self._evidence = {key: value for key, value in self._evidence.items() if key[0] != role}
        self._metrics = {key: value for key, value in self._metrics.items() if key[0] in PER_ITEM and key[1] != role}

    def release(self, role: str) -> None:
        """Free the model playing ``role``, keeping its outputs and metrics; it stays present."""
        self.models[role] = None
        self._encodings.clear()  # keyed by the tokenizer's id, which a freed tokenizer gives up

    # -- the evaluation cache (components.evaluation.cache)
    def _cache_settings(self, model: str, kind: str) -> str:
        loaded = self.models[model]
        parameter = next(loaded.model.parameters())
        settings: dict[str, Any] = {"max_length": self.max_length, "batch_size": self.config.batch_size,
                                    "dtype": str(parameter.dtype), "device": parameter.device.type, "kind": kind}
        if kind == "generations":
            settings |= {"max_new_tokens": self.config.max_new_tokens,
                         "verbmem_prefix_tokens": self.config.verbmem_prefix_tokens}
        if kind == "relearned":
            settings |= {"relearn": self.config.relearn.model_dump(), "attack": ATTACK_RECIPE}
        return settings_key(settings)

    def restore_cached(self, model: str, cache: EvalCache, model_fp: str) -> set[tuple[str, str]]:
        """Install every cached output of ``model`` (loaded) for this context's splits; returns the
        (split, kind) pairs found, which then cost no inference."""
        found: set[tuple[str, str]] = set()
        kinds = [*_CACHED_KINDS] + (["relearned"] if self.attacks(model) else [])
        for split, records in self.splits.items():
            split_fp = split_fingerprint(records)
            for kind in kinds:
                if kind == "relearned" and split != FORGET:
                    continue
                arrays = cache.get(model_fp, kind, split_fp, self._cache_settings(model, kind))
                if arrays is not None:
                    self._install(model, split, kind, arrays)
                    found.add((split, kind))
        return found

    def store_cached(self, model: str, cache: EvalCache, model_fp: str, skip: set[tuple[str, str]]) -> int:
        """Store every output computed from ``model`` (loaded) that did not come from the cache;
        returns how many entries were written."""
        written = 0
        for split, records in self.splits.items():
            split_fp = split_fingerprint(records)
            for kind in (*_CACHED_KINDS, "relearned"):
                if (split, kind) in skip or (model, split, kind) not in self._evidence:
                    continue
                cache.put(model_fp, kind, split_fp, self._cache_settings(model, kind),
                          self._export(model, split, kind))
                written += 1
        return written

    def _export(self, model: str, split: str, kind: str) -> dict[str, np.ndarray]:
        if kind in ("targets", "relearned"):
            evidence = self._evidence[(model, split, kind)]
            return Ragged([e.logps for e in evidence], [e.hits for e in evidence]).to_arrays("")
        if kind == "alternatives":
            groups = self._evidence[(model, split, kind)]
            flat = [e for g in groups if g is not None for e in (g.paraphrased, *g.perturbed)]
            counts = np.array([0 if g is None else 1 + len(g.perturbed) for g in groups], dtype=np.int64)
            return {"count": counts, **Ragged([e.logps for e in flat], [e.hits for e in flat]).to_arrays("")}
        arrays = {}
        for name in GENERATION_METRICS:
            by_item = self.metric(name, model, split)["by_item"]
            arrays[f"{name}_present"] = np.array([v is not None for v in by_item], dtype=bool)
            arrays[name] = np.array([0.0 if v is None else v for v in by_item], dtype=np.float64)
        return arrays

    def _install(self, model: str, split: str, kind: str, arrays: Mapping[str, np.ndarray]) -> None:
        if kind in ("targets", "relearned"):
            ragged = Ragged.from_arrays(arrays, "")
            self._evidence[(model, split, kind)] = [TokenEvidence(lp, h) for lp, h in zip(ragged.logps, ragged.hits)]
        elif kind == "alternatives":
            ragged = Ragged.from_arrays(arrays, "")
            evidence = [TokenEvidence(lp, h) for lp, h in zip(ragged.logps, ragged.hits)]
            groups: list[Alternatives | None] = []
            at = 0
            for count in arrays["count"].tolist():
                groups.append(Alternatives(evidence[at], tuple(evidence[at + 1: at + count])) if count else None)
                at += count
            self._evidence[(model, split, kind)] = groups
        else:
            for name in GENERATION_METRICS:
                present, values = arrays[f"{name}_present"].tolist(), arrays[name].tolist()
                self._metrics[(name, model, split)] = result([v if p else None for p, v in zip(present, values)])

    # -- plumbing
    def _teacher_forced(self, loaded: LoadedModel, encoded: Sequence[Encoded], advance) -> list[TokenEvidence]:
        return teacher_forced(loaded.model, encoded, ensure_pad_token(loaded.tokenizer), self.config.batch_size, advance)

    def _once(self, model: str, split: str, kind: str, compute) -> list:
        key = (model, split, kind)
        if key not in self._evidence:
            loaded = self.models.get(model)
            if loaded is None:
                state = "was freed before this was computed" if model in self.present else "is absent"
                raise LookupError(f"model '{model}' {state}: no {kind} on '{split}'")
            self._evidence[key] = compute(loaded)
        return self._evidence[key]

    def _encoded(self, tokenizer, split: str, kind: str):
        key = (id(tokenizer), split, kind)
        if key not in self._encodings:
            records = self.records(split)
            if kind == "targets":
                value: Any = [encode_record(tokenizer, r, self.max_length) for r in records]
            elif kind == "alternatives":
                value = _encode_alternatives(tokenizer, records, self.max_length)
            else:
                value = [self._generation_job(tokenizer, r) for r in records]
            self._encodings[key] = value
        return self._encodings[key]

    def _generation_job(self, tokenizer, record: Record) -> tuple[list[int], int, list[int]] | None:
        """(prompt ids, new-token limit, reference ids) for one record, or None."""
        if isinstance(record, QARecord):
            encoded = encode_record(tokenizer, record, self.max_length)
            prompt = prompt_ids(encoded)
            limit = self._limit(len(prompt))
            return prompt, limit, []
        text_ids = tokenizer.encode(record.text, add_special_tokens=False)
        keep = self.config.verbmem_prefix_tokens
        bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        prompt = bos + text_ids[:keep]
        limit = self._limit(len(prompt))
        if len(text_ids) <= keep or limit <= 0:
            return None
        reference = text_ids[keep : keep + limit]
        return prompt, limit, reference

    def _limit(self, prompt_length: int) -> int:
        return max(0, min(self.config.max_new_tokens, self.max_length - prompt_length))

    def _task(self, model: str, split: str, what: str, total: int):
        if self._progress is None:
            return nullcontext(None)
        return _progress_task(self._progress, f"{model:<9} {_short(split):<12} {what}", total)


def _short(split: str) -> str:
    return split if len(split) <= 12 else split[:11] + "…"


class _progress_task:
    def __init__(self, progress: Progress, description: str, total: int):
        self.progress, self.description, self.total = progress, description, total

    def __enter__(self):
        self.task = self.progress.add_task(self.description, total=self.total)
        return lambda n: self.progress.advance(self.task, n)

    def __exit__(self, *exc):
        self.progress.update(self.task, completed=self.total)
        return False


def _encode_alternatives(tokenizer, records: Sequence[Record], max_length: int) -> tuple[list[int], list[Encoded]]:
    """Paraphrase then perturbed answers of each QA record that has both, flattened with owners."""
    owners: list[int] = []
    encoded: list[Encoded] = []
    for index, record in enumerate(records):
        if isinstance(record, QARecord) and record.paraphrased_answer and record.perturbed_answers:
            for answer in (record.paraphrased_answer, *record.perturbed_answers):
                owners.append(index)
                encoded.append(encode_record(tokenizer, record, max_length, answer=answer))
    return owners, encoded


def safe_name(name: str) -> str:
    """A split or request name as a file-name part, one-to-one: letters, digits, '.', '_', '-'
    and '~' stay as they are (so request ids do), anything else is %-escaped (``urllib.parse.unquote``
    gives the name back)."""
    return quote(name, safe="._-~")


def _check_inputs(loaders: Mapping[str, Any], set_names: Mapping[str, Sequence[str]],
                  earlier: Mapping[str, Any]) -> None:
    unknown = set(loaders) - set(MODEL_ROLES)
    if unknown:
        raise ValueError(f"unknown model role(s) {sorted(unknown)}; expected some of {list(MODEL_ROLES)}")
    for role, loader in loaders.items():
        if loader is not None and not callable(loader):
            raise TypeError(f"model role '{role}' must map to a function that loads the model (or returns None), "
                            f"got a {type(loader).__name__}; wrap a loaded model as `lambda: model`")
    seen: dict[str, str] = {}
    for kind, names in set_names.items():
        for name in names:
            if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", name) or name in RESERVED_SET_NAMES:
                raise ValueError(
                    f"{kind} set name '{name}' cannot be used: it becomes a metric prefix, so it must start with a "
                    f"letter, use only letters, digits, '_' and '-', and not be one of {sorted(RESERVED_SET_NAMES)}"
                )
            if seen.setdefault(name, kind) != kind:
                raise ValueError(f"'{name}' is both a {seen[name]} set and a {kind} set; their metrics would clash")
    if any(not str(request_id).strip() for request_id in earlier):
        raise ValueError("an earlier forget set has an empty request id")


def evaluate_models(
    loaders: Mapping[str, ModelLoader | None],
    *,
    forget: Sequence[Record],
    retain: Sequence[Record],
    holdout: Sequence[Record],
    config: EvalConfig,
    max_length: int,
    earlier_forget: Mapping[str, Sequence[Record]] | None = None,
    utility_sets: Mapping[str, Sequence[Record]] | None = None,
    knowledge_sets: Mapping[str, Sequence[Record]] | None = None,
    show_progress: bool = True,
    cache: EvalCache | None = None,
    measure_floor: bool = False,
) -> EvaluationResult:
    """Evaluate each present model, one at a time; metrics that need an absent model are None.

    ``loaders`` maps roles ("target", "oracle", "unlearned") to zero-argument functions that
    load the model; a missing role, ``None`` or a loader returning ``None`` means that model
    is absent (e.g. no oracle for a user's own model: forget quality and privleak are then
    None). Each model is loaded, run on everything and freed before the next is loaded.
    ``earlier_forget`` maps request ids of earlier processed requests to their forget sets
    ("still forgotten"); ``utility_sets`` maps names to extra sets for model utility;
    ``knowledge_sets`` maps names to multiple-choice sets (TOFU's real authors and world
    facts, see :mod:`components.evaluation.knowledge`), which count in model utility too.
    A loader wrapped in :class:`FromDisk` returns a model nobody else holds: the relearning attack
    then fine-tunes it in place instead of a copy, saving one model's memory.
    ``cache``: outputs of a model already scored on the same sets with the same settings are
    reused (:mod:`components.evaluation.cache`). ``measure_floor``: time the model's throughput
    and report the floor of this run (:mod:`components.evaluation.floor`).
    """
    earlier_forget, utility_sets = dict(earlier_forget or {}), dict(utility_sets or {})
    knowledge_sets = dict(knowledge_sets or {})
    _check_inputs(loaders, {"utility": list(utility_sets), "knowledge": list(knowledge_sets)}, earlier_forget)
    if config.verbmem_prefix_tokens >= max_length:
        raise ValueError(
            f"eval.verbmem_prefix_tokens ({config.verbmem_prefix_tokens}) must be below model.max_length "
            f"({max_length}) to leave room for a continuation"
        )
    splits: dict[str, Sequence[Record]] = {FORGET: forget, RETAIN: retain, HOLDOUT: holdout}
    splits.update({UTILITY_PREFIX + name: records for name, records in utility_sets.items()})
    splits.update({KNOWLEDGE_PREFIX + name: records for name, records in knowledge_sets.items()})
    splits.update({EARLIER_PREFIX + str(rid): records for rid, records in earlier_forget.items()})

    start = clock()
    timing = _FloorTiming(enabled=measure_floor)
    cache = cache or EvalCache(None)
    cache_report: dict[str, dict[str, Any]] = {}
    with progress_bar(enabled=show_progress, label="[bold]evaluate {task.description}") as progress:
        ctx = EvaluationContext(dict.fromkeys(MODEL_ROLES), splits, config, max_length=max_length, progress=progress)
        for role in MODEL_ROLES:
            loader = loaders.get(role)
            report = _score_one_model(ctx, role, loader, fresh=isinstance(loader, FromDisk), cache=cache,
                                      timing=timing)
            if report is not None:
                cache_report[role] = report
        metrics = {role: _model_metrics(ctx, role, utility_sets, knowledge_sets, earlier_forget)
                   for role in MODEL_ROLES}
        per_item = {role: _model_rows(ctx, role) for role in MODEL_ROLES}
    took = clock() - start
    return EvaluationResult(metrics=metrics, per_item=per_item, seconds=took.wall, cache=cache_report,
                            floor=timing.report(ctx.work, took),
                            sample_sizes={split: len(records) for split, records in splits.items()})


@dataclass
class _FloorTiming:
    """The throughput measured on the first model that had work to do, and what measuring cost."""

    enabled: bool
    throughput: Any = None  # components.evaluation.floor.Throughput
    measured: Seconds = Seconds(0.0, 0.0)

    def measure(self, ctx: EvaluationContext, role: str) -> None:
        if not self.enabled or self.throughput is not None:
            return
        from components.evaluation.floor import measure_throughput

        started = clock()
        loaded = ctx.models[role]
        sample = ctx._encoded(loaded.tokenizer, FORGET, "targets") or ctx._encoded(loaded.tokenizer, RETAIN, "targets")
        self.throughput = measure_throughput(loaded.model, loaded.tokenizer, sample, ctx.config.batch_size)
        self.measured = clock() - started

    def report(self, work: ScoredWork, took: Seconds) -> dict[str, Any] | None:
        """The floor of the work done, and evaluate's time over it (the measurement itself left out),
        on the wall clock and on the process CPU clock."""
        if not self.enabled:
            return None
        from components.evaluation.floor import floor_seconds

        evaluated = took - self.measured
        out: dict[str, Any] = {"forward_tokens": work.total("forward_tokens"),
                               "decode_tokens": work.total("decode_tokens"),
                               "train_tokens": work.total("train_tokens"), "measure_seconds": round(self.measured.wall, 2),
                               "evaluate_seconds": round(evaluated.wall, 2),
                               "evaluate_cpu_seconds": round(evaluated.cpu, 2)}
        if self.throughput is None:  # every output came from the cache: nothing was run
            return out | {"floor_seconds": 0.0, "ratio": None, "cpu_ratio": None}

        def floor_of(phase: PhaseWork, cpu: bool = False) -> float:
            return floor_seconds(phase.forward_tokens, phase.decode_tokens, phase.train_tokens, self.throughput,
                                 cpu=cpu)

        floor = sum(floor_of(phase) for phase in work.phases.values())
        cpu_floor = sum(floor_of(phase, cpu=True) for phase in work.phases.values())
        # where evaluate's time went: each phase's seconds beside its floor (the rest is loading, metrics, I/O)
        phases = {name: {"seconds": round(phase.seconds, 2), "floor_seconds": round(floor_of(phase), 2),
                         "cpu_seconds": round(phase.cpu_seconds, 2), "cpu_floor_seconds": round(floor_of(phase, True), 2)}
                  for name, phase in work.phases.items()}
        return out | {"forward_tokens_per_s": round(self.throughput.forward_tokens_per_s, 1),
                      "train_tokens_per_s": round(self.throughput.train_tokens_per_s, 1),
                      "decode_tokens_per_s": round(self.throughput.decode_tokens_per_s, 1),
                      "floor_seconds": round(floor, 3), "ratio": round(evaluated.wall / floor, 3) if floor > 0 else None,
                      "cpu_floor_seconds": round(cpu_floor, 3),
                      "cpu_ratio": round(evaluated.cpu / cpu_floor, 3) if cpu_floor > 0 else None,
                      "phases": phases}


def _score_one_model(ctx: EvaluationContext, role: str, loader: ModelLoader | None, *, fresh: bool,
                     cache: EvalCache, timing: _FloorTiming) -> dict[str, Any] | None:
    """Load one model, run every pass its metrics read, then free it: peak memory is one model.

    Computing every per-item metric runs all the passes the reports need; the whole-model
    metrics (which compare models) are read off those outputs once every model has run.
    Outputs found in ``cache`` are installed first and cost nothing; the rest are computed and
    stored. Returns the model's fingerprint with its cache hits and misses (None: no model).
    """
    loaded = loader() if loader is not None else None
    if loaded is None:
        return None
    fingerprint = model_fingerprint(loaded.model, loaded.tokenizer) if cache.enabled else None
    ctx.replace_model(role, loaded)
    del loaded
    try:
        found = ctx.restore_cached(role, cache, fingerprint) if fingerprint else set()
        before = ctx.work.total("forward_tokens")
        _model_rows(ctx, role)
        if ctx.work.total("forward_tokens") != before:
            timing.measure(ctx, role)
        if ctx.attacks(role) and (FORGET, "relearned") not in found:
            ctx.run_relearn(role, in_place=fresh)  # last: in place it changes the weights, freed next
        written = ctx.store_cached(role, cache, fingerprint, found) if fingerprint else 0
    finally:
        ctx.release(role)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return {"fingerprint": fingerprint, "hits": len(found), "misses": written}


def _model_metrics(ctx: EvaluationContext, role: str, utility_sets, knowledge_sets, earlier) -> dict[str, Any]:
    out: dict[str, Any] = {key: ctx.metric(name, role, split)["value"] for key, name, split in REPORTED}
    # the gate's relearning check has nothing to test on one record (None, like every metric, for an absent model)
    out["n_forget"] = len(ctx.records(FORGET)) if ctx.has_model(role) else None
    for prefix, sets, reported in ((UTILITY_PREFIX, utility_sets, UTILITY_REPORTED),
                                   (KNOWLEDGE_PREFIX, knowledge_sets, KNOWLEDGE_REPORTED)):
        for set_name in sets:
            for suffix, name in reported:
                out[f"{set_name}_{suffix}"] = ctx.metric(name, role, prefix + set_name)["value"]
    out["earlier"] = {
        str(rid): {key: ctx.metric(name, role, EARLIER_PREFIX + str(rid))["value"] for key, name in EARLIER_REPORTED}
        for rid in earlier
    }
    return out


def _columns_for(split: str) -> tuple[str, ...]:
    if split.startswith(UTILITY_PREFIX):
        return PER_ITEM_COLUMNS["utility"]
    if split.startswith(KNOWLEDGE_PREFIX):
        return PER_ITEM_COLUMNS["knowledge"]
    if split.startswith(EARLIER_PREFIX):
        return PER_ITEM_COLUMNS["earlier"]
    return PER_ITEM_COLUMNS[split]


def _model_rows(ctx: EvaluationContext, role: str) -> dict[str, list[dict[str, Any]]]:
    rows: dict[str, list[dict[str, Any]]] = {}
    for split, records in ctx.splits.items():
        columns = _columns_for(split)
        values = {c: ctx.metric(c, role, split)["by_item"] for c in columns}
        rows[split] = [
            {"record_id": record.record_id, "kind": record.kind, **{c: values[c][i] for c in columns}}
            for i, record in enumerate(records)
        ]
    return rows

