"""The code of the logged model (MLflow "models from code"): a causal LM that generates.

MLflow copies this file into the logged model and runs it when the model is loaded, so it
imports nothing from this project: only mlflow, torch and transformers. The saved Hugging
Face directory travels as the artifact ``model_dir``; ``load_context`` opens it with
``AutoModelForCausalLM`` / ``AutoTokenizer``.

Input: a list of prompts; output: one completion per prompt (greedy decoding). A tokenizer
with a chat template gets each prompt as the user turn of that template, as in training.
Weights load in the dtype saved in the model's config. The signature comes from the
``predict`` type hints. ``max_new_tokens`` is model config
(default 32; override with ``mlflow.pyfunc.load_model(uri, model_config={...})``).
"""

from __future__ import annotations

from typing import Any

import mlflow
from mlflow.pyfunc import PythonModel


class CausalLMModel(PythonModel):
    """Greedy generation with the Hugging Face model saved in the ``model_dir`` artifact."""

    def load_context(self, context):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        directory = context.artifacts["model_dir"]
        self.tokenizer = AutoTokenizer.from_pretrained(directory)
        if self.tokenizer.pad_token_id is None:  # as components.modeling.encoding.ensure_pad_token
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(directory, dtype="auto")
        self.model.eval()

    def _encode(self, prompt: str):
        """Token ids of one prompt: through the chat template when the tokenizer has one."""
        if not getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer(prompt, return_tensors="pt")
        text = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                  add_generation_prompt=True, tokenize=False)
        return self.tokenizer(text, return_tensors="pt", add_special_tokens=False)

    def predict(self, context, model_input: list[str], params: dict[str, Any] | None = None) -> list[str]:
        """One greedy completion per prompt; ``max_new_tokens`` comes from the model config."""
        import torch

        config = getattr(context, "model_config", None) or {}
        max_new_tokens = int(config.get("max_new_tokens", 32))
        completions = []
        for prompt in model_input:
            encoded = self._encode(prompt)
            with torch.no_grad():
                generated = self.model.generate(
                    **encoded, max_new_tokens=max_new_tokens, do_sample=False,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            new_tokens = generated[0, encoded["input_ids"].shape[1]:]
            completions.append(self.tokenizer.decode(new_tokens, skip_special_tokens=True))
        return completions


mlflow.models.set_model(CausalLMModel())
