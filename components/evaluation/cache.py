"""A content-addressed cache of what evaluation computes from one model.

The target and the oracle do not change from one batch, ``dvc repro`` or benchmark run to the
next, so scoring them again is waste. Each entry is one kind of model output on one split,
kept under a key of the model's fingerprint (its weights and tokenizer), the split's content
hash and the settings that change the output (``max_length``, batch size, generation limits,
the relearning attack's recipe, library versions). A changed input misses.

Entries hold numbers only: per-token log-probabilities and argmax hits of teacher-forced
passes, per-record generation scores (never the generated text) and the relearning attack's
evidence. Entries of one model live in one folder named by its fingerprint, so a purged model's
entries go with :func:`EvalCache.purge`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from components.data.records import Record
from components.paths import eval_cache_entry

# Bump when what an entry holds, or how it is computed, changes: old entries then miss.
CACHE_FORMAT = 1
KINDS = ("targets", "alternatives", "generations", "relearned")


def model_fingerprint(model: Any, tokenizer: Any) -> str:
    """SHA-256 of a loaded model's parameters and buffers (names, dtypes, shapes, bytes) and of
    its tokenizer (vocabulary, merges, special tokens, chat template): equal only for the same model."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        data = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}|".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    digest.update(_tokenizer_description(tokenizer).encode("utf-8"))
    return digest.hexdigest()


def _tokenizer_description(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocabulary = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    special = {key: str(value) for key, value in sorted(getattr(tokenizer, "special_tokens_map", {}).items())}
    return json.dumps({"vocabulary": vocabulary, "special": special,
                       "chat_template": getattr(tokenizer, "chat_template", None),
                       "pad": getattr(tokenizer, "pad_token_id", None)}, sort_keys=True)


def split_fingerprint(records: Sequence[Record]) -> str:
    """SHA-256 of a split's records, in order, all fields included."""
    digest = hashlib.sha256()
    for record in records:
        digest.update(json.dumps(record.to_dict(), sort_keys=True, ensure_ascii=False).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def settings_key(settings: Mapping[str, Any]) -> str:
    """A short hash of the settings an output depends on, with the library versions and the cache format."""
    import torch
    import transformers

    payload = {"format": CACHE_FORMAT, "torch": torch.__version__, "transformers": transformers.__version__,
               **settings}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]


@dataclass(frozen=True)
class Ragged:
    """Variable-length per-record arrays (log-probabilities and hits), stored flat with their lengths."""

    logps: list[np.ndarray]
    hits: list[np.ndarray]

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        lengths = np.array([len(x) for x in self.logps], dtype=np.int64)
        flat = np.concatenate(self.logps) if self.logps else np.zeros(0)
        hits = np.concatenate(self.hits) if self.hits else np.zeros(0, dtype=bool)
        return {f"{prefix}len": lengths, f"{prefix}logps": flat.astype(np.float64), f"{prefix}hits": hits.astype(bool)}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], prefix: str) -> "Ragged":
        bounds = np.cumsum(np.concatenate([[0], arrays[f"{prefix}len"]]))
        cut = list(zip(bounds[:-1], bounds[1:]))
        return cls([arrays[f"{prefix}logps"][a:b] for a, b in cut], [arrays[f"{prefix}hits"][a:b] for a, b in cut])


class EvalCache:
    """Entries under ``root/<model fingerprint>/<kind>-<key>.npz``; ``root=None`` caches nothing."""

    def __init__(self, root: str | Path | None):
        self.root = Path(root) if root is not None else None

    @property
    def enabled(self) -> bool:
        return self.root is not None

    def _file(self, model_fp: str, kind: str, split_fp: str, settings: str) -> Path:
        if kind not in KINDS:
            raise ValueError(f"unknown cache kind '{kind}' (have: {', '.join(KINDS)})")
        key = hashlib.sha256(f"{split_fp}|{settings}".encode()).hexdigest()[:32]
        return eval_cache_entry(self.root, model_fp, kind, key)  # type: ignore[arg-type]

    def get(self, model_fp: str, kind: str, split_fp: str, settings: str) -> dict[str, np.ndarray] | None:
        """The arrays of an entry, or None when absent (or unreadable: a torn write counts as a miss)."""
        if self.root is None:
            return None
        path = self._file(model_fp, kind, split_fp, settings)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                return {name: data[name] for name in data.files}
        except (OSError, ValueError):
            return None

    def put(self, model_fp: str, kind: str, split_fp: str, settings: str, arrays: Mapping[str, np.ndarray]) -> None:
        """Store an entry atomically (a temporary file and a rename)."""
        if self.root is None:
            return
        path = self._file(model_fp, kind, split_fp, settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        tmp.write_bytes(buffer.getvalue())
        os.replace(tmp, path)

    def purge(self, model_fps: Sequence[str]) -> list[str]:
        """Delete every entry of these models; returns the fingerprints that had entries."""
        removed = []
        for fp in model_fps:
            folder = self.root / fp if self.root is not None and fp else None
            if folder is not None and folder.is_dir():
                shutil.rmtree(folder)
                removed.append(fp)
        return removed

    def size(self) -> tuple[int, int]:
        """(models with entries, bytes on disk)."""
        if self.root is None or not self.root.is_dir():
            return 0, 0
        models = [p for p in self.root.iterdir() if p.is_dir()]
        return len(models), sum(f.stat().st_size for p in models for f in p.iterdir() if f.is_file())
