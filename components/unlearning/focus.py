"""Which answer tokens carry what the model learned about the forget set's subjects (``unlearn.focus``).

A forget answer mixes the fact ("Osaka", "1947") with wording any answer of its kind has ("is the
city where this author was born"). Raising the whole answer's NLL can be done on the wording, which
leaves the fact known in other phrasings (a truth ratio that stays the target's). The starting model
shows which tokens are the subject's: ask the same question about someone else (names of people the
model never saw, from the holdout) and see which answer tokens become less likely. A token's weight
is that rise in NLL (clipped at 0), averaged over a few other names and normalised to mean 1 over the
answer; a record whose question does not name its subject, or whose answer does not depend on it,
keeps uniform weights. No oracle and no extra data: only the request's own records and other names.

A subject named by an id (TOFU's files have no name field: ``world.rows_per_subject`` calls its
authors ``subject-0001``, ...) is asked about by the name its own records use most: the longest run of
capitalised words found in the most of its questions and answers (:func:`names_by_subject`).
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Sequence

import torch

from components.data.records import QARecord, Record
from components.modeling.encoding import IGNORE_INDEX, Encoded, encode_record
from components.modeling.scoring import scored_batches

MIN_CONTRAST = 0.1  # nats over a whole answer: below this its wording does not depend on the subject


MIN_NAME_SHARE = 0.3  # an inferred name appears in at least this share of its subject's records


_POSSESSIVE = ("'s", "’s")


def _capitalised_runs(text: str) -> set[str]:
    """Every run of two or more consecutive capitalised words in ``text``; punctuation and a
    possessive end a run ("Jaime Vasquez's book, Santiago" gives "Jaime Vasquez")."""
    runs: set[str] = set()
    current: list[str] = []

    def flush() -> None:
        if len(current) >= 2:
            runs.update(" ".join(current[i:j]) for i in range(len(current)) for j in range(i + 2, len(current) + 1))
        current.clear()

    for raw in text.split():
        word = raw.strip("\"'()[],.;:!?")
        ends_phrase = word.endswith(_POSSESSIVE) or raw.rstrip("\"')]") != raw.rstrip("\"')],.;:!?")
        word = word[:-2] if word.endswith(_POSSESSIVE) else word
        if word[:1].isupper() and not word.isupper():
            current.append(word)
        else:
            flush()
        if ends_phrase:
            flush()
    flush()
    return runs


def _inferred_name(records: Sequence[QARecord]) -> str | None:
    """The name a subject's records use most: the longest capitalised run found in the most of them."""
    counts = Counter(run for r in records for run in _capitalised_runs(f"{r.question} {r.answer}"))
    if not counts:
        return None
    name, found = max(counts.items(), key=lambda item: (item[1], len(item[0].split()), item[0]))
    return name if found >= max(2, MIN_NAME_SHARE * len(records)) else None


def names_by_subject(records: Iterable[Record]) -> dict[str, str]:
    """Each subject's name as its questions use it: the subject itself where a question contains it,
    else the name inferred from its records (absent when none is found)."""
    by_subject: dict[str, list[QARecord]] = {}
    for record in records:
        if isinstance(record, QARecord) and record.subject:
            by_subject.setdefault(record.subject, []).append(record)
    names = {}
    for subject, own in by_subject.items():
        name = subject if any(subject in r.question for r in own) else _inferred_name(own)
        if name:
            names[subject] = name
    return names


def _asks_by_name(record: Record, names: dict[str, str]) -> bool:
    """A QA record whose question names its subject (so the name can be swapped)."""
    return isinstance(record, QARecord) and record.subject in names and names[record.subject] in record.question


def other_subjects(forget: Sequence[Record], *pools: Sequence[Record]) -> list[str]:
    """Names to ask about instead: the first pool's subjects' names that appear in their own questions
    (people the model never saw), else the next pool's; never a forget subject's name."""
    taken = set(names_by_subject(forget).values()) | {record.subject for record in forget}
    for pool in pools:
        names = names_by_subject(pool)
        found = sorted({names[r.subject] for r in pool if _asks_by_name(r, names)} - taken)
        if found:
            return found
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
    names = names_by_subject(forget)
    askable = [i for i, record in enumerate(forget) if _asks_by_name(record, names)]
    if others and askable:
        own = _answer_nll(model, [encoded[i] for i in askable], pad_token_id, device)
        swapped_examples = []
        for n, i in enumerate(askable):
            record = forget[i]
            for k in range(min(swaps, len(others))):
                name = others[(n * swaps + k) % len(others)]
                question = record.question.replace(names[record.subject], name)
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
