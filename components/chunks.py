"""Consecutive chunks of a list (evaluation batches, MLflow's per-call limits), without torch:
the ``register`` stage logs in chunks and needs no tensor library."""

from __future__ import annotations

from typing import Iterator, Sequence, TypeVar

T = TypeVar("T")


def batched(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """Consecutive chunks of at most ``size`` items."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
