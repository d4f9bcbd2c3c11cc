"""The model as the losses see it, and what they need from the frozen starting model.

:class:`LossModel` is what the losses call and what DDP/FSDP wrap; the rest is computed
once from the starting model before any update: NPO's reference log-probabilities, the KL
reference logits (a frozen copy, or the LoRA model with adapters disabled), RMU's target.
"""

from __future__ import annotations

import re
from typing import Sequence

import torch

from components.config import LoRAConfig, UnlearnConfig
from components.modeling.encoding import Encoded
from components.modeling.scoring import scored_batches

DECODER_LAYER = r"(?:^|\.)(?:layers|h|blocks)\.{index}$"


class LossModel(torch.nn.Module):
    """The causal LM without a KV cache; ``capture=True`` returns one layer's output instead.

    ``forward(input_ids, attention_mask)`` returns the LM's output (``.logits``); with
    ``capture=True`` it returns ``{"activations": ...}``, the output of ``layer`` recorded by
    a forward hook during an ordinary forward pass (RMU; the layers above it run but take no
    part in the loss, so DDP is told to expect unused parameters).
    """

    def __init__(self, model: torch.nn.Module, layer: torch.nn.Module | None = None):
        super().__init__()
        self.model = model
        self._layer = (layer,)  # a tuple, so the layer is not registered twice

    def forward(self, input_ids, attention_mask, capture: bool = False):
        if not capture:
            return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        layer = self._layer[0]
        if layer is None:
            raise ValueError("this LossModel was built without a layer to capture")
        captured: list[torch.Tensor] = []

        def record(module, inputs, output) -> None:
            captured.append(output[0] if isinstance(output, tuple) else output)

        handle = layer.register_forward_hook(record)
        try:
            self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        finally:
            handle.remove()
        if not captured:
            raise RuntimeError("the RMU layer was not reached in the forward pass")
        return {"activations": captured[0]}


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The numbered decoder blocks (``...layers.N``, ``...h.N`` or ``...blocks.N``), in order."""
    pattern = re.compile(DECODER_LAYER.format(index=r"\d+"))
    return [module for name, module in model.named_modules() if pattern.search(name)]


def decoder_layer(model: torch.nn.Module, index: int) -> torch.nn.Module:
    """The ``index``-th decoder block (``...layers.N``, ``...h.N`` or ``...blocks.N``)."""
    pattern = re.compile(DECODER_LAYER.format(index=index))
    matches = [module for name, module in model.named_modules() if pattern.search(name)]
    if len(matches) != 1:
        raise ValueError(
            f"unlearn.rmu.layer={index}: expected one decoder layer with that index, found {len(matches)} "
            f"(the model has {len(decoder_layers(model))} numbered layers; indices start at 0)"
        )
    return matches[0]


def reference_logits(model: torch.nn.Module, frozen: torch.nn.Module | None):
    """Logits of the frozen starting model: the copy, or the LoRA model with adapters disabled."""
    def reference(batch: dict) -> torch.Tensor:
        with torch.no_grad():
            if frozen is not None:
                return frozen(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                              use_cache=False).logits
            with model.disable_adapter():
                return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             use_cache=False).logits
    return reference


@torch.no_grad()
def sequence_logps(model: torch.nn.Module, examples: Sequence[Encoded], pad_token_id: int,
                   batch_size: int = 32) -> torch.Tensor:
    """Summed target-token log-probability of each example under ``model``, on the host."""
    device = next(model.parameters()).device
    batches = scored_batches(LossModel(model), list(examples), pad_token_id, batch_size, device)
    return torch.cat([scores.sum_logp for scores in batches]).cpu()


def rmu_target(model: torch.nn.Module, config: UnlearnConfig, seed: int) -> torch.Tensor:
    """``c * u``: ``u`` uniform on [0, 1)^d, normalised; seeded, so every rank draws the same."""
    width = getattr(model.config, "hidden_size", None)
    if width is None:
        raise ValueError("RMU needs model.config.hidden_size to size its random target")
    generator = torch.Generator().manual_seed(seed)
    u = torch.rand(width, generator=generator, dtype=torch.float64)
    return (u / u.norm() * config.rmu.steering_coeff).float().to(next(model.parameters()).device)


def add_lora(model: torch.nn.Module, lora: LoRAConfig) -> torch.nn.Module:
    """Wrap ``model`` with peft LoRA adapters; only the adapters stay trainable.

    On a bf16/fp16 base peft keeps the adapters in fp32 (``autocast_adapter_dtype``).
    """
    from peft import LoraConfig, get_peft_model

    peft_config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                             target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, peft_config)
    except ValueError as error:
        raise ValueError(f"unlearn.lora.target_modules={list(lora.target_modules)}: {error}") from error
