"""The privacy allow-list (components/erasure/safe.py) and the batch id check match whole values:
``$`` also matches before a trailing newline, so ``^...$`` with ``re.match`` let ``"<hash>\\n"`` through."""

from __future__ import annotations

import pytest

from components.erasure.safe import safe_request_summary
from components.registry.promotion import _batch_id
from registry_fixtures import sample_summary


def test_a_hash_with_a_trailing_newline_is_hashed_not_passed_through():
    resolution = sample_summary("req-1", request_hashes={"req-1": "0123456789abcdef\n"},
                                forget_ids=["fedcba9876543210\n"])
    safe = safe_request_summary(resolution, dvc_hashes={"req-1": "0123456789abcdef0123456789abcdef\n"})
    request = safe["requests"][0]
    assert "\n" not in request["request_hash"] and request["request_hash"] != "0123456789abcdef"
    assert "\n" not in request["dvc_md5"] and "\n" not in safe["forget_ids"][0]


def test_a_request_id_with_a_trailing_newline_is_hashed():
    safe = safe_request_summary(sample_summary("req-1\n"))
    assert safe["requests"][0]["request_id"].startswith("hashed-")


def test_a_batch_id_with_a_trailing_newline_is_refused():
    with pytest.raises(ValueError, match="batch_id"):
        _batch_id("batch-0123456789ab\n", {})
