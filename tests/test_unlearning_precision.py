"""unlearn.precision, gradient checkpointing and LoRA on a bf16 base, on the tiny trained model.

``weights`` trains in the loaded dtype (bf16 weights, bf16 gradients; losses and BLUR's
scalars in fp32); ``autocast-bf16`` keeps fp32 master weights and runs the forward passes
under bf16 autocast, returning the model in the dtype it came in.
"""

from __future__ import annotations

import copy

import pytest
import torch

from components.config import LoRAConfig, UnlearnConfig
from components.modeling.encoding import encode_record
from components.modeling.finetune import mean_answer_prob
from components.unlearning import RunOutputs, run_unlearning

FAST = dict(steps=4, lr=1e-3, batch_size=8, checkpoint_every=0)


pytestmark = pytest.mark.usefixtures("one_thread")  # every test here runs on one torch thread


def unlearn(setup, model, config: UnlearnConfig, on_step=None):
    return run_unlearning(model, setup.tokenizer, setup.forget, setup.retain, config,
                          max_length=setup.config.model.max_length, seed=0,
                          outputs=RunOutputs(show_progress=False, on_step=on_step))


def forget_answer_prob(setup, model) -> float:
    encoded = [encode_record(setup.tokenizer, record, setup.config.model.max_length) for record in setup.forget]
    return mean_answer_prob(model.float() if model.dtype != torch.float32 else model, encoded,
                            setup.tokenizer.pad_token_id)


def test_bf16_weights_train_in_bf16_and_forget_like_fp32(tiny_setup):
    fp32 = unlearn(tiny_setup, copy.deepcopy(tiny_setup.target), UnlearnConfig(**FAST))
    model = copy.deepcopy(tiny_setup.target).to(torch.bfloat16)
    grads = []
    result = unlearn(tiny_setup, model, UnlearnConfig(**FAST),
                     on_step=lambda record: grads.append({p.grad.dtype for p in model.parameters()}))
    assert {p.dtype for p in result.model.parameters()} == {torch.bfloat16}
    assert grads[0] == {torch.bfloat16}
    first, reference = result.diagnostics[0], fp32.diagnostics[0]
    for key in ("forget_loss", "retain_loss", "forget_norm_sq", "xi"):  # same step, to bf16 rounding
        assert first[key] == pytest.approx(reference[key], rel=2e-2), key
    before = forget_answer_prob(tiny_setup, copy.deepcopy(tiny_setup.target))
    assert forget_answer_prob(tiny_setup, result.model) < 0.9 * before


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_autocast_bf16_keeps_fp32_master_weights_and_returns_the_loaded_dtype(tiny_setup, dtype):
    model = copy.deepcopy(tiny_setup.target).to(dtype)
    seen = {"params": set(), "forward": set()}
    model.model.layers[0].mlp.down_proj.register_forward_hook(
        lambda module, inputs, output: seen["forward"].add(output.dtype) if module.training else None)
    result = unlearn(tiny_setup, model, UnlearnConfig(**FAST, precision="autocast-bf16"),
                     on_step=lambda record: seen["params"].update(p.dtype for p in model.parameters()))
    assert seen == {"params": {torch.float32}, "forward": {torch.bfloat16}}
    assert {p.dtype for p in result.model.parameters()} == {dtype}
    before = forget_answer_prob(tiny_setup, copy.deepcopy(tiny_setup.target))
    assert forget_answer_prob(tiny_setup, result.model) < 0.9 * before


@pytest.mark.parametrize("forget_loss", ["npo", "rmu"])
def test_gradient_checkpointing_recomputes_the_layers_and_gives_the_same_weights(tiny_setup, forget_loss):
    config = UnlearnConfig(**FAST, forget_loss=forget_loss)
    plain = unlearn(tiny_setup, copy.deepcopy(tiny_setup.target), config)
    model = copy.deepcopy(tiny_setup.target)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    mlp, calls = model.model.layers[0].mlp, {"train": 0}
    forward = mlp.forward

    def counted(*args, **kwargs):  # inside the checkpointed layer: runs again in the backward pass
        calls["train"] += mlp.training
        return forward(*args, **kwargs)

    mlp.forward = counted
    checkpointed = unlearn(tiny_setup, model, config)
    assert calls["train"] == 4 * 2 * 2  # steps x levels x (forward + recomputation in backward)
    for (name, a), b in zip(plain.model.state_dict().items(), checkpointed.model.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=0.0, atol=0.0, msg=name)


def test_lora_on_a_bf16_base_trains_fp32_adapters_and_merges_into_bf16(tiny_setup):
    model = copy.deepcopy(tiny_setup.target).to(torch.bfloat16)
    start = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainable = []
    config = UnlearnConfig(**{**FAST, "lr": 1e-2, "retain_loss": "kl", "lora": LoRAConfig(enabled=True, r=4, alpha=8)})
    result = unlearn(tiny_setup, model, config, on_step=lambda record: trainable.append(
        {p.dtype for p in result_model_params(model) if p.requires_grad}))
    assert trainable[0] == {torch.float32}
    after = dict(result.model.named_parameters())
    assert {p.dtype for p in after.values()} == {torch.bfloat16} and after.keys() == start.keys()
    changed = {name for name in after if not torch.equal(after[name], start[name])}
    assert changed and all(name.endswith(("q_proj.weight", "v_proj.weight")) for name in changed)
    assert forget_answer_prob(tiny_setup, result.model) < forget_answer_prob(tiny_setup, copy.deepcopy(
        tiny_setup.target))


def result_model_params(model):
    """Every parameter reachable from ``model`` (peft injects the adapters into its modules)."""
    return list(model.parameters())
