"""Checkpoints of an unlearning run: written atomically, resumed only when they match the run.

A checkpoint is one file, ``<checkpoint_dir>/last.pt``: the trainable weights, optimizer
and scheduler state, the step, the diagnostics so far and a *fingerprint* of everything that
determines the run (the config, the encoded forget and retain data in order, the effective
batch size, the seed, the trainable parameters and the starting weights). A checkpoint whose
fingerprint differs belongs to another run: it is ignored with a :class:`StaleCheckpointWarning`
and the run starts fresh (overwriting it at its first checkpoint), so changing
``params.yaml`` or the request never resumes stale weights.

No RNG state is stored: the loop derives its randomness from ``(seed, step)`` at every step.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch

CHECKPOINT_NAME = "last.pt"
FORMAT = 1


class StaleCheckpointWarning(UserWarning):
    """A checkpoint was found but belongs to a different run; starting fresh."""


def fingerprint(parts: dict[str, Any]) -> str:
    """SHA-256 of a JSON-serialisable description of the run."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def token_digest(examples: Sequence) -> str:
    """Hash of encoded examples (``input_ids`` and ``labels``), in order."""
    digest = hashlib.sha256()
    for example in examples:
        digest.update(json.dumps([example.input_ids, example.labels], separators=(",", ":")).encode())
    return digest.hexdigest()


def weights_digest(model: torch.nn.Module) -> list:
    """Names, shapes and float64 sums of the parameters: identifies the starting model.

    One host transfer for the whole model; sums are rounded so the digest is stable.
    """
    named = list(model.named_parameters())
    if not named:
        return []
    device = named[0][1].device
    sums = torch.stack([p.detach().sum(dtype=torch.float64).to(device) for _, p in named]).tolist()
    return [[name, list(p.shape), f"{value:.10g}"] for (name, p), value in zip(named, sums)]


def save_checkpoint(directory: Path, state: dict) -> Path:
    """Write ``state`` to ``directory/last.pt`` via a temporary file and an atomic rename."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / CHECKPOINT_NAME
    handle, temporary = tempfile.mkstemp(prefix=".last.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save({"format": FORMAT, **state}, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


def load_checkpoint(directory: Path | None, expected_fingerprint: str, device: torch.device) -> dict | None:
    """The checkpoint in ``directory`` if there is one for this run, else ``None``."""
    if directory is None or not (directory / CHECKPOINT_NAME).exists():
        return None
    path = directory / CHECKPOINT_NAME
    try:
        state = torch.load(path, map_location=device, weights_only=True)  # tensors and plain data only, no code
    except Exception as error:  # a truncated or foreign file: never resume from it
        warnings.warn(f"could not read checkpoint {path} ({error}); starting fresh", StaleCheckpointWarning,
                      stacklevel=3)
        return None
    if state.get("format") != FORMAT or state.get("fingerprint") != expected_fingerprint:
        warnings.warn(
            f"checkpoint {path} was written by a different run (config, data, seed, batch size or "
            f"starting model changed); starting fresh and overwriting it",
            StaleCheckpointWarning,
            stacklevel=3,
        )
        return None
    return state
