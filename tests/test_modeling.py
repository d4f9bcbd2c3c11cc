"""Tokenizer and tiny model: exact round trips, HF save/load, and memorisation to target."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from components.config import FinetuneConfig
from components.modeling.encoding import IGNORE_INDEX, encode_record
from components.modeling.finetune import finetune, mean_answer_prob
from components.modeling.io import load_model_dir, save_model, write_model_ref
from components.modeling.tiny_model import build_tiny_model
from conftest import TINY_SIZES


def test_tokenizer_round_trips_seen_and_unseen_text(tiny_setup):
    tokenizer = tiny_setup.tokenizer
    for text in [tiny_setup.world[0].answer, "Zoë's café in Łódź — 42 €!", "  two  spaces\nand a newline"]:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert tokenizer.decode(ids) == text


def test_tokenizer_saves_and_loads_with_auto_tokenizer(tiny_setup, tmp_path):
    tiny_setup.tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = tiny_setup.world[3].question
    assert loaded.encode(text) == tiny_setup.tokenizer.encode(text)
    assert loaded.pad_token == "<pad>" and loaded.eos_token == "</s>"


def test_only_answer_tokens_are_labelled(tiny_setup):
    record = tiny_setup.world[0]
    encoded = encode_record(tiny_setup.tokenizer, record, 64)
    labelled = [t for t, l in zip(encoded.input_ids, encoded.labels) if l != IGNORE_INDEX]
    assert tiny_setup.tokenizer.decode(labelled).strip() == record.answer + "</s>"


def test_target_reaches_the_answer_probability_it_was_trained_to(tiny_setup):
    encoded = [encode_record(tiny_setup.tokenizer, r, 64) for r in tiny_setup.world]
    assert mean_answer_prob(tiny_setup.target, encoded, tiny_setup.tokenizer.pad_token_id) >= 0.8


def test_fresh_model_trains_to_the_default_target_probability(tiny_setup):
    model = build_tiny_model(TINY_SIZES, tiny_setup.tokenizer, 64, seed=0)
    recipe = FinetuneConfig(max_epochs=80, lr=5e-3, batch_size=16, check_every=2)  # target_prob 0.85
    result = finetune(model, tiny_setup.tokenizer, tiny_setup.world, recipe, max_length=64, seed=0,
                      show_progress=False)
    print(f"tiny model: p(answer)={result.mean_answer_prob:.3f} after {result.epochs} epochs")
    assert result.stop_reason == "target_prob"
    assert result.mean_answer_prob >= 0.85


def test_finetune_reports_max_epochs_when_the_target_is_out_of_reach(tiny_setup):
    model = copy.deepcopy(tiny_setup.oracle)
    recipe = FinetuneConfig(target_prob=1.0, max_epochs=1, lr=1e-5, batch_size=16, check_every=1)
    result = finetune(model, tiny_setup.tokenizer, tiny_setup.world[:8], recipe, max_length=64, seed=0,
                      show_progress=False)
    assert result.stop_reason == "max_epochs" and result.epochs == 1


def test_model_round_trips_through_save_pretrained(tiny_setup, tmp_path):
    save_model(tiny_setup.target, tiny_setup.tokenizer, tmp_path / "m")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    ids = torch.tensor([tiny_setup.tokenizer.encode(tiny_setup.world[0].question)])
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, tiny_setup.target(ids).logits, atol=1e-5)


def test_model_reference_folders_point_elsewhere_or_nowhere(tiny_setup, tmp_path):
    save_model(tiny_setup.target, tiny_setup.tokenizer, tmp_path / "real")
    write_model_ref(tmp_path / "target", str(tmp_path / "real"))
    write_model_ref(tmp_path / "oracle", None)
    assert load_model_dir(tmp_path / "target").source == str(tmp_path / "real")
    assert load_model_dir(tmp_path / "oracle") is None


def test_hub_name_loading_path_fails_clearly_offline(monkeypatch):
    from components.modeling.io import ModelLoadError, load_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="meta-llama/nonexistent"):
        load_model("meta-llama/nonexistent")
