"""How fast evaluation could be on this hardware: the floor an evaluate run is measured against.

The floor is what the metrics cannot do without: one teacher-forced forward pass over every
scored token (generation prompts included), greedy decoding of each model's own answers up to
their end (eos, the first stop string or the token limit: the text ROUGE reads), and the
relearning attack's training (a forward and backward pass per trained token; the optimizer's
update is left out). Throughputs are measured on the model being evaluated, on one full
batch of a real sequence with no padding, so the floor holds no padding, no decoding past an
answer's end (a batch decodes until its longest answer ends) and no Python overhead.

Both wall and process CPU time are measured: on a shared machine the wall ratio moves with
the load, the CPU ratio much less (it still counts the time threads wait on each other).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import torch

from components.modeling.encoding import Encoded
from components.evaluation.inference import greedy_generate, prompt_ids

DECODE_STEPS = 8  # decoding steps timed


@dataclass(frozen=True)
class Throughput:
    """Tokens per second of a padding-free batch, teacher-forced, trained (forward and backward) and
    greedy decoding, per wall and per process-CPU second."""

    forward_tokens_per_s: float
    train_tokens_per_s: float
    decode_tokens_per_s: float
    forward_tokens_per_cpu_s: float
    train_tokens_per_cpu_s: float
    decode_tokens_per_cpu_s: float


@dataclass(frozen=True)
class Seconds:
    """Wall and process CPU seconds of one piece of work."""

    wall: float
    cpu: float

    def __sub__(self, other: "Seconds") -> "Seconds":
        return Seconds(self.wall - other.wall, self.cpu - other.cpu)


def clock() -> Seconds:
    """Now, on both clocks."""
    return Seconds(time.perf_counter(), time.process_time())


def _best_of(runs: int, fn) -> Seconds:
    best = Seconds(float("inf"), float("inf"))
    for _ in range(runs):
        started = clock()
        fn()
        took = clock() - started
        best = Seconds(min(best.wall, took.wall), min(best.cpu, took.cpu))
    return best


def measure_throughput(model, tokenizer, sample: Sequence[Encoded], batch_size: int) -> Throughput:
    """Time a full batch of copies of the median-length ``sample`` sequence, forward, forward and
    backward, and decoding (best of two runs, after the first call of each warmed the kernels).
    The model's gradients are cleared afterwards; its weights are not touched."""
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
        train = _best_of(2, lambda: _forward_backward(model, batch))
        prompt = prompt_ids(example)
        prompts = [prompt] * batch_size

        def decode(steps: int) -> None:
            greedy_generate(model, tokenizer, prompts, max_new_tokens=steps, batch_size=batch_size,
                            stop_early=False)

        prefill = _best_of(2, lambda: decode(1))
        full = _best_of(2, lambda: decode(DECODE_STEPS + 1))
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    step = full - prefill
    return Throughput(
        forward_tokens_per_s=batch.numel() / forward.wall,
        train_tokens_per_s=batch.numel() / train.wall,
        decode_tokens_per_s=batch_size * DECODE_STEPS / max(step.wall, 1e-9),
        forward_tokens_per_cpu_s=batch.numel() / max(forward.cpu, 1e-9),
        train_tokens_per_cpu_s=batch.numel() / max(train.cpu, 1e-9),
        decode_tokens_per_cpu_s=batch_size * DECODE_STEPS / max(step.cpu, 1e-9),
    )


def _forward_backward(model, batch: torch.Tensor) -> None:
    """One training pass's compute: the next-token loss of ``batch`` and its gradients."""
    with torch.enable_grad():
        logits = model(input_ids=batch).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        loss.backward()


def floor_seconds(forward_tokens: int, decode_tokens: int, train_tokens: int, throughput: Throughput,
                  *, cpu: bool = False) -> float:
    """Seconds the scored work takes at the measured throughputs (``cpu``: process CPU seconds)."""
    if cpu:
        rates = (throughput.forward_tokens_per_cpu_s, throughput.train_tokens_per_cpu_s, throughput.decode_tokens_per_cpu_s)
    else:
        rates = (throughput.forward_tokens_per_s, throughput.train_tokens_per_s, throughput.decode_tokens_per_s)
    return sum(tokens / rate for tokens, rate in zip((forward_tokens, train_tokens, decode_tokens), rates))
