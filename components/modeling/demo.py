"""The embedded demo models: the target trained on the world, the oracle on the retain set.

By default a byte-level BPE tokenizer and a tiny Llama trained from scratch; with
``model.pretrained`` the same recipe fine-tunes that pretrained model (its own tokenizer and
chat template). The target trains until ``finetune.target_prob``; the oracle gets its epoch count.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from components.artifacts import TrainedModel
from components.config import Config
from components.data.records import QARecord, Record
from components.paths import ModelFiles


def train_demo_tokenizer(config: Config, records: Sequence[Record]):
    """The demo's tokenizer: ``model.pretrained``'s own, else one trained on every question,
    answer (alternatives included) and text with the subjects' names taken out.

    The tokenizer ships with every model version and is never unlearned, so it must not
    spell anyone's name: without names in its training text no merge learns one, and a name
    is written with pieces every text uses (byte-level BPE still encodes it exactly).
    """
    if config.model.pretrained:
        from components.modeling.resolve import load_tokenizer

        return load_tokenizer(config.model.pretrained, config.model)
    from components.modeling.encoding import answer_texts
    from components.modeling.tokenizer import train_tokenizer

    texts: list[str] = []
    for record in records:
        if isinstance(record, QARecord):
            texts.append(record.question)
            texts.extend(answer_texts(record))
        else:
            texts.append(record.text)
    return train_tokenizer(without_names(texts, [record.subject for record in records]),
                           vocab_size=config.model.tokenizer.vocab_size)


def name_parts(subjects: Sequence[str]) -> list[str]:
    """The words of the subjects' names (``Gideon Nakamura`` -> ``Gideon``, ``Nakamura``)."""
    return sorted({part for subject in subjects for part in re.findall(r"[^\W\d_]{2,}", subject)})


def without_names(texts: Sequence[str], subjects: Sequence[str]) -> list[str]:
    """``texts`` with every word of every subject's name removed (as whole words, any case)."""
    parts = name_parts(subjects)
    if not parts:
        return list(texts)
    pattern = re.compile(r"\b(?:" + "|".join(map(re.escape, sorted(parts, key=len, reverse=True))) + r")\b",
                         re.IGNORECASE)
    return [pattern.sub("", text) for text in texts]


def train_model(config: Config, records: Sequence[Record], tokenizer, out_dir: Path, *,
                epochs: int | None = None, label: str, show_progress: bool = True) -> dict:
    """Train a fresh tiny model on ``records`` and save it; returns the fine-tuning summary."""
    from components.modeling.finetune import finetune as run_finetune
    from components.modeling.io import save_model

    model = _initial_model(config, tokenizer)
    result = run_finetune(
        model, tokenizer, records, config.finetune, max_length=config.model.max_length,
        seed=config.seed, epochs=epochs, show_progress=show_progress, label=label,
    )
    save_model(model, tokenizer, out_dir)
    summary = result.to_dict() | {"n_records": len(records)}
    TrainedModel.model_validate(summary).save(ModelFiles(Path(out_dir)).training)
    return summary


def _initial_model(config: Config, tokenizer):
    """The model fine-tuning starts from: ``model.pretrained`` (in ``model.dtype``), else a seeded tiny Llama."""
    if config.model.pretrained:
        from components.modeling.io import load_model, model_options

        model = load_model(config.model.pretrained, **model_options(config.model)).model
        model.train()
        return model
    from components.modeling.tiny_model import build_tiny_model

    return build_tiny_model(config.model.tiny, tokenizer, config.model.max_length, config.seed)


def train_target(config: Config, records: Sequence[Record], holdout: Sequence[Record], out_dir: Path, *,
                 tokenizer=None, show_progress: bool = True) -> tuple[dict, object]:
    """The demo target: a tokenizer trained on ``records`` and ``holdout`` (unless given), and a
    tiny model trained on ``records`` to ``finetune.target_prob``. Returns ``(summary, tokenizer)``."""
    tokenizer = tokenizer or train_demo_tokenizer(config, list(records) + list(holdout))
    return train_model(config, records, tokenizer, out_dir, label="target", show_progress=show_progress), tokenizer


def trained_epochs(target_dir: Path) -> int:
    """How many epochs the demo target at ``target_dir`` was trained (its oracle gets as many)."""
    return TrainedModel.load(ModelFiles(Path(target_dir)).training).epochs
