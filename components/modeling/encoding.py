"""How records become token ids: one prompt format for training, unlearning and evaluation.

Only the answer (or the document text) is a training target; prompt tokens get label -100.
Every consumer goes through :func:`encode_record` so the format cannot drift between stages.

A QA record is prompted with the tokenizer's chat template when it has one (the question as
the user turn, then the template's generation prompt; the answer follows it as written and
ends with the tokenizer's eos, which for chat models is the end-of-turn token generation
stops at). A tokenizer without a template (the demo's) gets the plain
``Question: ...\nAnswer:`` prompt with the answer after a space. A text record is its text.
Either way the sequence starts with the tokenizer's BOS exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from components.data.records import QARecord, Record, TextRecord

IGNORE_INDEX = -100
PROMPT_TEMPLATE = "Question: {question}\nAnswer:"


def has_chat_template(tokenizer) -> bool:
    """Whether QA prompts for this tokenizer go through its chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def qa_prompt(question: str, tokenizer=None) -> str:
    """The prompt text a QA record's answer follows (the chat template's, when ``tokenizer`` has one)."""
    if tokenizer is not None and has_chat_template(tokenizer):
        return tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                             add_generation_prompt=True, tokenize=False)
    return PROMPT_TEMPLATE.format(question=question)


def ensure_pad_token(tokenizer) -> int:
    """The pad id for batching; a tokenizer without one pads with its eos (set on it, once)."""
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise ValueError("the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer.pad_token_id


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]


def _with_bos(tokenizer, ids: list[int]) -> list[int]:
    """``ids`` led by the tokenizer's BOS, once (a chat template may already write it)."""
    bos = tokenizer.bos_token_id
    return ids if bos is None or ids[:1] == [bos] else [bos] + ids


def _join(tokenizer, prompt_ids: list[int], target_ids: list[int], max_length: int) -> Encoded:
    """Append eos to the target, cut to ``max_length`` (target first) and mask the prompt."""
    if tokenizer.eos_token_id is not None:
        target_ids = target_ids + [tokenizer.eos_token_id]
    if len(prompt_ids) >= max_length:
        prompt_ids = prompt_ids[: max_length - 1]
    target_ids = target_ids[: max_length - len(prompt_ids)]
    return Encoded(input_ids=prompt_ids + target_ids, labels=[IGNORE_INDEX] * len(prompt_ids) + target_ids)


def encode_pair(tokenizer, prompt: str, target: str, max_length: int) -> Encoded:
    """Tokenise ``prompt`` and `` target<eos>`` (plain format) and mask the prompt out of the labels.

    When too long, the target is cut at the end; the prompt is kept whole if it fits.
    """
    prompt_ids = _with_bos(tokenizer, tokenizer.encode(prompt, add_special_tokens=False) if prompt else [])
    spaced = f" {target}" if prompt else target
    return _join(tokenizer, prompt_ids, tokenizer.encode(spaced, add_special_tokens=False), max_length)


def encode_record(tokenizer, record: Record, max_length: int, answer: str | None = None) -> Encoded:
    """Encode a record (or one of its alternative answers) for teacher forcing.

    ``answer`` replaces a QA record's answer (paraphrased, perturbed, refusal answers).
    """
    if isinstance(record, TextRecord):
        return encode_pair(tokenizer, "", record.text, max_length)
    target = answer if answer is not None else record.answer
    if not has_chat_template(tokenizer):
        return encode_pair(tokenizer, qa_prompt(record.question), target, max_length)
    prompt_ids = tokenizer.encode(qa_prompt(record.question, tokenizer), add_special_tokens=False)
    target_ids = tokenizer.encode(target, add_special_tokens=False)
    return _join(tokenizer, _with_bos(tokenizer, prompt_ids), target_ids, max_length)


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
