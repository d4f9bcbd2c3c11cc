"""Real `blur process` runs shared by the reliability tests (crash, concurrency, privacy,
reproducibility, bad requests).

Each run is a separate process started the way an operator starts it, talking to the
session's Prefect test server (``prefect_server``; or, with ``server=False``, to Prefect's
embedded API as when no server is configured) and to its own MLflow SQLite store, on a
throw-away git + DVC repository of the tiny flow world. A run takes about a minute,
so each is a session-scoped fixture (:func:`concurrent_run`, :func:`reference_run`; this
module is a plugin of tests/conftest.py) and a test that changes a repository works on a
copy (:func:`copy_repo`).

Every repository processes the same batch: :func:`batch_requests` (one request by
subject, one by explicit question/answer records). With the same params, the same seed and
the same requests, their metrics must be identical.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from pipeline_repo import FLOW_PARAMS, make_flow_repo, tiny_subjects

# The tiny flow world, with enough unlearning steps and checkpoints that a run can be
# killed between two checkpoints.
RELIABILITY_PARAMS = {**FLOW_PARAMS, "unlearn.steps": 16, "unlearn.checkpoint_every": 4}

BLUR = Path(sys.executable).parent / "blur"
# The test files that use the runs below: one xdist worker runs them all (tests/conftest.py), so each run is
# built once per session.
SHARED_RUN_FILES = frozenset({"test_bad_requests.py", "test_concurrency.py", "test_crash_resume.py", "test_privacy.py",
                              "test_reliability_failures.py", "test_reproducibility.py"})


# --------------------------------------------------------------------------- requests


def world_records():
    """The records of the tiny flow world (the same seed and sizes as FLOW_PARAMS)."""
    from components.data.demo_world import generate_world

    world, _ = generate_world(seed=0, n_subjects=6, n_holdout_subjects=2, facts_per_subject=8)
    return world


def batch_requests() -> dict[str, dict]:
    """File name -> request: everything about one author, and two facts about another."""
    subjects = tiny_subjects()
    facts = [r for r in world_records() if r.subject == subjects[2]][:2]
    return {
        "alpha.json": {"request_id": "req-alpha", "received_at": "2026-11-28T09:00:00Z",
                       "subjects": [subjects[1]]},
        "beta.json": {"request_id": "req-beta", "received_at": "2026-11-28T09:05:00Z",
                      "records": [{"question": r.question, "answer": r.answer} for r in facts]},
    }


def forgotten_subject() -> str:
    """The author erased as a whole by ``req-alpha``."""
    return tiny_subjects()[1]


def misspelt_request() -> dict:
    """A request for the forgotten author with a typo in the name: rejected, with a
    "did you mean" that names the real author."""
    name = forgotten_subject()
    return {"request_id": "req-typo", "received_at": "2026-11-28T09:10:00Z", "subjects": [name[:-1] + "x" + name[-1]]}


def new_repo(folder: Path, mlflow_db: Path, *, name: str, extra: dict[str, dict] | None = None) -> Path:
    """A flow repository with the batch requests (and ``extra`` ones) waiting in its inbox
    and its own concurrency limit (so a run killed elsewhere never blocks it)."""
    repo = make_flow_repo(folder / name, {**RELIABILITY_PARAMS, "flow.concurrency_limit": f"blur-test-{name}"},
                          mlflow_db=mlflow_db)
    inbox = repo / "data" / "requests" / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    for file_name, request in {**batch_requests(), **(extra or {})}.items():
        (inbox / file_name).write_text(json.dumps(request, indent=2))
    return repo


def copy_repo(source: Path, destination: Path) -> Path:
    """A copy of a repository after its runs (git, DVC cache, MLflow DB, models, inbox).

    The copied MLflow database still names the original artifact folder (MLflow stores
    absolute artifact locations); tests on a copy only read those artifacts.
    """
    shutil.copytree(source, destination, symlinks=True)
    return destination


# --------------------------------------------------------------------------- processes


def blur_env(repo: Path, *, server: bool = True, **extra: str) -> dict[str, str]:
    """The environment of a `blur` process: offline models, MLflow failing fast, Prefect's
    home inside the repository, and the session's Prefect server (``server``) or, without
    it, Prefect's embedded ephemeral API (the default when no server is configured)."""
    import prefect.settings

    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("PREFECT_", "MLFLOW_"))}
    if server:
        url = prefect.settings.PREFECT_API_URL.value()
        assert url, "no Prefect test server: use the prefect_server fixture"
        env["PREFECT_API_URL"] = str(url)
    env.update({
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "PREFECT_HOME": str(repo / ".prefect"),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        **extra,
    })
    return env


def start_blur(repo: Path, log: Path, *args: str, server: bool = True, **env: str) -> subprocess.Popen:
    """Start ``blur ARGS --root REPO`` in the background (in its own process group), its
    output going to ``log``."""
    handle = log.open("ab")
    try:
        return subprocess.Popen([str(BLUR), *args, "--root", str(repo)], cwd=repo,
                                env=blur_env(repo, server=server, **env),
                                stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        handle.close()


def finish(process: subprocess.Popen, log: Path, timeout: float = 540) -> tuple[int, str]:
    """Wait for a started `blur` process; its exit code and output."""
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError(f"blur did not finish in {timeout} s:\n{log.read_text(errors='replace')[-4000:]}")
    return code, log.read_text(errors="replace")


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# --------------------------------------------------------------------------- the shared runs


@pytest.fixture(scope="session")
def concurrent_run(tmp_path_factory, prefect_server, migrated_mlflow_db, seed_target) -> dict:
    """Two `blur process` started at the same moment on one repository (with the session's demo target;
    a failure is raised again for every test that asks, not rebuilt)."""
    repo = new_repo(tmp_path_factory.mktemp("concurrent"), migrated_mlflow_db, name="concurrent")
    seed_target(repo)
    logs = [repo.parent / f"blur-process-{i}.log" for i in (1, 2)]
    processes = [start_blur(repo, log, "process") for log in logs]
    outcomes = [finish(process, log) for process, log in zip(processes, logs)]
    for code, output in outcomes:
        assert code == 0, f"blur process failed ({code}):\n{output[-3000:]}"
    return {"repo": repo, "outcomes": outcomes, "logs": logs}


# Prefect stores results (as JSON, under PREFECT_HOME/storage) with these: the flow's
# summary here (the pipeline's tasks have no cache policy, so Prefect keeps none of theirs).
PERSIST_RESULTS = {"PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true", "PREFECT_RESULTS_DEFAULT_SERIALIZER": "json"}


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, prefect_server, migrated_mlflow_db) -> dict:
    """One `blur process` on a fresh repository: the production path, uninterrupted (its own demo target
    trained too: tests/test_reproducibility.py compares it with the session's), with Prefect result
    persistence on. Its inbox also holds :func:`misspelt_request`, rejected in the same run."""
    repo = new_repo(tmp_path_factory.mktemp("reference"), migrated_mlflow_db, name="reference",
                    extra={"typo.json": misspelt_request()})
    log = repo.parent / "blur-process.log"
    code, output = finish(start_blur(repo, log, "process", **PERSIST_RESULTS), log)
    assert code == 0, f"blur process failed ({code}):\n{output[-3000:]}"
    return {"repo": repo, "code": code, "output": output, "log": log}


def batch_dir(repo: Path) -> Path:
    """The one batch folder of a repository that processed one batch."""
    batches = sorted((repo / "runs").glob("batch-*"))
    assert len(batches) == 1, f"expected one batch in {repo / 'runs'}, found {[b.name for b in batches]}"
    return batches[0]


def metrics_of(repo: Path) -> dict:
    return json.loads((batch_dir(repo) / "reports" / "metrics.json").read_text())


def registry(repo: Path) -> dict:
    """What the repository's MLflow store holds: runs, model versions, the champion."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    versions = client.search_model_versions("name='blur-demo'")
    try:
        champion = str(client.get_model_version_by_alias("blur-demo", "champion").version)
    except Exception:
        champion = None
    experiments = client.search_experiments()
    runs = client.search_runs([e.experiment_id for e in experiments]) if experiments else []
    return {"versions": sorted(str(v.version) for v in versions), "champion": champion,
            "runs": sorted(r.info.run_id for r in runs), "run_tags": [dict(r.data.tags) for r in runs]}
