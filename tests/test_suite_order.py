"""The suite's hand-out order (``HEAVIEST_FIRST`` in tests/conftest.py) names test files that exist: a renamed
file would silently lose its place and the two xdist workers would drift apart again."""

from __future__ import annotations

from pathlib import Path

from conftest import HEAVIEST_FIRST


def test_every_file_handed_out_first_exists():
    tests = Path(__file__).parent
    assert [name for name in HEAVIEST_FIRST if not (tests / name).is_file()] == []
    assert len(set(HEAVIEST_FIRST)) == len(HEAVIEST_FIRST)
