"""Peak live tensor memory on the CPU, counted exactly from what torch's operators allocate and free.

``tracemalloc`` does not see torch's allocations, torch has no CPU allocator statistics,
and RSS moves with the C allocator's caching. :class:`LiveBytes` instead watches every
operator through a ``TorchDispatchMode`` (forward, backward and optimizer kernels alike):
each output whose storage is new is counted at its storage's size, and uncounted again when
that storage is freed (a weak-reference finaliser on the storage object, which torch keeps
alive exactly as long as the C++ storage). Tensors that exist before the measurement
(weights, gradients, optimizer state) are ``adopt``-ed: counted in the baseline, so freeing
or replacing them during the step is seen too. ``peak - baseline`` is then the most extra
tensor memory the step needed at any moment.
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
