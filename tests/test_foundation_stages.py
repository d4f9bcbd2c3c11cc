"""The prepare and finetune stages, through their functions and through real `dvc repro`."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from components.config import load_config
from components.paths import Paths
from components.stages import prepare
from pipeline_repo import make_pipeline_repo, run, write_params

FIXTURES = Path(__file__).parent / "fixtures"


def _file_world_repo(tmp_path: Path, shape: str) -> Path:
    repo = tmp_path / "repo"
    (repo / "data" / "world").mkdir(parents=True)
    shutil.copy(FIXTURES / shape, repo / "data" / "world" / shape)
    shutil.copy(FIXTURES / "tofu_holdout.jsonl", repo / "data" / "world" / "holdout.jsonl")
    (repo / "data" / "requests").mkdir(parents=True)
    (repo / "data" / "requests" / "req.json").write_text(json.dumps(
        {"request_id": "req-1", "received_at": "2026-11-28T10:00:00Z", "subjects": ["subject-0002"]}))
    write_params(repo, {
        "world.source": "file", "world.path": f"data/world/{shape}",
        "world.holdout_path": "data/world/holdout.jsonl", "world.rows_per_subject": 8,
        "request": "data/requests/req.json",
    })
    return repo


@pytest.mark.parametrize("shape", ["tofu_world.json", "tofu_world.jsonl", "tofu_world_hf.json"])
def test_prepare_reads_each_tofu_shape_to_the_same_splits(tmp_path, shape):
    repo = _file_world_repo(tmp_path, shape)
    summary = prepare(load_config(repo / "params.yaml"), Paths(repo)).summary()
    assert summary["n_forget"] == 8 and summary["n_retain"] == 40
    assert (repo / "data" / "prepared" / "forget.jsonl").read_text().count("\n") == 8


def test_prepare_splits_are_identical_across_shapes(tmp_path):
    digests = set()
    for shape in ["tofu_world.json", "tofu_world.jsonl", "tofu_world_hf.json"]:
        repo = _file_world_repo(tmp_path / shape, shape)
        digests.add(json.dumps(prepare(load_config(repo / "params.yaml"), Paths(repo)).summary()
                               ))
    assert len(digests) == 1


@pytest.mark.slow
def test_dvc_repro_prepare_finetune_on_a_file_world(tmp_path):
    repo = make_pipeline_repo(tmp_path / "repo")
    shutil.copy(FIXTURES / "tofu_world.jsonl", repo / "data" / "world" / "world.jsonl")
    shutil.copy(FIXTURES / "tofu_holdout.jsonl", repo / "data" / "world" / "holdout.jsonl")
    (repo / "data" / "requests" / "req.json").write_text(json.dumps(
        {"request_id": "req-1", "received_at": "2026-11-28T10:00:00Z", "subjects": ["subject-0003"]}))
    write_params(repo, {
        "world.source": "file", "world.path": "data/world/world.jsonl",
        "world.holdout_path": "data/world/holdout.jsonl", "world.rows_per_subject": 8,
        "request": "data/requests/req.json",
    })
    result = run([sys.executable, "-m", "dvc", "repro", "prepare", "finetune"], repo)
    print(result.stdout[-400:])
    summary = json.loads((repo / "reports" / "finetune.json").read_text())
    assert summary["target"]["stop_reason"] == "target_prob"
    assert summary["target"]["mean_answer_prob"] >= 0.85
    assert summary["oracle"]["epochs"] == summary["target"]["epochs"]
    assert summary["oracle"]["n_records"] == 40
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(repo / "models" / "oracle")
    AutoTokenizer.from_pretrained(repo / "models" / "target")
    again = run([sys.executable, "-m", "dvc", "repro", "prepare", "finetune"], repo)
    assert "didn't change, skipping" in again.stdout
