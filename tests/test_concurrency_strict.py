"""With a Prefect server the flow holds its concurrency slot strictly: a limit that is missing
(its creation failed) stops the run instead of letting it proceed unguarded."""

from __future__ import annotations

import pytest

from components.config import Config


def test_a_missing_concurrency_limit_stops_the_run(prefect_server, monkeypatch):
    import flows.pipeline as pipeline
    from prefect.settings import PREFECT_API_URL

    assert PREFECT_API_URL.value(), "the test server must be a real API for the slot to be used"
    monkeypatch.setattr(pipeline, "_ensure_concurrency_limit", lambda name: None)  # creation "failed"
    config = Config().with_overrides({"flow.concurrency_limit": "blur-never-created",
                                      "flow.lock_timeout_seconds": 5})
    entered = False
    with pytest.raises(Exception):
        with pipeline._server_slot(config):
            entered = True
    assert not entered


def test_an_existing_limit_is_held_and_released(prefect_server):
    import flows.pipeline as pipeline
    from prefect.client.orchestration import get_client

    config = Config().with_overrides({"flow.concurrency_limit": "blur-held", "flow.lock_timeout_seconds": 5})
    with pipeline._server_slot(config):
        with get_client(sync_client=True) as client:
            assert client.read_global_concurrency_limit_by_name("blur-held").active_slots == 1
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name("blur-held").active_slots == 0
