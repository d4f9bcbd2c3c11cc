"""Serve the deletion flow on a cron schedule from a long-running process.

Schedules live on a Prefect server: start one with ``prefect server start`` and point
``PREFECT_API_URL`` at it (``http://127.0.0.1:4200/api`` by default) before serving.
"""

from __future__ import annotations

import os
from pathlib import Path

DEPLOYMENT_LIMIT = 1


class ServeError(RuntimeError):
    """Serving needs a real Prefect server."""


def serve_flow(*, root: Path, params: str, cron: str, name: str = "nightly") -> None:
    """Register the deployment with its cron schedule and run scheduled runs until stopped."""
    if not os.environ.get("PREFECT_API_URL"):
        raise ServeError(
            "schedules need a Prefect server: run `prefect server start` in another terminal, then "
            "`export PREFECT_API_URL=http://127.0.0.1:4200/api` and serve again"
        )
    from flows.pipeline import process_requests

    process_requests.serve(
        name=name,
        cron=cron,
        parameters={"root": str(root), "params": params},
        global_limit=DEPLOYMENT_LIMIT,
        description="Process pending deletion requests: validate, unlearn with BLUR, evaluate, gate, register.",
        tags=["unlearning", "deletion-requests"],
    )
