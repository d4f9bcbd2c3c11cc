"""Tokenizer and tiny model: exact round trips, HF save/load, memorisation to target; prompts,
dtypes, devices and gradient checkpointing for pretrained-format models."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from components.config import FinetuneConfig
from components.data.records import TextRecord
from components.modeling.encoding import (
    IGNORE_INDEX,
    collate,
    encode_record,
    ensure_pad_token,
    has_chat_template,
    qa_prompt,
)
from components.modeling.finetune import finetune, mean_answer_prob
from components.modeling.io import (
    ModelLoadError,
    load_model,
    load_model_dir,
    save_model,
    save_tokenizer,
    write_model_ref,
)
from components.modeling.scoring import mean_token_nll, token_scores
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


def test_a_tokenizer_saves_the_same_files_whether_it_was_read_offline_or_not(tiny_setup, tmp_path, monkeypatch):
    """HF_HUB_OFFLINE=1 loads with local_files_only=True, which transformers would save: the prepared
    tokenizer, and so the fine-tune cache's key, would differ between an offline and an online run."""
    import transformers.tokenization_utils_base as base

    tiny_setup.tokenizer.save_pretrained(tmp_path / "source")
    saved = {}
    for offline in (True, False):  # the suite runs offline (conftest): the online read is made so here
        monkeypatch.setattr(base, "is_offline_mode", lambda offline=offline: offline)
        tokenizer = AutoTokenizer.from_pretrained(tmp_path / "source", local_files_only=offline)
        assert tokenizer.init_kwargs["local_files_only"] is offline  # what save_pretrained alone would write
        save_tokenizer(tokenizer, tmp_path / str(offline))
        saved[offline] = {f.name: f.read_bytes() for f in (tmp_path / str(offline)).iterdir()}
    assert saved[True] == saved[False]
    assert b"local_files_only" not in saved[True]["tokenizer_config.json"]
    assert b"is_local" not in saved[True]["tokenizer_config.json"]


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
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="meta-llama/nonexistent"):
        load_model("meta-llama/nonexistent")


# -- prompts, dtypes, devices: what a user's pretrained-format model needs

CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


@pytest.fixture()
def chat_tokenizer(tiny_setup):
    tokenizer = copy.deepcopy(tiny_setup.tokenizer)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


@pytest.fixture()
def bf16_dir(tiny_setup, chat_tokenizer, tmp_path):
    """A tiny random Llama saved in bf16 with a tokenizer that has a chat template."""
    model = build_tiny_model(TINY_SIZES, chat_tokenizer, 64, seed=0).to(torch.bfloat16)
    return save_model(model, chat_tokenizer, tmp_path / "bf16")


def test_plain_prompt_is_bos_question_answer_space_answer_eos(tiny_setup):
    """The demo tokenizer has no chat template: its encoding is the plain format, byte for byte."""
    tokenizer = tiny_setup.tokenizer
    assert not has_chat_template(tokenizer)
    for record in tiny_setup.world[:10]:
        prompt = tokenizer.encode(f"Question: {record.question}\nAnswer:", add_special_tokens=False)
        answer = tokenizer.encode(f" {record.answer}", add_special_tokens=False)
        expected = [tokenizer.bos_token_id] + prompt + answer + [tokenizer.eos_token_id]
        encoded = encode_record(tokenizer, record, 512)
        assert encoded.input_ids == expected
        assert encoded.labels == [IGNORE_INDEX] * (1 + len(prompt)) + answer + [tokenizer.eos_token_id]
        assert tokenizer.decode(encoded.input_ids) == f"<s>Question: {record.question}\nAnswer: {record.answer}</s>"


def test_text_records_are_bos_text_eos_whatever_the_template(tiny_setup, chat_tokenizer):
    record = TextRecord(text="A plain document about nobody.", subject="doc")
    for tokenizer in (tiny_setup.tokenizer, chat_tokenizer):
        encoded = encode_record(tokenizer, record, 64)
        assert tokenizer.decode(encoded.input_ids) == "<s>A plain document about nobody.</s>"
        assert encoded.labels[0] == IGNORE_INDEX and encoded.labels[1:] == encoded.input_ids[1:]


@pytest.mark.parametrize("template", [CHAT_TEMPLATE, CHAT_TEMPLATE.replace("{{ bos_token }}", "")])
def test_chat_template_prompts_the_question_as_user_turn_with_one_bos(tiny_setup, chat_tokenizer, template):
    chat_tokenizer.chat_template = template
    record = tiny_setup.world[0]
    encoded = encode_record(chat_tokenizer, record, 512)
    text = chat_tokenizer.decode(encoded.input_ids)
    assert text == f"<s><|user|>\n{record.question}\n<|assistant|>\n{record.answer}</s>"
    assert encoded.input_ids.count(chat_tokenizer.bos_token_id) == 1
    labelled = [t for t, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE_INDEX]
    assert labelled == chat_tokenizer.encode(record.answer, add_special_tokens=False) + [chat_tokenizer.eos_token_id]
    assert qa_prompt(record.question, chat_tokenizer).endswith("<|assistant|>\n")


def test_ensure_pad_token_falls_back_to_eos_and_refuses_without_either(tiny_setup):
    tokenizer = copy.deepcopy(tiny_setup.tokenizer)
    tokenizer.pad_token = None
    assert ensure_pad_token(tokenizer) == tokenizer.eos_token_id == tokenizer.pad_token_id
    tokenizer.pad_token, tokenizer.eos_token = None, None
    with pytest.raises(ValueError, match="neither a pad nor an eos"):
        ensure_pad_token(tokenizer)


def test_bf16_checkpoint_loads_scores_and_saves_as_bf16_on_cpu(tiny_setup, bf16_dir, tmp_path):
    assert json.loads((bf16_dir / "config.json").read_text())["dtype"] == "bfloat16"
    loaded = load_model(bf16_dir, dtype="auto", device="auto")
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}
    assert next(loaded.model.parameters()).device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    encoded = [encode_record(loaded.tokenizer, r, 64) for r in tiny_setup.world[:4]]
    nll = mean_token_nll(loaded.model, encoded, loaded.tokenizer.pad_token_id)
    assert nll.dtype == torch.float32 and torch.isfinite(nll).all()
    save_model(loaded.model, loaded.tokenizer, tmp_path / "again")
    with safe_open(tmp_path / "again" / "model.safetensors", "pt") as weights:
        assert {weights.get_slice(k).get_dtype() for k in weights.keys()} == {"BF16"}
    as_fp32 = load_model(tmp_path / "again", dtype="float32", device="cpu")
    assert {p.dtype for p in as_fp32.model.parameters()} == {torch.float32}


def test_plain_prompt_setting_drops_the_chat_template(bf16_dir):
    assert has_chat_template(load_model(bf16_dir, device="cpu", prompt="chat").tokenizer)
    assert not has_chat_template(load_model(bf16_dir, device="cpu", prompt="plain").tokenizer)


def test_gradient_checkpointing_trains_and_saves_with_the_cache_on(tiny_setup, bf16_dir, tmp_path):
    loaded = load_model(bf16_dir, dtype="float32", device="cpu", gradient_checkpointing=True)
    flag = getattr(type(loaded.model), "is_activation_checkpointing", None) and "is_activation_checkpointing"
    assert getattr(loaded.model, flag or "is_gradient_checkpointing") and loaded.model.config.use_cache is False
    batch = collate([encode_record(loaded.tokenizer, r, 64) for r in tiny_setup.world[:4]],
                    loaded.tokenizer.pad_token_id)
    loaded.model.train()
    token_scores(loaded.model, batch).mean_nll.mean().backward()
    assert all(p.grad is not None for p in loaded.model.parameters() if p.requires_grad)
    save_model(loaded.model, loaded.tokenizer, tmp_path / "gc")
    assert json.loads((tmp_path / "gc" / "config.json").read_text())["use_cache"] is True


def test_unknown_settings_and_a_missing_gpu_are_refused_with_the_key(bf16_dir):
    with pytest.raises(ModelLoadError, match="model.dtype 'float8'"):
        load_model(bf16_dir, dtype="float8")
    with pytest.raises(ModelLoadError, match="model.prompt 'raw'"):
        load_model(bf16_dir, prompt="raw")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="no CUDA device"):
            load_model(bf16_dir, device="cuda")


def test_served_model_keeps_its_bf16_weights_and_prompts_with_the_template(bf16_dir):
    from components.registry.serving import CausalLMModel

    served = CausalLMModel()
    served.load_context(SimpleNamespace(artifacts={"model_dir": str(bf16_dir)}))
    assert next(served.model.parameters()).dtype == torch.bfloat16
    ids = served._encode("Who wrote it?")["input_ids"][0].tolist()
    assert served.tokenizer.decode(ids) == "<s><|user|>\nWho wrote it?\n<|assistant|>\n"
    [completion] = served.predict(SimpleNamespace(model_config={"max_new_tokens": 3}), ["Who wrote it?"])
    assert isinstance(completion, str)


def test_a_broken_model_reference_or_training_record_is_named(tmp_path):
    from components.artifacts import ArtifactError
    from components.modeling.demo import trained_epochs
    from components.modeling.io import resolve_model_source
    from components.paths import ModelFiles

    write_model_ref(tmp_path / "target", str(tmp_path / "real"))
    assert resolve_model_source(tmp_path / "target") == str(tmp_path / "real")
    assert (tmp_path / "target" / "model-ref.json").read_text() == json.dumps({"source": str(tmp_path / "real")},
                                                                             indent=2) + "\n"
    ModelFiles(tmp_path / "target").model_ref.write_text('{"path": "/elsewhere"}')
    with pytest.raises(ModelLoadError, match=r"model-ref\.json does not hold a valid ModelRef: source: Field required"):
        resolve_model_source(tmp_path / "target")

    training = ModelFiles(tmp_path / "trained").training
    training.parent.mkdir()
    training.write_text(json.dumps({"epochs": 4, "mean_answer_prob": 0.9, "stop_reason": "max_epochs",
                                    "n_records": 8}))
    assert trained_epochs(training.parent) == 4
    training.write_text(json.dumps({"epochs": "4"}))
    with pytest.raises(ArtifactError, match=r"training\.json does not hold a valid TrainedModel: epochs"):
        trained_epochs(training.parent)
