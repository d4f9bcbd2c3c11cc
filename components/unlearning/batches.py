"""The data of an unlearning run: encoded once, checked, and served as deterministic micro-batches.

The global batch of step ``t`` is a function of ``(seed, t)`` only, and rank ``r`` takes its
share of it, so 1 rank x 8, 1 rank x 2 x 4 micro-batches and 2 ranks x 4 all see the same
examples.
"""

from __future__ import annotations

from typing import Sequence

import torch

from components.config import UnlearnConfig
from components.data.records import QARecord, Record
from components.modeling.encoding import Encoded, collate, encode_record


class BatchStream:
    """The micro-batches of one level; the global batch of a step depends only on ``(seed, step)``.

    The examples are visited in epochs, each a seeded permutation; step ``t`` takes positions
    ``t*E .. (t+1)*E - 1`` of that endless sequence (``E`` = effective batch). Rank ``r``'s
    micro-batch ``m`` is the ``(r * grad_accum + m)``-th slice of ``micro_batch`` examples.
    """

    def __init__(self, examples: Sequence[Encoded], *, seed: int, stream: int, micro_batch: int,
                 grad_accum: int, rank: int, world_size: int, pad_token_id: int, device: torch.device,
                 extra: dict[str, torch.Tensor] | None = None):
        self.examples, self.seed, self.stream = list(examples), seed, stream
        self.micro_batch, self.grad_accum, self.rank = micro_batch, grad_accum, rank
        self.effective = micro_batch * grad_accum * world_size
        self.pad, self.device, self.extra = pad_token_id, device, extra or {}
        self._epoch: tuple[int, list[int]] | None = None
        self._step: tuple[int, list[int]] | None = None

    def global_indices(self, step: int) -> list[int]:
        if self._step is None or self._step[0] != step:
            n = len(self.examples)
            positions = range(step * self.effective, (step + 1) * self.effective)
            self._step = (step, [self._permutation(p // n)[p % n] for p in positions])
        return self._step[1]

    def __call__(self, step: int, micro: int) -> dict[str, torch.Tensor]:
        start = (self.rank * self.grad_accum + micro) * self.micro_batch
        indices = self.global_indices(step)[start : start + self.micro_batch]
        batch = collate([self.examples[i] for i in indices], self.pad)
        for key, values in self.extra.items():  # per-example values, kept on the host
            batch[key] = values[torch.tensor(indices)]
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def _permutation(self, epoch: int) -> list[int]:
        if self._epoch is None or self._epoch[0] != epoch:
            key = ((self.seed * 1_000_003 + self.stream) * 1_000_003 + epoch) % (2**63)
            generator = torch.Generator().manual_seed(key)
            self._epoch = (epoch, torch.randperm(len(self.examples), generator=generator).tolist())
        return self._epoch[1]


def encode_forget(tokenizer, forget: list[Record], config: UnlearnConfig, max_length: int,
                  seed: int) -> list[Encoded]:
    """The forget records in the prompt format; under ``idk`` with a seeded refusal as the answer."""
    if config.forget_loss != "idk":
        return [encode_record(tokenizer, record, max_length) for record in forget]
    answers = config.idk.answers
    choice = torch.randint(len(answers), (len(forget),), generator=torch.Generator().manual_seed(seed)).tolist()
    return [encode_record(tokenizer, record, max_length, answer=answers[c]) for record, c in zip(forget, choice)]


def check_inputs(forget: list[Record], retain: list[Record], config: UnlearnConfig) -> None:
    """Refuse what cannot be unlearned, with what to do instead."""
    if not forget:
        raise ValueError("the forget set is empty: nothing to unlearn")
    if not retain:
        raise ValueError("the retain set is empty: unlearning needs retain data to preserve utility")
    if config.forget_loss == "idk":
        if not config.idk.answers:
            raise ValueError("unlearn.idk.answers is empty: the idk loss needs refusal answers")
        if not all(isinstance(record, QARecord) for record in forget):
            raise ValueError("unlearn.forget_loss 'idk' needs question/answer records; the forget set has "
                             "documents - choose ga, npo, simnpo or rmu")
