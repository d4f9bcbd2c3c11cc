"""Process-wide settings: the thread count reaches torch whether or not torch is loaded yet, and the
registration path does not load torch at all (the ``register`` stage's process stays light)."""

from __future__ import annotations

import sys
from pathlib import Path

from components.config import Config
from components.runtime import apply_threads
from pipeline_repo import run


def _python(code: str) -> str:
    return run([sys.executable, "-c", code], Path(__file__).resolve().parents[1]).stdout.strip()


def test_threads_set_before_torch_loads_reach_torch():
    code = ("from components.config import Config; from components.runtime import apply_threads; import os, sys; "
            "os.environ['MKL_NUM_THREADS'] = '3'; apply_threads(Config().with_overrides({'threads': 1})); "
            "assert 'torch' not in sys.modules; import torch; print(torch.get_num_threads())")
    assert _python(code) == "1", "the setting wins over a thread count already in the environment"


def test_threads_set_after_torch_loaded_reach_torch():
    import torch

    before = torch.get_num_threads()
    try:
        apply_threads(Config().with_overrides({"threads": 1}))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_the_registration_path_does_not_load_torch():
    code = ("import sys, components.stages.register, components.registry, components.registry.promotion, "
            "components.registry.tracking, components.erasure.ledger, components.reports.plots, components.chunks; "
            "print('torch' in sys.modules)")
    assert _python(code) == "False"
