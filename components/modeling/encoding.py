"""How records become token ids: one prompt format for training, unlearning and evaluation.

Only the answer (or the document text) is a training target; prompt tokens get label -100.
Every consumer goes through :func:`encode_pair` so the format cannot drift between stages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from components.data.records import QARecord, Record, TextRecord

IGNORE_INDEX = -100
PROMPT_TEMPLATE = "Question: {question}\nAnswer:"


def qa_prompt(question: str) -> str:
    """The prompt a QA record's answer follows."""
    return PROMPT_TEMPLATE.format(question=question)


def prompt_and_target(record: Record, answer: str | None = None) -> tuple[str, str]:
    """Split a record into the conditioning prompt and the target text.

    ``answer`` replaces a QA record's answer (paraphrased, perturbed, refusal answers).
    """
    if isinstance(record, TextRecord):
        return "", record.text
    return qa_prompt(record.question), answer if answer is not None else record.answer


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]


def encode_pair(tokenizer, prompt: str, target: str, max_length: int) -> Encoded:
    """Tokenise ``prompt`` and `` target<eos>`` and mask the prompt out of the labels.

    When too long, the target is cut at the end; the prompt is kept whole if it fits.
    """
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    prompt_ids = bos + (tokenizer.encode(prompt, add_special_tokens=False) if prompt else [])
    spaced = f" {target}" if prompt else target
    target_ids = tokenizer.encode(spaced, add_special_tokens=False)
    if tokenizer.eos_token_id is not None:
        target_ids = target_ids + [tokenizer.eos_token_id]
    if len(prompt_ids) >= max_length:
        prompt_ids = prompt_ids[: max_length - 1]
    target_ids = target_ids[: max_length - len(prompt_ids)]
    return Encoded(
        input_ids=prompt_ids + target_ids,
        labels=[IGNORE_INDEX] * len(prompt_ids) + target_ids,
    )


def encode_record(tokenizer, record: Record, max_length: int, answer: str | None = None) -> Encoded:
    """Encode a record (or one of its alternative answers) for teacher forcing."""
    prompt, target = prompt_and_target(record, answer)
    return encode_pair(tokenizer, prompt, target, max_length)


def collate(examples: Sequence[Encoded], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch for teacher-forced scoring and training."""
    width = max(len(example.input_ids) for example in examples)
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def answer_texts(record: QARecord) -> list[str]:
    """The answer strings a QA record carries, for tokenizer training."""
    texts = [record.answer]
    if record.paraphrased_answer:
        texts.append(record.paraphrased_answer)
    texts.extend(record.perturbed_answers)
    return texts
