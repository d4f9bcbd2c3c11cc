"""What every benchmark shares: the process set-up, a trained world, unlearning with snapshots,
and evaluating many candidates against one target and oracle.

Nothing here re-implements the pipeline: the demo world is prepared and its target and
oracle trained by :func:`components.stages.prepare` and :func:`components.stages.finetune`
(cached under ``benchmarks/.cache/``), unlearning is :func:`components.unlearning.run_unlearning`
and evaluation is the pipeline's :class:`components.evaluation.EvaluationContext`.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from benchmarks.harness import CACHE, REPO, log, read_json, write_json
from components.config import Config, EvalConfig, UnlearnConfig, with_relearn_lr
from components.data.records import Record, content_hash

DEMO_REQUEST = REPO / "data" / "requests" / "demo-request.json"
PROFILE = REPO / "pretrained" / "params.yaml"  # SmolLM2


# --------------------------------------------------------------------------- a trained world


@dataclass
class Bench:
    """A world split for one deletion request, with its trained target and oracle."""

    config: Config
    forget: list[Record]
    retain: list[Record]
    holdout: list[Record]
    target: Any  # components.modeling.io.LoadedModel
    oracle: Any
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def tokenizer(self):
        return self.target.tokenizer

    @property
    def max_length(self) -> int:
        return self.config.model.max_length


def demo_bench(config: Config, request: Path = DEMO_REQUEST, cache_root: Path = CACHE) -> Bench:
    """The pipeline's demo world, target and oracle for ``request``, trained once and cached.

    Training is :func:`components.stages.prepare` + :func:`components.stages.finetune`
    in a folder under ``cache_root`` named by a hash of everything that decides the result
    (world, model and fine-tuning config, seed, the request, library versions).
    """
    from components import stages
    from components.data.records import records_digest
    from components.data.world import load_world
    from components.paths import Paths

    world = load_world(config.world, config.seed, REPO)  # the records themselves: a changed generator misses
    key = content_hash({
        "world": config.world.model_dump(mode="json"), "records": records_digest(list(world.records)),
        "holdout": records_digest(list(world.holdout)), "model": config.model.model_dump(mode="json"),
        "finetune": config.finetune.model_dump(mode="json"), "seed": config.seed,
        "request": Path(request).read_text(encoding="utf-8"), "torch": torch.__version__,
    })
    paths = Paths(Path(cache_root) / f"demo-{key}")
    done = paths.root / "trained.json"
    started = time.perf_counter()
    if not done.exists():
        log(f"training the demo target and oracle once (cached in {paths.root}) ...")
        stages.prepare(config, paths, request_paths=[Path(request)])
        summary = stages.finetune(config, paths, show_progress=False)
        write_json(done, summary.to_dict())
    summary = json.loads(done.read_text(encoding="utf-8"))
    splits = stages.load_splits(paths)
    target, oracle = _load(paths.target), _load(paths.oracle)
    return Bench(config, splits["forget"], splits["retain"], splits["holdout"], target, oracle,
                 info={"cache": str(paths.root), "finetune": summary,
                       "setup_seconds": round(time.perf_counter() - started, 1)})


def trained_bench(config: Config, forget: Sequence[Record], retain: Sequence[Record], holdout: Sequence[Record],
                  cache_root: Path = CACHE, *, name: str = "world") -> Bench:
    """Train a target on ``forget + retain`` and an oracle on ``retain`` alone, once, and cache them.

    The pipeline's own recipe (:mod:`components.modeling.demo`): the demo tokenizer on every record
    (holdout included, as the demo does), :func:`~components.modeling.demo.train_model` for the
    target (until ``finetune.target_prob`` or ``finetune.max_epochs``) and for the oracle
    (the target's epoch count). The folder is named by a hash of the records and config.
    """
    from components.data.records import records_digest
    from components.modeling.demo import train_model, train_target

    forget, retain, holdout = list(forget), list(retain), list(holdout)
    key = content_hash({
        "forget": records_digest(forget), "retain": records_digest(retain), "holdout": records_digest(holdout),
        "model": config.model.model_dump(mode="json"), "finetune": config.finetune.model_dump(mode="json"),
        "seed": config.seed, "torch": torch.__version__,
    })
    root = Path(cache_root) / f"{name}-{key}"
    done = root / "trained.json"
    started = time.perf_counter()
    if not done.exists():
        log(f"training the {name} target and oracle once (cached in {root}) ...")
        target, tokenizer = train_target(config, forget + retain, holdout, root / "target", show_progress=False)
        oracle = train_model(config, retain, tokenizer, root / "oracle", epochs=target["epochs"],
                             label="oracle", show_progress=False)
        write_json(done, {"target": target, "oracle": oracle, "seconds": round(time.perf_counter() - started, 1)})
    summary = json.loads(done.read_text(encoding="utf-8"))
    return Bench(config, forget, retain, holdout, _load(root / "target"), _load(root / "oracle"),
                 info={"cache": str(root), "finetune": summary,
                       "setup_seconds": round(time.perf_counter() - started, 1)})


def pretrained_bench(params: Path = PROFILE, root: Path = CACHE / "pretrained", overrides: dict | None = None):
    """The profile's target and oracle (trained by the pipeline's own stages once, then reused)."""
    from components import stages
    from components.config import load_config
    from components.modeling.io import load_model_dir, model_options
    from components.paths import Paths
    from components.stages.prepare import resolved_config

    pipeline = load_config(params).with_overrides(overrides or {})
    paths = Paths(Path(root), config_root=Path(params).parent)
    started = time.perf_counter()
    if not (paths.target / "config.json").exists() or not (paths.oracle / "config.json").exists():
        log(f"training the pretrained target and oracle once (into {paths.root}) ...")
        stages.prepare(pipeline, paths, request_paths=[Path(params).parent / pipeline.request])
        stages.finetune(pipeline, paths, show_progress=False)
    pipeline = resolved_config(pipeline, paths)
    splits = stages.load_splits(paths)
    options = model_options(pipeline.model)
    target, oracle = load_model_dir(paths.target, **options), load_model_dir(paths.oracle, **options)
    trained = {role: read_json(getattr(paths, role) / "training.json") for role in ("target", "oracle")}
    return Bench(pipeline, splits["forget"], splits["retain"], splits["holdout"], target, oracle,
                 info={"root": str(paths.root), "training": trained, "base": pipeline.model.pretrained,
                       "max_length": pipeline.model.max_length, "dtype": str(next(target.model.parameters()).dtype),
                       "setup_seconds": round(time.perf_counter() - started, 1)})


def smoke_bench(root: Path) -> Bench:
    """A tiny Llama (the demo recipe, 1 layer) trained in seconds on a tiny demo world."""
    from components.config import Config
    from components.data.demo_world import generate_world

    tiny = {"model.tiny.hidden_size": 32, "model.tiny.intermediate_size": 64, "model.tiny.num_layers": 1,
            "model.tiny.num_heads": 2, "model.max_length": 64, "model.tokenizer.vocab_size": 300,
            "finetune.max_epochs": 2, "finetune.check_every": 1, "eval.max_new_tokens": 4, "eval.knowledge": "on",
            "eval.knowledge_sets": [str(REPO / "data" / "knowledge" / "world_facts.json"),
                                    str(REPO / "data" / "knowledge" / "real_authors.json")]}
    world, holdout = generate_world(seed=3, n_subjects=4, n_holdout_subjects=1, facts_per_subject=8)
    forget = [r for r in world if r.subject == world[0].subject]
    retain = [r for r in world if r.subject != world[0].subject]
    bench = trained_bench(Config().with_overrides(tiny), forget, retain, holdout, root, name="smoke")
    bench.info |= {"base": "tiny random Llama (smoke)", "max_length": 64, "config_root": str(REPO)}
    return bench


def _load(directory: Path):
    from components.modeling.io import load_model_dir

    return load_model_dir(directory)


def fresh_copy(bench: Bench) -> torch.nn.Module:
    """A trainable copy of the target (unlearning trains in place)."""
    return copy.deepcopy(bench.target.model)


# --------------------------------------------------------------------------- unlearning


@dataclass
class UnlearnRun:
    """One unlearning run: the weights after each requested step count, and the step log."""

    snapshots: dict[int, dict[str, torch.Tensor]]
    diagnostics: list[dict]
    seconds: float
    error: str | None = None


def unlearn_with_snapshots(bench: Bench, method: UnlearnConfig, seed: int, at_steps: Sequence[int]) -> UnlearnRun:
    """Unlearn for ``max(at_steps)`` steps, keeping the weights after each step count in ``at_steps``.

    With a constant learning rate (no warm-up) the weights after ``k`` steps of a longer run
    are exactly those of a run of ``k`` steps (AdamW does not look ahead; the batches of
    step ``t`` depend on ``(seed, t)`` only), so one run gives every step count of the sweep.
    A run that diverges (NaN/inf) keeps the snapshots taken before and reports the error.
    """
    if method.scheduler != "constant" or method.warmup_steps:
        raise ValueError("snapshots stand for shorter runs only with a constant learning rate and no warm-up")
    at = sorted(set(at_steps))
    model = fresh_copy(bench)
    # a fixed-length trajectory: the holdout stop (the shipped default) would end it at its own step
    method = method.model_copy(update={"steps": at[-1], "epochs": None, "checkpoint_every": 0,
                                       "stop": method.stop.model_copy(update={"rule": "none"})})
    snapshots: dict[int, dict[str, torch.Tensor]] = {}

    diagnostics: list[dict] = []

    def keep(record: dict) -> None:
        diagnostics.append(record)
        if record["step"] in at:
            snapshots[record["step"]] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    seconds, error = unlearn(bench, model, method, seed, keep)
    return UnlearnRun(snapshots, diagnostics, seconds, error)


def unlearn(bench: Bench, model: torch.nn.Module, method: UnlearnConfig, seed: int,
            on_step: Callable[[dict], None]) -> tuple[float, str | None]:
    """Unlearn ``model`` in place on the bench's sets, ``on_step`` seeing each step's record; the seconds it
    took and, when it diverged (NaN/inf), the first line of the error."""
    from components.unlearning import RunOutputs, UnlearningDivergedError, run_unlearning

    started, error = time.perf_counter(), None
    try:
        run_unlearning(model, bench.tokenizer, bench.forget, bench.retain, method, max_length=bench.max_length,
                       seed=seed, outputs=RunOutputs(show_progress=False, on_step=on_step))
    except UnlearningDivergedError as diverged:
        error = str(diverged).splitlines()[0]
    return time.perf_counter() - started, error


def method_config(config: Config, **overrides: Any) -> UnlearnConfig:
    """``unlearn`` of ``config`` with some keys replaced, validated (an error names the key)."""
    return config.with_overrides({f"unlearn.{k}": v for k, v in overrides.items()}).unlearn


# --------------------------------------------------------------------------- evaluation


class CandidateEvaluator:
    """Evaluates unlearned candidates with the pipeline's evaluator, running target and oracle once.

    ``reference()`` gives the target's and the oracle's metrics; calling the evaluator with
    a model gives that model's metrics (the keys of ``reports/metrics.json``), computed as
    the ``unlearned`` model of :func:`components.evaluation.evaluate_models` would be,
    the relearning attack included (on a copy: the candidate is left as it was).
    """

    keys: tuple[str, ...] | None = None  # report only these keys (None: all)
    cache_dir: Path | None = CACHE / "eval"  # target and oracle outputs kept across runs (None: not kept)

    def __init__(self, bench: Bench, config: EvalConfig | None = None, cache_dir: Path | None = CACHE / "eval",
                 splits: dict[str, list[Record]] | None = None):
        from components.evaluation import EvaluationContext

        self.bench, self.cache_dir = bench, cache_dir
        splits = splits or {"forget": bench.forget, "retain": bench.retain, "holdout": bench.holdout}
        models = {"target": bench.target, "oracle": bench.oracle, "unlearned": None}
        self.ctx = EvaluationContext(models, splits, with_relearn_lr(config or bench.config.eval, bench.config.finetune.lr),
                                     max_length=bench.max_length)

    def metrics(self, role: str) -> dict[str, float | None]:
        from components.evaluation.evaluator import REPORTED

        return {key: self.ctx.metric(name, role, split)["value"] for key, name, split in REPORTED}

    def reference(self) -> dict[str, dict[str, float | None]]:
        """The target's and the oracle's metrics, their outputs reused from the evaluation cache
        (``cache_dir``, keyed by weights, sets and settings) when scored before. ``self.reused``
        says how many outputs of each came from it."""
        from components.evaluation.cache import EvalCache, model_fingerprint

        cache, out, self.reused = EvalCache(self.cache_dir), {}, {}
        for role in ("target", "oracle"):
            loaded = self.ctx.models[role]
            fingerprint = model_fingerprint(loaded.model, loaded.tokenizer) if cache.enabled else None
            found = self.ctx.restore_cached(role, cache, fingerprint) if fingerprint else set()
            if role == "oracle":
                self._relearn(role)
            out[role] = self.metrics(role)
            written = self.ctx.store_cached(role, cache, fingerprint, found) if fingerprint else 0
            self.reused[role] = len(found)
            log(f"{role}: {len(found)} evaluation outputs reused from the cache, {written} computed")
        return out

    def __call__(self, model: torch.nn.Module) -> dict[str, float | None]:
        from components.modeling.io import LoadedModel

        self.ctx.replace_model("unlearned", LoadedModel(model.eval(), self.bench.tokenizer, "candidate"))
        try:
            self._relearn("unlearned")
            return self.metrics("unlearned")
        finally:
            self.ctx.replace_model("unlearned", None)

    def _relearn(self, role: str) -> None:
        """The relearning attack on ``role`` (a copy), once, when its metrics are wanted."""
        wanted = self.keys is None or "relearn_forget_prob" in self.keys
        if wanted and self.ctx.attacks(role) and self.ctx.relearned(role, "forget") is None:
            self.ctx.run_relearn(role)



def load_snapshot(bench: Bench, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    model = fresh_copy(bench)
    model.load_state_dict(state)
    return model.eval()


def diagnostics_summary(diagnostics: Sequence[dict], upto: int) -> dict[str, float | None]:
    """Means over steps ``1..upto`` of cos(g_r, g_f), xi and the norm ratio ||g_f|| / ||g_r||."""
    rows = [d for d in diagnostics if d["step"] <= upto]
    if not rows:
        return {"mean_cos": None, "mean_xi": None, "mean_norm_ratio": None, "final_forget_loss": None,
                "final_retain_loss": None}

    def mean(values: list[float]) -> float:
        return float(sum(values) / len(values))

    ratios = [(d["forget_norm_sq"] / d["retain_norm_sq"]) ** 0.5 for d in rows if d["retain_norm_sq"] > 0]
    return {
        "mean_cos": mean([d["cos"] for d in rows]),
        "mean_xi": mean([d["xi"] for d in rows]),
        "mean_norm_ratio": mean(ratios) if ratios else None,
        "final_forget_loss": rows[-1]["forget_loss"],
        "final_retain_loss": rows[-1]["retain_loss"],
    }
