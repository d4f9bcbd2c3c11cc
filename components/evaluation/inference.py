"""The two ways evaluation runs a model: teacher-forced scoring and greedy generation.

Both batch their inputs, sorted by length so little compute goes to padding, and hand
results back in the caller's order. Nothing here knows about metrics.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

from components.chunks import batched
from components.modeling.encoding import IGNORE_INDEX, Encoded, collate, ensure_pad_token
from components.modeling.scoring import token_scores

OnBatch = Callable[[int], None]


@dataclass(frozen=True)
class TokenEvidence:
    """What teacher forcing says about one target.

    ``logps[i]`` is log p(y_i | x, y_<i); ``hits[i]`` whether the argmax prediction at that
    position is y_i. Both cover exactly the labelled (target) tokens, in order.
    """

    logps: np.ndarray
    hits: np.ndarray


def _device(model) -> torch.device:
    return next(model.parameters()).device


@contextmanager
def _eval_mode(model):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _by_length(lengths: Sequence[int]) -> list[int]:
    return sorted(range(len(lengths)), key=lambda i: lengths[i])


def teacher_forced(
    model,
    encoded: Sequence[Encoded],
    pad_token_id: int,
    batch_size: int,
    on_batch: OnBatch | None = None,
) -> list[TokenEvidence]:
    """Score the labelled tokens of each example in one forward pass per batch."""
    out: list[TokenEvidence | None] = [None] * len(encoded)
    device = _device(model)
    order = _by_length([len(e.input_ids) for e in encoded])
    with _eval_mode(model), torch.inference_mode():
        for chunk in batched(order, batch_size):
            batch = {k: v.to(device) for k, v in collate([encoded[i] for i in chunk], pad_token_id).items()}
            scores = token_scores(model, batch)
            hits = scores.logits.argmax(dim=-1) == batch["labels"][:, 1:]
            logps, hits, mask = scores.token_logps.cpu(), hits.cpu(), scores.mask.cpu()
            for row, index in enumerate(chunk):
                keep = mask[row]
                out[index] = TokenEvidence(logps[row][keep].double().numpy(), hits[row][keep].numpy())
            if on_batch:
                on_batch(len(chunk))
    return out  # type: ignore[return-value]


@contextmanager
def _plain_generation_config(model, tokenizer):
    """Greedy decoding whatever sampling or penalty defaults a checkpoint ships with.

    ``generate`` fills every option the caller leaves unset from ``model.generation_config``
    (a chat model's temperature, repetition penalty, ...). Swap in one that only names the
    special tokens for the duration of the call.
    """
    saved = getattr(model, "generation_config", None)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    try:
        yield
    finally:
        model.generation_config = saved


def stop_token_ids(model, tokenizer) -> list[int]:
    """The tokenizer's eos plus any end-of-turn ids the model's config declares."""
    ids: list[int] = []
    for source in (tokenizer.eos_token_id, getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        for value in source if isinstance(source, (list, tuple)) else [source]:
            if value is not None and value not in ids:
                ids.append(int(value))
    return ids


def greedy_generate(
    model,
    tokenizer,
    prompts: Sequence[list[int]],
    *,
    max_new_tokens: Sequence[int] | int,
    batch_size: int,
    on_batch: OnBatch | None = None,
    stop_early: bool = True,
    stop_strings: Sequence[str] = (),
) -> list[list[int]]:
    """Greedy continuations of token-id prompts, without the prompt and without eos.

    Batches are left-padded and decoded with the KV cache (``model.generate``); a batch
    stops as soon as every row has produced eos or, when ``stop_strings`` are given, text
    containing one of them (``stop_early=False``: never, for timing); such a row's ids end with
    the token that completed its first stop string, so its text up to that string is what a
    full-length decode gives. ``max_new_tokens`` bounds each prompt's continuation (one int for
    all, or one per prompt).
    """
    limits = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    if len(limits) != len(prompts):
        raise ValueError("max_new_tokens must give one limit per prompt")
    stops = stop_token_ids(model, tokenizer)
    pad = ensure_pad_token(tokenizer)
    positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    out: list[list[int]] = [[] for _ in prompts]
    device = _device(model)
    order = [i for i in _by_length([len(p) for p in prompts]) if limits[i] > 0]
    with _eval_mode(model), torch.inference_mode(), _plain_generation_config(model, tokenizer):
        for chunk in batched(order, batch_size):
            width = max(len(prompts[i]) for i in chunk)
            steps = max(limits[i] for i in chunk)
            if positions:
                steps = min(steps, positions - width)
            input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            attention_mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, index in enumerate(chunk):
                n = len(prompts[index])
                input_ids[row, width - n :] = torch.tensor(prompts[index])
                attention_mask[row, width - n :] = 1
            if steps > 0:
                generated = model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=attention_mask.to(device),
                    do_sample=False,
                    num_beams=1,
                    max_new_tokens=steps,
                    min_new_tokens=0 if stop_early else steps,
                    eos_token_id=stops,
                    pad_token_id=pad,
                    stopping_criteria=StoppingCriteriaList(
                        [_TextStop(tokenizer, stop_strings, width)] if stop_strings and stop_early else []),
                )[:, width:].cpu().tolist()
                for row, index in enumerate(chunk):
                    out[index] = _through_stop_string(tokenizer, _until_stop(generated[row], stops)[: limits[index]],
                                                      stop_strings)
            if on_batch:
                on_batch(len(chunk))
    return out


class _TextStop(StoppingCriteria):
    """Rows whose decoded continuation (after ``start``) contains one of ``stops`` are done."""

    def __init__(self, tokenizer, stops: Sequence[str], start: int):
        self.tokenizer, self.stops, self.start = tokenizer, tuple(stops), start

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.start:], skip_special_tokens=True)
        return torch.tensor([any(stop in text for stop in self.stops) for text in texts],
                            dtype=torch.bool, device=input_ids.device)


def _through_stop_string(tokenizer, ids: list[int], stop_strings: Sequence[str]) -> list[int]:
    """``ids`` up to the token that completes the first stop string (all of them when none appears)."""
    if not stop_strings or not any(stop in tokenizer.decode(ids, skip_special_tokens=True) for stop in stop_strings):
        return ids
    for end in range(1, len(ids) + 1):
        if any(stop in tokenizer.decode(ids[:end], skip_special_tokens=True) for stop in stop_strings):
            return ids[:end]
    return ids


def _until_stop(ids: Iterable[int], stops: Sequence[int]) -> list[int]:
    kept = []
    for token in ids:
        if token in stops:
            break
        kept.append(token)
    return kept


def prompt_ids(encoded: Encoded) -> list[int]:
    """The conditioning part of an encoded example (everything before the first label)."""
    n = next((i for i, label in enumerate(encoded.labels) if label != IGNORE_INDEX), len(encoded.labels))
    return list(encoded.input_ids[:n])
