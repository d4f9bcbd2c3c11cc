"""A Prefect server started the way an operator starts it (`prefect server start` on 127.0.0.1), once per session.

The tests of what runs against such a server from the command line (``blur serve``, a process work pool and its
worker: :data:`OPERATOR_SERVER_FILES`) share it: each started its own before, about 10 CPU-s each. Those files
run on one xdist worker (tests/conftest.py), so it starts once. Each test uses its own deployment, pool and
PREFECT_HOME (the client's); the server keeps its own home and log (``server.log``) in a session folder.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

BIN = Path(sys.executable).parent
OPERATOR_SERVER_FILES = frozenset({"test_serve.py", "test_work_pool.py"})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def healthy(api: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def start(args: list[str], env: dict, log: Path, cwd: Path | None = None) -> subprocess.Popen:
    """A process in its own group (so its children die with it), output to ``log``."""
    with log.open("wb") as handle:
        return subprocess.Popen(args, env=env, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT,
                                start_new_session=True)


def stop(process: subprocess.Popen) -> None:
    """Terminate the process group; kill it if it has not gone within 30 s."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
    else:  # the leader is gone; take any child it left behind
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="session")
def operator_server(tmp_path_factory, prefect_database) -> Iterator[str]:
    """The API URL of a `prefect server start` on a free loopback port (no UI, no analytics), stopped at the end;
    its database (``PREFECT_HOME/prefect.db``) starts as a copy of the session's migrated one."""
    from prefect_database import copy_database

    home = tmp_path_factory.mktemp("prefect-server-home")
    copy_database(prefect_database, home / "prefect.db")
    api = f"http://127.0.0.1:{free_port()}/api"
    env = dict(os.environ, PREFECT_HOME=str(home), PREFECT_API_URL=api, PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_UI_ENABLED="false")
    port = api.split(":")[2].split("/")[0]
    server = start([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", port],
                   env, home / "server.log")
    try:
        deadline = time.monotonic() + 180
        while not healthy(api):
            assert server.poll() is None, (home / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the Prefect server did not start within 180 s"
            time.sleep(1)
        yield api
    finally:
        stop(server)
