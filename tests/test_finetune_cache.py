"""The fine-tune cache's key: the prepared data and settings, and a local model folder by its content."""

from __future__ import annotations

import shutil

from components.config import Config
from components.paths import Paths
from components.stages.finetune import finetune_cache


def _model_folder(path, weights: bytes):
    path.mkdir(parents=True)
    (path / "config.json").write_text('{"model_type": "llama"}')
    (path / "model.safetensors").write_bytes(weights)
    return path


def test_a_local_model_counts_by_content_not_by_where_it_lies(tmp_path):
    one = _model_folder(tmp_path / "here" / "base", b"weights")
    other = tmp_path / "there" / "base"
    shutil.copytree(one, other)
    paths = Paths(tmp_path / "project")
    key = finetune_cache(Config().with_overrides({"model.pretrained": str(one)}), paths)
    assert finetune_cache(Config().with_overrides({"model.pretrained": str(other)}), paths) == key
    (other / "model.safetensors").write_bytes(b"other weights")
    assert finetune_cache(Config().with_overrides({"model.pretrained": str(other)}), paths) != key
    assert finetune_cache(Config().with_overrides({"model.pretrained": str(one), "seed": 1}), paths) != key


def test_a_cache_entry_is_restored_through_its_typed_summary_and_a_broken_one_is_named(tmp_path):
    import json

    import pytest

    from components.artifacts import ArtifactError
    from components.paths import ReportFiles
    from components.stages.finetune import restore_finetuned, store_finetuned

    paths = Paths(tmp_path / "project")
    trained = {"epochs": 3, "mean_answer_prob": 0.9, "stop_reason": "target_prob", "n_records": 40}
    for role in ("target", "oracle"):
        _model_folder(getattr(paths, role), role.encode())
    cached = paths.finetune_cache / "key0123"
    store_finetuned(paths, cached, {"target": trained, "oracle": trained | {"n_records": 32}})
    assert json.loads(ReportFiles(cached).finetune_summary.read_text())["oracle"]["n_records"] == 32

    shutil.rmtree(paths.models)
    summary = restore_finetuned(cached, paths)
    assert summary == {"target": trained, "oracle": trained | {"n_records": 32}, "cached": "key0123"}
    assert (paths.oracle / "model.safetensors").read_bytes() == b"oracle"

    ReportFiles(cached).finetune_summary.write_text(json.dumps({"target": trained, "oracle": {"epochs": "3"}}))
    shutil.rmtree(paths.models)
    with pytest.raises(ArtifactError, match=r"key0123/finetune\.json does not hold a valid FinetuneSummary: oracle"):
        restore_finetuned(cached, paths)
    assert not paths.target.exists()  # nothing restored from an entry whose summary does not load
