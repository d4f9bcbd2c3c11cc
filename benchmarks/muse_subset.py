"""The MUSE-News subset (BBC news text with its QA sets) that ``muse_news`` and ``pretrained --world muse`` train
and unlearn on: the first articles by index, cut into chunks, with the QA pairs each article owns."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from benchmarks.harness import REPO
from components.data.records import QARecord, Record, TextRecord

MUSE_DATA = REPO.parent / "shared" / "data" / "muse_news"


@dataclass
class MuseSubset:
    """Which articles, how they are cut, and the demo model recipe's overrides for news text."""

    data: Path = MUSE_DATA
    n_forget_articles: int = 24
    n_retain_articles: int = 32
    n_holdout_articles: int = 24
    chunk_words: int = 64
    chunks_per_article: int = 4
    overrides: dict[str, Any] = field(default_factory=lambda: {
        "model.tokenizer.vocab_size": 2048,  # news text needs more merges than the demo's 1024
        "finetune.target_prob": 0.8,
        "finetune.max_epochs": 150,
    })


def muse_bench(config: MuseSubset):
    """The subset's target and oracle on the demo model recipe (trained once, cached)."""
    from benchmarks.common import CACHE, trained_bench
    from components.config import load_config

    settings = load_config(REPO / "params.yaml").with_overrides(config.overrides)
    return trained_bench(settings, *muse_subset(config), CACHE, name="muse")


def _read(data: Path, name: str) -> list:
    path = data / name
    if not path.is_file():
        raise SystemExit(f"MUSE-News file {path} not found: pass --data DIR, a folder laid out like "
                         "muse_bench's data/bbc (raw/, knowmem/, privleak/)")
    return json.loads(path.read_text(encoding="utf-8"))


def chunks(text: str, words: int, limit: int) -> list[str]:
    """The first ``limit`` pieces of ``words`` words (paragraph breaks become spaces)."""
    tokens = text.split()
    pieces = [" ".join(tokens[i:i + words]) for i in range(0, len(tokens), words)]
    return [p for p in pieces if len(p.split()) >= words // 2][:limit]


def owner_article(answer: str, articles: Sequence[str]) -> int | None:
    """The one article containing ``answer`` verbatim, or None (none or several)."""
    found = [i for i, article in enumerate(articles) if answer in article]
    return found[0] if len(found) == 1 else None


def muse_subset(config: MuseSubset) -> tuple[list[Record], list[Record], list[Record]]:
    """``(forget, retain, holdout)`` records of the subset (deterministic: first articles by index)."""
    raw, forget_qa = _read(config.data, "raw/forget.json"), _read(config.data, "knowmem/forget_qa.json")
    retain_texts, retain_qa = _read(config.data, "privleak/retain2.json"), _read(config.data, "knowmem/retain2_qa.json")
    holdout_texts = _read(config.data, "privleak/holdout.json")

    owned = [(item, owner_article(item["answer"], raw)) for item in forget_qa]
    forget_ids = sorted({i for _, i in owned if i is not None})[: config.n_forget_articles]
    forget = _articles(raw, forget_ids, "bbc-forget", config)
    forget += [_qa(item, f"bbc-forget-{i:03d}") for item, i in owned if i in forget_ids]

    retain_owned = [(item, owner_article(item["answer"], retain_texts)) for item in retain_qa]
    first = sorted({i for _, i in retain_owned if i is not None})
    rest = [i for i in range(len(retain_texts)) if i not in first]
    retain_ids = sorted((first + rest)[: config.n_retain_articles])
    retain = _articles(retain_texts, retain_ids, "bbc-retain", config)
    retain += [_qa(item, f"bbc-retain-{i:03d}") for item, i in retain_owned if i in retain_ids]

    n_forget_qa = sum(isinstance(r, QARecord) for r in forget)
    outside = [item for item, i in owned if i not in forget_ids][:n_forget_qa]
    holdout = _articles(holdout_texts, range(config.n_holdout_articles), "bbc-holdout", config)
    holdout += [_qa(item, "bbc-holdout-qa") for item in outside]
    return forget, retain, holdout


def _articles(texts: Sequence[str], ids, prefix: str, config: MuseSubset) -> list[Record]:
    return [TextRecord(text=piece, subject=f"{prefix}-{i:03d}")
            for i in ids for piece in chunks(texts[i], config.chunk_words, config.chunks_per_article)]


def _qa(item: dict, subject: str) -> QARecord:
    return QARecord(question=item["question"], answer=item["answer"], subject=subject)
