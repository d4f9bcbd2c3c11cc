"""Peak live tensor memory on the CPU, counted exactly from what torch's operators allocate and free.

How it works: ``benchmarks/README.md``, appendix, ``benchmarks.memory``.
"""

from __future__ import annotations

import weakref
from typing import Any, Iterable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class LiveBytes(TorchDispatchMode):
    """Live and peak bytes of tensor storage while the mode is active."""

    def __init__(self, adopt: Iterable[torch.Tensor] = ()):
        super().__init__()
        self.live = self.peak = 0
        self._tracked: set[int] = set()
        for tensor in adopt:
            if tensor is not None:
                self._track(tensor)
        self.baseline = self.live
        self.peak = self.live

    @property
    def peak_extra(self) -> int:
        """The most bytes live at once beyond the baseline."""
        return self.peak - self.baseline

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        pointer, size = storage.data_ptr(), storage.nbytes()
        if size == 0 or pointer in self._tracked:
            return
        self._tracked.add(pointer)
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._release, pointer, size)

    def _release(self, pointer: int, size: int) -> None:
        if pointer in self._tracked:
            self._tracked.discard(pointer)
            self.live -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = {t.untyped_storage().data_ptr() for t in _tensors((args, kwargs))}
        out = func(*args, **kwargs)
        for tensor in _tensors(out):
            if tensor.untyped_storage().data_ptr() not in inputs:  # views and in-place results are not new
                self._track(tensor)
        return out


def _tensors(tree: Any) -> list[torch.Tensor]:
    """The tensors among the leaves of an operator's (nested) arguments or outputs."""
    return [leaf for leaf in tree_leaves(tree) if isinstance(leaf, torch.Tensor)]
