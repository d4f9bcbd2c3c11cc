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
