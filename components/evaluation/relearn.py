"""The relearning attack: fine-tune a model on half of the forget set, score the other half.

Approximate unlearning can hide knowledge instead of removing it: a few fine-tuning steps on
some of the erased records then bring the rest back. The oracle (never trained on the forget
set) gets the same attack, so what it learns from the attacked half (shared templates, the
subject's name) is the baseline: an unlearned model that recovers much more than the oracle
still holds the data. The halves are a seeded split of the forget set, the same for every
model; only the held-out half is scored.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass
from typing import Sequence

import torch

from components.config import FinetuneConfig, RelearnConfig
from components.data.records import Record
from components.evaluation.inference import TokenEvidence, teacher_forced
from components.modeling.encoding import encode_record, ensure_pad_token
from components.modeling.finetune import finetune


# How the attack trains, beyond eval.relearn's settings: part of its cache key, so a change here misses.
# 2: AdamW's fused kernel, no final probability of the attacked half (nobody reads it).
ATTACK_RECIPE = 2


@dataclass(frozen=True)
class Halves:
    """Indices into the forget set: the records the attacker trains on, and those it is scored on."""

    attacked: tuple[int, ...]
    held_out: tuple[int, ...]


def relearn_halves(n_records: int, seed: int) -> Halves | None:
    """A seeded split of ``n_records`` into two halves (the larger one attacked); None below 2 records."""
    if n_records < 2:
        return None
    order = list(range(n_records))
    random.Random(seed).shuffle(order)
    cut = (n_records + 1) // 2
    return Halves(tuple(sorted(order[:cut])), tuple(sorted(order[cut:])))


def relearn_attack(model: torch.nn.Module, tokenizer, records: Sequence[Record], config: RelearnConfig, *,
                   max_length: int, batch_size: int, in_place: bool = False) -> list[TokenEvidence]:
    """Fine-tune ``model`` on the attacked half, return teacher-forced evidence on the held-out half.

    ``in_place=True`` trains ``model`` itself (the evaluator does, on a model it loaded and is about
    to free); otherwise a copy is trained and ``model`` is left as it was.
    """
    if config.lr is None:
        raise ValueError("eval.relearn.lr is not set: the evaluate stage fills it from finetune.lr; "
                         "set it when calling the evaluator directly")
    halves = relearn_halves(len(records), config.seed)
    if halves is None:
        raise ValueError("the relearning attack needs at least 2 forget records (one to train on, one to score)")
    attacker = model if in_place else copy.deepcopy(model)
    recipe = FinetuneConfig(lr=config.lr, batch_size=config.batch_size, weight_decay=0.0)
    finetune(attacker, tokenizer, [records[i] for i in halves.attacked], recipe, max_length=max_length,
             seed=config.seed, epochs=config.epochs, show_progress=False, label="relearn", fused=True, measure=False)
    encoded = [encode_record(tokenizer, records[i], max_length) for i in halves.held_out]
    return teacher_forced(attacker, encoded, ensure_pad_token(tokenizer), batch_size)
