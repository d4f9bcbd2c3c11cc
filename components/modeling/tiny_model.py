"""The tiny Llama-family causal LM of the embedded demo, built from a ``transformers`` config."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from components.config import TinyModelConfig


def build_tiny_model(sizes: TinyModelConfig, tokenizer, max_length: int, seed: int) -> LlamaForCausalLM:
    """A freshly initialised (seeded) Llama model sized by ``model.tiny`` in params.yaml."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=sizes.hidden_size,
        intermediate_size=sizes.intermediate_size,
        num_hidden_layers=sizes.num_layers,
        num_attention_heads=sizes.num_heads,
        num_key_value_heads=sizes.num_heads,
        max_position_embeddings=max(max_length, 64),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
        attention_dropout=0.0,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)
