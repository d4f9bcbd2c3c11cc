"""A user's own Hugging Face model (bf16, own tokenizer, chat template) through both paths:
the Prefect flow (``blur process``) and ``dvc repro``, each ending with a registered champion."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from pipeline_repo import make_flow_repo, request_json, run, tiny_subjects
from user_model import make_user_model

pytestmark = pytest.mark.slow

USER_GATE = {"gate.min_forget_quality": None, "gate.max_forget_prob_ratio": 0.5, "gate.min_utility_ratio": 0.5,
             # this tiny model knows no real authors or world facts: TOFU's knowledge sets (on by default for a
             # user's model) would put a ROUGE of 0 in model utility's harmonic mean, making it 0 for every model
             "eval.knowledge": "off"}


@pytest.fixture(scope="module")
def user_model(tmp_path_factory) -> Path:
    from components.data.demo_world import generate_world

    world, _ = generate_world(seed=0, n_subjects=6, n_holdout_subjects=2, facts_per_subject=8)
    return make_user_model(tmp_path_factory.mktemp("user") / "my-llm", world)


def _champion_version(repo: Path) -> str:
    from components.registry import connect, tracking_store

    return str(connect(tracking_store(repo)).get_model_version_by_alias("blur-demo", "champion").version)


def test_flow_unlearns_the_users_model_not_a_leftover_demo_model(tmp_path, user_model, prefect_server,
                                                                  migrated_mlflow_db):
    from flows.pipeline import process_requests

    repo = make_flow_repo(tmp_path / "repo", {"model.base": str(user_model), **USER_GATE}, mlflow_db=migrated_mlflow_db)
    leftover = repo / "models" / "target"
    leftover.mkdir(parents=True)
    (leftover / "config.json").write_text("{\"not\": \"a model the flow may load\"}")
    inbox = repo / "data" / "requests" / "inbox"
    inbox.mkdir(parents=True)
    (inbox / "erase.json").write_text(request_json("req-user", [tiny_subjects()[2]]))

    summary = process_requests(root=str(repo))

    assert summary["processed"] == ["req-user"] and summary["gate"]["passed"], summary
    assert _champion_version(repo) == "1"
    batch = repo / "runs" / summary["batch_id"]  # work copies purged (registry.retention: delete), reports kept
    assert not (batch / "models").exists() and (batch / "reports" / "metrics.json").exists()
    from components.config import load_config
    from components.paths import Paths
    from flows.batch import current_champion

    champion = Path(current_champion(load_config(repo / "params.yaml"), Paths(repo))["model_dir"])
    saved = json.loads((champion / "config.json").read_text())
    assert saved.get("dtype", saved.get("torch_dtype")) == "bfloat16"
    template = json.loads((champion / "tokenizer_config.json").read_text()).get("chat_template")
    if template is None:
        template = (champion / "chat_template.jinja").read_text()
    assert "im_start" in template


def test_dvc_repro_unlearns_the_users_model(tmp_path, user_model, migrated_mlflow_db):
    repo = make_flow_repo(tmp_path / "repo", {"model.base": str(user_model), **USER_GATE}, mlflow_db=migrated_mlflow_db)
    run([sys.executable, "-m", "dvc", "repro"], repo, timeout=900)
    gate = json.loads((repo / "reports" / "gate.json").read_text())
    assert gate["passed"], gate
    assert _champion_version(repo) == "1"
    metrics = json.loads((repo / "reports" / "metrics.json").read_text())
    assert metrics["oracle"] is None or metrics["oracle"].get("forget_prob") is None
    assert metrics["unlearned"]["forget_prob"] < 0.5 * metrics["target"]["forget_prob"]
