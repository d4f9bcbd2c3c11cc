"""Which answer tokens carry what the model learned about the forget set's subjects (``unlearn.focus``).

A forget answer mixes the fact ("Osaka", "1947") with wording any answer of its kind has ("is the
city where this author was born"). Raising the whole answer's NLL can be done on the wording, which
leaves the fact known in other phrasings (a truth ratio that stays the target's). The starting model
shows which tokens are the subject's: ask the same question about someone else (names of people the
model never saw, from the holdout) and see which answer tokens become less likely. A token's weight
is that rise in NLL (clipped at 0), averaged over a few other names and normalised to mean 1 over the
answer; a record whose question does not name its subject, or whose answer does not depend on it,
keeps uniform weights. No oracle and no extra data: only the request's own records and other names.
"""

from __future__ import annotations

from typing import Sequence

import torch

from components.data.records import QARecord, Record
from components.modeling.encoding import IGNORE_INDEX, Encoded, encode_record
from components.modeling.scoring import scored_batches

MIN_CONTRAST = 0.1  # nats over a whole answer: below this its wording does not depend on the subject


def _asks_by_name(record: Record) -> bool:
    """A QA record whose question names its subject (so the name can be swapped)."""
    return isinstance(record, QARecord) and bool(record.subject) and record.subject in record.question


def other_subjects(forget: Sequence[Record], *pools: Sequence[Record]) -> list[str]:
    """Names to ask about instead: the first pool's subjects that appear in their own questions (people
    the model never saw), else the next pool's; never a forget subject."""
    taken = {record.subject for record in forget}
    for pool in pools:
        names = sorted({r.subject for r in pool if _asks_by_name(r)} - taken)
        if names:
            return names
    return []


def _answer_nll(model, encoded: list[Encoded], pad: int, device: torch.device) -> list[torch.Tensor]:
    """Each example's answer-token NLLs, in order (a 1-D tensor per example)."""
    out = []
    for scores in scored_batches(model, encoded, pad, 32, device):
        for row in range(scores.mask.shape[0]):
            out.append(-scores.token_logps[row][scores.mask[row]].float().cpu())
    return out


@torch.no_grad()
def subject_weights(model, tokenizer, forget: Sequence[Record], encoded: Sequence[Encoded], others: Sequence[str],
                    *, max_length: int, pad_token_id: int, swaps: int = 3) -> torch.Tensor:
    """Per-token weights for ``encoded`` (the forget records as trained), shaped like their padded
    labels ``(N, longest)``: the subject contrast of each answer token, mean 1 over the answer."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    answers = [[p for p, label in enumerate(example.labels) if label != IGNORE_INDEX] for example in encoded]
    weights = torch.zeros(len(encoded), max(len(e.labels) for e in encoded))
    for i, positions in enumerate(answers):
        weights[i, positions] = 1.0
    askable = [i for i, record in enumerate(forget) if _asks_by_name(record)]
    if others and askable:
        own = _answer_nll(model, [encoded[i] for i in askable], pad_token_id, device)
        swapped_examples = []
        for n, i in enumerate(askable):
            record = forget[i]
            for k in range(min(swaps, len(others))):
                name = others[(n * swaps + k) % len(others)]
                question = record.question.replace(record.subject, name)
                swapped_examples.append(encode_record(tokenizer, QARecord(question, record.answer, name), max_length))
        swapped = _answer_nll(model, swapped_examples, pad_token_id, device)
        per = min(swaps, len(others))
        for n, i in enumerate(askable):
            rows = swapped[n * per:(n + 1) * per]
            width = min([len(own[n])] + [len(r) for r in rows])  # a longer prompt may cut the answer sooner
            contrast = (torch.stack([r[:width] for r in rows]).mean(0) - own[n][:width]).clamp(min=0)
            if contrast.sum() < MIN_CONTRAST:
                continue
            weights[i] = 0.0
            weights[i, answers[i][:width]] = contrast * len(answers[i]) / contrast.sum()
    model.train(was_training)
    return weights
