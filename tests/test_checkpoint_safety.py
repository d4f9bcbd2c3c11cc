"""A checkpoint file is data: loading one never runs code stored in it."""

from __future__ import annotations

import os
import warnings

import torch

from components.unlearning.checkpoint import CHECKPOINT_NAME, FORMAT, StaleCheckpointWarning, load_checkpoint


class _Planted:
    """What a tampered checkpoint could hold: unpickling it would run ``os.mkdir``."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_a_checkpoint_with_code_in_it_is_refused_and_the_code_never_runs(tmp_path):
    marker = tmp_path / "code-ran"
    torch.save({"format": FORMAT, "fingerprint": "f", "payload": _Planted(str(marker))}, tmp_path / CHECKPOINT_NAME)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert load_checkpoint(tmp_path, "f", torch.device("cpu")) is None

    assert not marker.exists()
    assert any(issubclass(w.category, StaleCheckpointWarning) for w in caught)
