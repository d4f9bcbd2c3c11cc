"""A crash while a model is saved never leaves a folder that looks like a model but is not one:
``config.json`` (what marks a saved model) is written after the weights."""

from __future__ import annotations

import pytest

from components.modeling.io import load_model_dir, save_model
from registry_fixtures import NEUTRAL_TEXTS, TinyModelConfig


class Crash(Exception):
    """The process died here."""


def tiny():
    from components.modeling.tiny_model import build_tiny_model
    from components.modeling.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(NEUTRAL_TEXTS, vocab_size=300)
    sizes = TinyModelConfig(hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2)
    return build_tiny_model(sizes, tokenizer, max_length=32, seed=0), tokenizer


def test_a_crash_while_writing_the_weights_leaves_no_config_json(tmp_path, monkeypatch):
    import transformers.modeling_utils

    model, tokenizer = tiny()

    def die(*args, **kwargs):
        raise Crash("killed while writing the weights")

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", die)
    with pytest.raises(Crash):
        save_model(model, tokenizer, tmp_path / "unlearned")
    assert not (tmp_path / "unlearned" / "config.json").exists(), "no half-saved model a later run would load"


def test_a_model_saved_again_after_a_crash_loads_and_leaves_no_staging_folder(tmp_path, monkeypatch):
    import transformers.modeling_utils

    model, tokenizer = tiny()
    save_model(model, tokenizer, tmp_path / "unlearned")
    assert load_model_dir(tmp_path / "unlearned") is not None

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file",
                        lambda *a, **k: (_ for _ in ()).throw(Crash("killed")))
    with pytest.raises(Crash):
        save_model(model, tokenizer, tmp_path / "unlearned")
    monkeypatch.undo()
    save_model(model, tokenizer, tmp_path / "unlearned")  # the next run saves again and loads
    assert load_model_dir(tmp_path / "unlearned") is not None
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".unlearned.saving-")], "no staging left"
