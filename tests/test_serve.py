"""`blur serve` registers a cron-scheduled deployment on a real Prefect server."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def test_blur_serve_schedules_the_flow_on_a_real_server(tmp_path):
    api = f"http://127.0.0.1:{_free_port()}/api"
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_API_URL=api,
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_ENABLED="false", HF_HUB_OFFLINE="1")
    port = api.split(":")[2].split("/")[0]
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    bin_dir = Path(sys.executable).parent
    server = subprocess.Popen([str(bin_dir / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", port],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    served = None
    try:
        _wait(lambda: _healthy(api), 180, "the Prefect server")
        served = subprocess.Popen([str(bin_dir / "blur"), "serve", "--cron", "*/7 * * * *", "--root", str(tmp_path)],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

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
        for process in (served, server):
            if process is not None:
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()


def test_serve_without_a_server_says_how_to_start_one(tmp_path, monkeypatch):
    from flows.serve import ServeError, serve_flow

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with pytest.raises(ServeError, match="prefect server start"):
        serve_flow(root=tmp_path, params="params.yaml", cron="0 2 * * *")
