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


def test_the_derived_settings_and_erased_levels_are_read_through_their_types(tmp_path):
    from components.artifacts import ArtifactError
    from components.stages.prepare import ERASED_LEVEL, resolved_config, with_erased_levels

    repo = _file_world_repo(tmp_path, "tofu_world.jsonl")
    config = load_config(repo / "params.yaml").with_overrides({"model.max_length": "auto"})
    paths = Paths(repo)
    prepare(config, paths)
    written = json.loads(paths.settings.read_text())
    assert resolved_config(config, paths).model.max_length == written["max_length"]
    assert json.loads(paths.earlier_levels.read_text()) == {}

    paths.settings.write_text(json.dumps({"max_length": "long"}))
    with pytest.raises(ArtifactError, match=r"settings\.json does not hold a valid PreparedSettings: max_length"):
        resolved_config(config, paths)

    def unlearned_earlier() -> dict:
        return with_erased_levels({"unlearned": {"earlier": {"req-a": {"forget_prob": 0.2}}}},
                                  paths)["unlearned"]["earlier"]["req-a"]

    paths.earlier_levels.write_text(json.dumps({"req-a": 0.05}))
    assert unlearned_earlier()[ERASED_LEVEL] == 0.05
    paths.earlier_levels.write_text(json.dumps({"req-a": "low"}))  # unreadable: no level, the gate fails closed
    assert ERASED_LEVEL not in unlearned_earlier()
