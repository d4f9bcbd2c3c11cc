"""Fixtures for tests that use a real MLflow store (SQLite in a temporary folder).

MLflow migrates a fresh SQLite database on first use (seconds). ``migrated_mlflow_db``
does that once per session; ``mlflow_store`` gives each test its own copy (milliseconds)
with artifacts beside it. To use them elsewhere, import them into a test module or list
this module in ``pytest_plugins`` of ``tests/conftest.py``::

    pytest_plugins = ["registry_fixtures"]

Also here: a tiny saved Hugging Face model directory, small realistic inputs of the
register step (metrics, diagnostics, a request summary), and the random draws of the gate
property test with an independent statement of what the gate must decide.
"""

from __future__ import annotations

import math
import random
import shutil
from pathlib import Path
from typing import Any, Collection, Mapping

import pytest

from components.artifacts import Resolution
from components.config import Config, TinyModelConfig
from components.registry.tracking import TrackingStore

# Text the tiny tokenizer is trained on: nothing from any forget set.
NEUTRAL_TEXTS = [
    "The weather was mild and the river ran slowly past the mill.",
    "Questions and answers about books, rivers, cities and trains.",
    "Every morning the baker opened the shop at seven.",
]


@pytest.fixture(scope="session")
def migrated_mlflow_db(tmp_path_factory) -> Path:
    """A SQLite MLflow database with every migration applied, created once per session by whichever xdist worker
    asks first (tests copy it; none writes to it)."""
    from mlflow import MlflowClient

    from session_target import built_once, shared_folder

    def migrate(partial: Path) -> None:
        MlflowClient(tracking_uri=f"sqlite:///{partial}").search_experiments(max_results=1)

    return built_once(shared_folder(tmp_path_factory) / "mlflow-template.db", migrate)


def own_mlflow_env(monkeypatch) -> None:
    """No tracking or registry URI from the environment (the test's own store decides), no progress bars."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


@pytest.fixture
def mlflow_store(tmp_path, migrated_mlflow_db, monkeypatch) -> TrackingStore:
    """This test's own MLflow store: a copy of the migrated database, artifacts beside it."""
    own_mlflow_env(monkeypatch)
    store_dir = tmp_path / "mlflow"
    store_dir.mkdir()
    shutil.copyfile(migrated_mlflow_db, store_dir / "mlflow.db")
    return TrackingStore.sqlite(store_dir / "mlflow.db", store_dir / "mlartifacts")


@pytest.fixture
def undrawn_plots(request, monkeypatch) -> None:
    """Registration builds its three plots as always but writes each as a 1-pixel PNG instead of drawing it.

    The registry's bookkeeping tests (aliases, retention, certificates) register about a hundred versions;
    rasterising the plots took 0.4 s each, 40 CPU-s of the suite, and none of those tests looks at a pixel.
    A test marked ``drawn_plots`` draws them (tests/test_registry.py checks the logged PNGs); every flow and
    `dvc repro` test draws them too."""
    if request.node.get_closest_marker("drawn_plots"):
        return
    import io

    from matplotlib.figure import Figure
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    pixel = buffer.getvalue()
    monkeypatch.setattr(Figure, "savefig", lambda figure, path, **options: Path(path).write_bytes(pixel))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A saved (untrained) tiny Llama model with its tokenizer, as ``save_pretrained`` writes it."""
    from components.modeling.io import save_model
    from components.modeling.tiny_model import build_tiny_model
    from components.modeling.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(NEUTRAL_TEXTS, vocab_size=300)
    sizes = TinyModelConfig(hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2)
    model = build_tiny_model(sizes, tokenizer, max_length=32, seed=0)
    return save_model(model, tokenizer, tmp_path_factory.mktemp("tiny-model") / "unlearned")


def sample_metrics(*, forget_quality=0.4, forget_prob=0.1, target_forget_prob=0.8, model_utility=0.5,
                   target_model_utility=0.55, privleak=-5.0, oracle: bool = True) -> dict:
    """A metrics.json-shaped mapping; the unlearned model's values are the keyword arguments."""
    def model(**values):
        base = {"forget_prob": 0.5, "forget_rouge": 0.5, "forget_truth_ratio": 0.6, "forget_quality": None,
                "retain_prob": 0.8, "retain_rouge": 0.7, "retain_truth_ratio": 0.6, "model_utility": 0.5,
                "mia_auc": 0.7, "privleak": None, "extraction_strength": 0.3}
        return base | values

    return {
        "target": model(forget_prob=target_forget_prob, model_utility=target_model_utility,
                        forget_quality=0.01 if oracle else None, privleak=60.0 if oracle else None,
                        earlier={"req-earlier": {"forget_prob": 0.75, "forget_rouge": 0.8}}),
        "oracle": model(forget_prob=0.05, forget_quality=1.0, privleak=0.0) if oracle else
        {key: None for key in model()},
        "unlearned": model(forget_prob=forget_prob, forget_quality=forget_quality if oracle else None,
                           model_utility=model_utility, privleak=privleak if oracle else None,
                           earlier={"req-earlier": {"forget_prob": 0.07, "forget_rouge": 0.1}}),
    }


def sample_diagnostics(steps: int = 12) -> list[dict]:
    """Per-step records shaped like the unlearning loop's ``unlearn_log.jsonl``."""
    rows = []
    for step in range(1, steps + 1):
        rows.append({"step": step, "forget_loss": 2.0 + 0.3 * step, "retain_loss": 1.0 - 0.01 * step,
                     "inner": -0.1 * step, "forget_norm_sq": 4.0 / step, "retain_norm_sq": 1.0,
                     "xi": 1.0 + 0.05 * step, "cos": -0.2, "lr": 1e-3, "grad_norm": 0.9})
    return rows


def sample_summary(request_id: str = "req-0001", **fields) -> Resolution:
    """A batch's :class:`Resolution` (ids, hashes and counts only); ``fields`` replace its values."""
    ids = ["0123456789abcdef", "fedcba9876543210"]
    return Resolution.model_validate({
        "request_ids": [request_id],
        "request_hashes": {request_id: "a1b2c3d4e5f60718"},
        "received_at": {request_id: "2026-11-28T09:30:00+00:00"},
        "n_subjects": 1, "n_forget": len(ids), "n_retain": 78, "n_previously_forgotten": 0,
        "forget_digest": "00112233445566ff", "retain_digest": "ffeeddccbbaa9988",
        "forget_ids": ids, "forget_ids_by_request": {request_id: ids},
    } | fields)


def registry_config(**gate) -> Config:
    """The default config with the given ``gate.*`` thresholds and a test model name; every configured
    check decides (``gate.decide: all``) unless ``decide`` is given."""
    overrides = {f"gate.{key}": value for key, value in ({"decide": "all"} | gate).items()}
    overrides["registry.model_name"] = "blur-test"
    return Config().with_overrides(overrides)


def register_sample(store: TrackingStore, model_dir: Path, reports_dir: Path, *, gate: Mapping[str, Any],
                    request_id: str = "req-0001", metrics: dict | None = None, summary: Resolution | None = None,
                    dvc_hashes: Mapping[str, str] | None = None, steps: int = 12, batch_id: str | None = None,
                    tags: Mapping[str, str] | None = None, processed: Mapping[str, Collection[str]] | None = None):
    """The register step on a sample candidate (``sample_metrics()``, ``steps`` diagnostics and
    ``sample_summary(request_id)`` unless given) under ``registry_config(**gate)``; its ``GateDecision``."""
    from components.registry import Candidate, register_candidate

    candidate = Candidate(metrics or sample_metrics(), sample_diagnostics(steps),
                          summary if summary is not None else sample_summary(request_id), dict(dvc_hashes or {}),
                          model_dir)
    return register_candidate(registry_config(**gate), candidate, reports_dir, store=store, batch_id=batch_id,
                              tags=tags, processed_requests=processed)


# --------------------------------------------------------------------------- gate property helpers

GATE_SETTINGS = ("min_forget_quality", "max_forget_prob_ratio", "min_utility_ratio", "max_abs_privleak",
                 "max_earlier_forget_prob_ratio", "min_forget_holdout_ks_p", "max_forget_holdout_auc_gap",
                 "max_relearn_gap", "max_earlier_regain_ratio")
# Largest threshold each setting accepts (GateConfig's bounds) and the range drawn for it.
THRESHOLD_RANGE = {"min_forget_quality": (0, 1), "max_abs_privleak": (0, 100), "min_forget_holdout_ks_p": (0, 1),
                   "max_forget_holdout_auc_gap": (0, 0.5), "max_earlier_regain_ratio": (1, 10)}


def _draw_value(rng: random.Random, low: float, high: float):
    roll = rng.random()
    if roll < 0.1:
        return None
    if roll < 0.15:
        return math.nan
    if roll < 0.2:
        return 0.0
    return rng.uniform(low, high)


def _draw_earlier(rng: random.Random) -> tuple[dict, dict] | None:
    """Earlier-request sections of the unlearned and target models (None: the section is absent)."""
    count = rng.choice([None, 0, 1, 2, 3])
    if count is None:
        return None
    ids = [f"req-e{i}" for i in range(count)]
    unlearned = {rid: {"forget_prob": _draw_value(rng, 0, 1)} for rid in ids}
    for values in unlearned.values():  # the level it was erased to, when a certificate recorded one
        if rng.random() < 0.8:
            values["erased_forget_prob"] = _draw_value(rng, 0, 1)
    return unlearned, {rid: {"forget_prob": _draw_value(rng, 0, 1)} for rid in ids}


def draw_gate_case(rng: random.Random) -> tuple[dict, dict]:
    """Random metrics and thresholds (every setting of GateConfig, fail_on_missing included),
    with some thresholds exactly on the value."""
    unlearned = {"forget_quality": _draw_value(rng, 0, 1), "forget_prob": _draw_value(rng, 0, 1),
                 "model_utility": _draw_value(rng, 0, 1), "privleak": _draw_value(rng, -100, 100),
                 "forget_holdout_ks_p": _draw_value(rng, 0, 1), "forget_holdout_auc": _draw_value(rng, 0, 1)}
    unlearned["relearn_forget_prob"] = _draw_value(rng, 0, 1)
    target = {"forget_prob": _draw_value(rng, 0, 1), "model_utility": _draw_value(rng, 0, 1)}
    earlier = _draw_earlier(rng)
    if earlier is not None:
        unlearned["earlier"], target["earlier"] = earlier
    oracle = {} if rng.random() < 0.2 else {"relearn_forget_prob": _draw_value(rng, 0, 1)}
    metrics = {"target": target, "oracle": oracle, "unlearned": unlearned}
    thresholds: dict = {"fail_on_missing": rng.random() < 0.5}
    thresholds["decide"] = rng.choice(["all", "oracle_free"])
    for setting in GATE_SETTINGS:
        low, high = THRESHOLD_RANGE.get(setting, (0, 2))
        roll = rng.random()
        value = expected_gate_value(metrics, setting)
        if roll < 0.3:
            thresholds[setting] = None
        elif roll < 0.4 and isinstance(value, float) and low <= value <= high:  # an inclusive bound passes
            thresholds[setting] = value
        else:
            thresholds[setting] = rng.uniform(low, high)
    return metrics, thresholds


def _usable(value) -> bool:
    return value is not None and not math.isnan(value)


def _ratio(u, t):
    if not (_usable(u) and _usable(t)):
        return None
    if t == 0:
        return None if u == 0 else math.inf
    return u / t


NOTHING_TO_CHECK = "nothing to check"


def expected_gate_value(metrics: dict, setting: str):
    """The quantity each setting bounds, written out independently of the gate module
    (None: it cannot be computed; NOTHING_TO_CHECK: no earlier requests)."""
    u, t = metrics["unlearned"], metrics["target"]
    plain = {"min_forget_quality": "forget_quality", "min_forget_holdout_ks_p": "forget_holdout_ks_p"}
    if setting in plain:
        return u[plain[setting]] if _usable(u[plain[setting]]) else None
    if setting == "max_abs_privleak":
        return abs(u["privleak"]) if _usable(u["privleak"]) else None
    if setting == "max_forget_holdout_auc_gap":
        return abs(u["forget_holdout_auc"] - 0.5) if _usable(u["forget_holdout_auc"]) else None
    if setting == "max_relearn_gap":
        ours, theirs = u["relearn_forget_prob"], metrics["oracle"].get("relearn_forget_prob")
        return ours - theirs if _usable(ours) and _usable(theirs) else None
    if setting == "max_earlier_forget_prob_ratio":
        if "earlier" not in u:
            return None
        if not u["earlier"]:
            return NOTHING_TO_CHECK
        ratios = [_ratio(u["earlier"][rid]["forget_prob"], t["earlier"][rid]["forget_prob"]) for rid in u["earlier"]]
        return None if None in ratios else max(ratios)
    if setting == "max_earlier_regain_ratio":
        if "earlier" not in u:
            return None
        if not u["earlier"]:
            return NOTHING_TO_CHECK
        ratios = [_ratio(values["forget_prob"], values.get("erased_forget_prob")) for values in u["earlier"].values()]
        return None if None in ratios else max(ratios)
    key = "forget_prob" if setting == "max_forget_prob_ratio" else "model_utility"
    return _ratio(u[key], t[key])


ORACLE_SETTINGS = ("min_forget_quality", "max_abs_privleak", "max_relearn_gap")


def expected_gate_pass(metrics: dict, thresholds: dict) -> bool:
    for setting in GATE_SETTINGS:
        threshold = thresholds.get(setting)
        if threshold is None:
            continue
        if setting in ORACLE_SETTINGS and thresholds.get("decide", "oracle_free") == "oracle_free":
            continue  # reported beside the verdict, not part of it
        value = expected_gate_value(metrics, setting)
        if value == NOTHING_TO_CHECK:
            continue
        if value is None:
            if thresholds.get("fail_on_missing", True):
                return False  # fails closed
            continue  # skipped: recorded, does not fail the gate
        ok = value >= threshold if setting.startswith("min_") else value <= threshold
        if not ok:
            return False
    return True
