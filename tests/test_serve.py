"""`blur serve` registers a cron-scheduled deployment on a real Prefect server."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from operator_server import BIN

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def test_blur_serve_schedules_the_flow_on_a_real_server(tmp_path, operator_server):
    api = operator_server  # the session's `prefect server start` (tests/operator_server.py)
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_API_URL=api,
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_ENABLED="false", HF_HUB_OFFLINE="1")
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    served = subprocess.Popen([str(BIN / "blur"), "serve", "--cron", "*/7 * * * *", "--root", str(tmp_path)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        def deployment():
            with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
                try:
                    return client.read_deployment_by_name("process-deletion-requests/nightly")
                except Exception:
                    return None

        found = _wait(deployment, 120, "the served deployment")
        assert [s.schedule.cron for s in found.schedules] == ["*/7 * * * *"]
        assert found.parameters["root"] == str(tmp_path)
        assert found.global_concurrency_limit is not None and found.global_concurrency_limit.limit == 1
    finally:
        served.terminate()
        try:
            served.wait(timeout=30)
        except subprocess.TimeoutExpired:
            served.kill()


def test_serve_without_a_server_says_how_to_start_one(tmp_path, monkeypatch):
    from flows.serve import ServeError, serve_flow

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with pytest.raises(ServeError, match="prefect server start"):
        serve_flow(root=tmp_path, params="params.yaml", cron="0 2 * * *")
