"""prefect.yaml deploys the inbox flow to a process work pool; a worker claims the run and finishes it.

Everything is real and on loopback: `prefect server start` on 127.0.0.1 (the session's, shared with
tests/test_serve.py: tests/operator_server.py), `prefect work-pool create`, `prefect deploy` from the
repository's prefect.yaml, `prefect deployment run`, and `prefect worker start --run-once` running the
flow on a tiny flow repository (unlearning on 2 gloo ranks under torchrun). The server and the worker run
in their own process groups, which are killed at the end whatever happens.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from operator_server import BIN, start, stop
from pipeline_repo import make_flow_repo, request_json, tiny_subjects

ROOT = Path(__file__).resolve().parents[1]
POOL = "blur-pool"
DEPLOYMENT = "process-deletion-requests/nightly-pool"
CRON = "17 3 * * *"
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


def _prefect(args: list[str], env: dict, cwd: Path, timeout: int = 300) -> str:
    result = subprocess.run([str(BIN / "prefect"), *args], env=env, cwd=cwd, capture_output=True, text=True,
                            timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"prefect {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result.stdout


@pytest.fixture(scope="module")
def prefect_api(operator_server, tmp_path_factory):
    """The session's `prefect server start` (tests/operator_server.py) and the environment that points at it."""
    home = tmp_path_factory.mktemp("prefect-home")
    env = dict(os.environ, PREFECT_HOME=str(home), PREFECT_API_URL=operator_server,
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_ENABLED="false", PREFECT_CLI_PROMPT="false",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1",
               PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    return operator_server, env


@pytest.fixture(scope="module")
def worker_run(prefect_api, tmp_path_factory, migrated_mlflow_db, seed_target):
    """Deploy from prefect.yaml, trigger a run, and let a run-once worker take it."""
    api, env = prefect_api
    repo = make_flow_repo(tmp_path_factory.mktemp("pool") / "repo", mlflow_db=migrated_mlflow_db,
                          overrides={"flow.cron": CRON, "threads": 1, "unlearn.nproc": 2})
    seed_target(repo)
    shutil.copy(ROOT / "prefect.yaml", repo / "prefect.yaml")
    inbox = repo / "data" / "requests" / "inbox"
    inbox.mkdir(parents=True)
    (inbox / "good.json").write_text(request_json("req-pool", [tiny_subjects()[1]]))

    started = time.monotonic()
    _prefect(["work-pool", "create", POOL, "--type", "process"], env, repo)
    _prefect(["--no-prompt", "deploy", "--name", "nightly-pool"], env, repo)
    deployed = time.monotonic()
    output = _prefect(["deployment", "run", DEPLOYMENT], env, repo)
    match = re.search(r"UUID:\s*([0-9a-f-]{36})", output)
    assert match, output
    worker = start([str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--run-once", "--limit", "1"],
                   env, repo.parent / "worker.log", cwd=repo.parent)
    try:
        worker.wait(timeout=900)
    finally:
        stop(worker)
    return {"repo": repo, "api": api, "flow_run_id": match.group(1), "worker_log": repo.parent / "worker.log",
            "deploy_seconds": deployed - started, "run_seconds": time.monotonic() - deployed}


@contextmanager
def _client(api: str):
    """A Prefect client of the test's server."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        yield client


def test_the_deployment_has_the_schedule_pool_limit_and_parameters(worker_run):
    with _client(worker_run["api"]) as client:
        deployment = client.read_deployment_by_name(DEPLOYMENT)
    assert [s.schedule.cron for s in deployment.schedules] == [CRON]  # flow.cron of the repo's params.yaml
    assert deployment.work_pool_name == POOL
    assert deployment.global_concurrency_limit is not None and deployment.global_concurrency_limit.limit == 1
    assert deployment.parameters == {"root": ".", "params": "params.yaml"}
    steps = [step["prefect.deployments.steps.set_working_directory"] for step in deployment.pull_steps]
    assert steps == [{"directory": str(worker_run["repo"])}]


def test_the_worker_claimed_the_run_and_it_completed(worker_run):
    from uuid import UUID

    with _client(worker_run["api"]) as client:
        run = client.read_flow_run(UUID(worker_run["flow_run_id"]))
    log = worker_run["worker_log"].read_text(errors="replace")
    assert run.state is not None and run.state.is_completed(), f"{run.state}\n{log[-4000:]}"
    assert run.work_pool_name == POOL and run.infrastructure_pid  # set when the worker submitted it
    assert worker_run["flow_run_id"] in log  # the worker's own record of taking it
    assert "launching 2 processes (ddp) with torchrun" in log and "unlearn: unlearned in 12 steps" in log
    print(f"deploy {worker_run['deploy_seconds']:.0f} s, trigger + worker run {worker_run['run_seconds']:.0f} s")


def test_the_request_was_processed_and_registered(worker_run):
    processed = worker_run["repo"] / "data" / "requests" / "processed"
    result = json.loads((processed / "req-pool.result.json").read_text())
    assert result["model_version"] == "1" and result["forget_ids"]
    assert not list((worker_run["repo"] / "data" / "requests" / "inbox").glob("*.json"))


def test_prefect_yaml_reads_the_schedule_from_params():
    """The deployment's schedule is whatever params.yaml says, not a copy that could drift."""
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    (deployment,) = spec["deployments"]
    build = {next(iter(step.values()))["id"]: next(iter(step.values())) for step in spec["build"]}
    assert "flow.cron" in build["flow-cron"]["script"] and deployment["schedules"][0]["cron"] == "{{ flow-cron.stdout }}"
    assert deployment["entrypoint"] == "flows/pipeline.py:process_requests"
