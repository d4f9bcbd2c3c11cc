"""A user's own model, as a user brings it: a Llama checkpoint with its own tokenizer and chat
template, saved with ``save_pretrained`` in bf16 (nothing from the demo's model files)."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def chat_tokenizer(texts: list[str], vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with ChatML special tokens and a chat template."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                        pad_token="<|endoftext|>", clean_up_tokenization_spaces=False)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def make_user_model(directory: Path, records: list, *, epochs: int = 40, dtype=torch.bfloat16) -> Path:
    """Train a tiny Llama on ``records`` (so it has something to forget) and save it as a user would."""
    from components.config import FinetuneConfig
    from components.data.records import QARecord
    from components.modeling.finetune import finetune

    texts = [t for r in records for t in ((r.question, r.answer) if isinstance(r, QARecord) else (r.text,))]
    tokenizer = chat_tokenizer(texts)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    recipe = FinetuneConfig(target_prob=0.9, max_epochs=epochs, lr=5e-3, batch_size=16, check_every=5)
    finetune(model, tokenizer, records, recipe, max_length=96, seed=0, show_progress=False)
    model.to(dtype).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
