"""How fast evaluation could be on this hardware: the floor an evaluate run is measured against.

The floor is what the metrics cannot do without: one teacher-forced forward pass over every
scored token (generation prompts included), greedy decoding of as many tokens as the reference
answers have (what ROUGE reads), and the relearning attack's training (a training step costs
about three forward passes: forward, and a backward of twice its cost). Throughputs are measured
on the model being evaluated, on one full batch of a real sequence with no padding, so the
floor holds no padding, no decoding past the answer and no Python overhead.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import torch

from components.modeling.encoding import Encoded
from components.evaluation.inference import greedy_generate, prompt_ids

TRAIN_FORWARD_COST = 3.0  # forward + backward (about twice the forward) per trained token
DECODE_STEPS = 8          # decoding steps timed


@dataclass(frozen=True)
class Throughput:
    """Tokens per second of a padding-free batch: teacher-forced and greedy decoding."""

    forward_tokens_per_s: float
    decode_tokens_per_s: float


def _best_of(runs: int, fn) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def measure_throughput(model, tokenizer, sample: Sequence[Encoded], batch_size: int) -> Throughput:
    """Time a full batch of copies of the median-length ``sample`` sequence, forward and decoding
    (best of two runs, after the first call of each warmed the kernels)."""
    if not sample:
        raise ValueError("the floor needs at least one sequence to time")
    example = sorted(sample, key=lambda e: len(e.input_ids))[len(sample) // 2]
    device = next(model.parameters()).device
    batch = torch.tensor([list(example.input_ids)] * batch_size, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            forward = _best_of(2, lambda: model(input_ids=batch))
        prompt = prompt_ids(example)
        prompts = [prompt] * batch_size

        def decode(steps: int) -> None:
            greedy_generate(model, tokenizer, prompts, max_new_tokens=steps, batch_size=batch_size,
                            stop_early=False)

        prefill = _best_of(2, lambda: decode(1))
        full = _best_of(2, lambda: decode(DECODE_STEPS + 1))
    finally:
        model.train(was_training)
    step = max((full - prefill) / DECODE_STEPS, 1e-9)
    return Throughput(forward_tokens_per_s=batch.numel() / forward, decode_tokens_per_s=batch_size / step)


def floor_seconds(forward_tokens: int, decode_tokens: int, train_tokens: int, throughput: Throughput) -> float:
    """Seconds the scored work takes at the measured throughputs."""
    forward = (forward_tokens + TRAIN_FORWARD_COST * train_tokens) / throughput.forward_tokens_per_s
    return forward + decode_tokens / throughput.decode_tokens_per_s
