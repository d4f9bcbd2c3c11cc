"""The prepare stage reads each TOFU file shape (JSON, JSONL, Hugging Face export) to the same splits.

(finetune and `dvc repro` are tested in test_dvc_pipeline.py.)"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from components.config import load_config
from components.paths import Paths
from components.stages import prepare
from pipeline_repo import write_params

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
