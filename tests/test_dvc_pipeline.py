"""`dvc repro` of the whole pipeline, the failing gate, caching, remote storage, and the
flow giving the same metrics as `dvc repro` on the same params and data."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from pipeline_repo import FLOW_PARAMS, make_flow_repo, request_json, run, write_params

pytestmark = pytest.mark.slow


def _dvc(repo: Path, *args: str):
    return run([sys.executable, "-m", "dvc", *args], repo)


FIXTURES = Path(__file__).parent / "fixtures"
# A user's own world: a TOFU-format JSONL file without subjects (8 rows per subject).
FILE_WORLD = {**FLOW_PARAMS, "world.source": "file", "world.path": "data/world/world.jsonl",
              "world.holdout_path": "data/world/holdout.jsonl", "world.rows_per_subject": 8}


@pytest.fixture(scope="module")
def repro(tmp_path_factory, migrated_mlflow_db):
    repo = make_flow_repo(tmp_path_factory.mktemp("dvc") / "repo", FILE_WORLD, mlflow_db=migrated_mlflow_db)
    shutil.copy(FIXTURES / "tofu_world.jsonl", repo / "data" / "world" / "world.jsonl")
    shutil.copy(FIXTURES / "tofu_holdout.jsonl", repo / "data" / "world" / "holdout.jsonl")
    (repo / "data" / "requests" / "tiny-request.json").write_text(request_json("tiny-0001", ["subject-0003"]))
    first = _dvc(repo, "repro")
    return {"repo": repo, "log": first.stdout}


def _champion(repo: Path) -> str | None:
    from components.registry import champion, tracking_store

    found = champion("blur-demo", "champion", store=tracking_store(repo), download=False)
    return found.version if found else None


def test_dvc_repro_runs_every_stage_and_promotes(repro):
    repo = repro["repo"]
    for stage in ("prepare", "finetune", "validate", "unlearn", "evaluate", "register"):
        assert f"Running stage '{stage}'" in repro["log"]
    gate = json.loads((repo / "reports" / "gate.json").read_text())
    assert gate["passed"] and gate["alias"] == "champion"
    assert str(_champion(repo)) == str(gate["version"])


def test_file_world_target_memorises_to_the_default_target_probability(repro):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    repo = repro["repo"]
    summary = json.loads((repo / "reports" / "finetune.json").read_text())
    assert summary["target"]["stop_reason"] == "target_prob"
    assert summary["target"]["mean_answer_prob"] >= 0.85
    assert summary["oracle"]["epochs"] == summary["target"]["epochs"]
    assert summary["oracle"]["n_records"] == 40
    AutoModelForCausalLM.from_pretrained(repo / "models" / "oracle")
    AutoTokenizer.from_pretrained(repo / "models" / "target")


def test_second_repro_with_nothing_changed_runs_nothing(repro):
    again = _dvc(repro["repo"], "repro")
    assert "Running stage" not in again.stdout
    assert "Data and pipelines are up to date" in again.stdout or "didn't change" in again.stdout


def test_metrics_and_plots_show_offline(repro):
    shown = _dvc(repro["repo"], "metrics", "show", "--json")
    metrics = json.loads(shown.stdout)
    files = next(iter(metrics.values()))["data"]
    assert "reports/metrics.json" in files and "reports/gate.json" in files
    plots = _dvc(repro["repo"], "plots", "show", "--json")
    assert "unlearning_curves" in plots.stdout


def test_impossible_threshold_records_a_failed_gate_and_keeps_the_alias(repro):
    repo = repro["repo"]
    before = _champion(repo)
    write_params(repo, {**FILE_WORLD, "gate.min_utility_ratio": 100.0})
    result = _dvc(repo, "repro")
    assert "Running stage 'register'" in result.stdout and "Running stage 'unlearn'" not in result.stdout
    gate = json.loads((repo / "reports" / "gate.json").read_text())
    assert gate["passed"] is False
    assert any(c["metric"] == "utility_ratio" and c["passed"] is False for c in gate["checks"])
    assert _champion(repo) == before
    write_params(repo, FILE_WORLD)


def test_flow_and_dvc_repro_give_the_same_metrics(repro, prefect_server):
    from flows.pipeline import process_requests

    repo = repro["repo"]
    inbox = repo / "data" / "requests" / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(repo / "data" / "requests" / "tiny-request.json", inbox / "tiny.json")
    # a model name with no champion yet, so the flow also starts from the target
    summary = process_requests(root=str(repo), overrides={"registry.model_name": "flow-check"})
    assert summary["processed"] == ["tiny-0001"]
    # the finetune stage trained this batch's oracle already (same prepared data): copied, not trained
    assert summary["oracle_from_cache"] in {p.name for p in (repo / ".cache" / "finetune").iterdir()}
    by_dvc = json.loads((repo / "reports" / "metrics.json").read_text())
    by_flow = json.loads((repo / "runs" / summary["batch_id"] / "reports" / "metrics.json").read_text())
    assert by_flow == by_dvc
    # the batch found what `dvc repro` scored in the project's evaluation cache: every model was a hit
    cost = json.loads((repo / "runs" / summary["batch_id"] / "reports" / "resources.json").read_text())["evaluate"]
    assert {role: entry["misses"] for role, entry in cost["cache"].items()} == {
        "target": 0, "oracle": 0, "unlearned": 0}


def test_changing_only_an_unlearning_setting_scores_only_the_new_model(repro):
    repo = repro["repo"]
    before = json.loads((repo / "reports" / "metrics.json").read_text())
    write_params(repo, {**FILE_WORLD, "unlearn.lr": 5.0e-4})
    result = _dvc(repo, "repro", "evaluate")  # and the stages before it (register: the test above)
    assert "Running stage 'unlearn'" in result.stdout and "Running stage 'evaluate'" in result.stdout
    assert "target cache hit" in result.stdout and "unlearned cache miss" in result.stdout
    cost = json.loads((repo / "reports" / "resources.json").read_text())["evaluate"]
    assert cost["cache"]["target"]["misses"] == 0 and cost["cache"]["oracle"]["misses"] == 0
    assert cost["cache"]["unlearned"]["hits"] == 0 and cost["cache"]["unlearned"]["misses"] > 0
    after = json.loads((repo / "reports" / "metrics.json").read_text())
    assert after["unlearned"] != before["unlearned"]
    for role in ("target", "oracle"):  # whole-model metrics read the unlearned model only for it
        assert after[role] == before[role]
    write_params(repo, FILE_WORLD)


def test_a_second_finetune_of_the_same_data_copies_the_cached_models(repro):
    """Fine-tuned models are cached by the content they were trained from: training again copies them."""
    repo = repro["repo"]
    entries = [p for p in (repo / ".cache" / "finetune").iterdir() if (p / "finetune.json").exists()]
    assert len(entries) == 1
    before = (repo / "models" / "target" / "model.safetensors").read_bytes()
    run([sys.executable, "-m", "components.stages", "finetune"], repo)
    summary = json.loads((repo / "reports" / "finetune.json").read_text())
    assert summary["cached"] == entries[0].name
    assert (repo / "models" / "target" / "model.safetensors").read_bytes() == before
    assert (entries[0] / "oracle" / "model.safetensors").read_bytes() == (
        repo / "models" / "oracle" / "model.safetensors").read_bytes()


def test_push_and_pull_work_offline(repro):
    """Last in this file: it empties the DVC cache, after which `dvc repro` runs again the stages whose outputs
    left the cache."""
    repo = repro["repo"]
    _dvc(repo, "push")
    shutil.rmtree(repo / "models" / "unlearned")
    shutil.rmtree(repo / ".dvc" / "cache")
    _dvc(repo, "pull", "unlearn")
    assert (repo / "models" / "unlearned" / "config.json").exists()
