"""Build a throw-away copy of the pipeline (git + DVC) in a temporary folder for tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

# Sizes that train in seconds yet still memorise a small world.
TINY_PARAMS = {
    "model.max_length": 96,
    "model.tokenizer.vocab_size": 400,
    "model.tiny.hidden_size": 64,
    "model.tiny.intermediate_size": 128,
    "model.tiny.num_layers": 2,
    "model.tiny.num_heads": 4,
    "finetune.lr": 5.0e-3,
    "finetune.batch_size": 16,
    "finetune.max_epochs": 80,
    "finetune.check_every": 2,
    # 8 forget records against 16 holdout ones: privleak swings by tens of points from run to run;
    # the gate's own tests check it (tests/test_gate.py)
    "gate.max_abs_privleak": None,
}


def set_dotted(data: dict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        data = data.setdefault(key, {})
    data[leaf] = value


def write_params(repo: Path, overrides: dict) -> dict:
    params = yaml.load((ROOT / "params.yaml").read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    for key, value in {**TINY_PARAMS, **overrides}.items():
        set_dotted(params, key, value)
    (repo / "params.yaml").write_text(yaml.dump(params, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper),
                                                sort_keys=False))
    return params


def env() -> dict:
    environment = dict(os.environ)
    environment["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{environment['PATH']}"
    environment["HF_HUB_OFFLINE"] = "1"
    return environment


def run(args: list[str], cwd: Path, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def make_pipeline_repo(repo: Path, overrides: dict | None = None) -> Path:
    """A git + DVC repository holding this project's code, dvc.yaml and tiny params."""
    repo.mkdir(parents=True, exist_ok=True)
    for name in ("components", "flows"):
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, repo / name)
    shutil.copytree(ROOT / "data" / "world", repo / "data" / "world")
    shutil.copytree(ROOT / "data" / "knowledge", repo / "data" / "knowledge")
    shutil.copytree(ROOT / "data" / "requests", repo / "data" / "requests",
                    ignore=shutil.ignore_patterns("inbox", "processed", "rejected"))
    write_params(repo, overrides or {})
    run(["git", "init", "-q"], repo)
    run(["git", "config", "user.email", "tests@example.com"], repo)
    run(["git", "config", "user.name", "tests"], repo)
    dvc_init(repo, analytics=False)
    return repo


def dvc_init(repo: Path, no_scm: bool = False, analytics: bool = True, remote: Path | None = None) -> Path:
    """``dvc init [--no-scm]``, then ``dvc config core.analytics false`` unless ``analytics`` and
    ``dvc remote add -d local REMOTE`` if given: what those commands run (``Repo.init``, edits of the repository's
    config), run by DVC in this process instead of one ``python -m dvc`` (~1 CPU-s of imports) each."""
    from components.data.versioning import quiet_dvc

    with quiet_dvc():
        from dvc.repo import Repo

        Repo.init(str(repo), no_scm=no_scm).close()
    if not analytics or remote is not None:
        dvc_config(repo, {"core": {"analytics": "false"}} if not analytics else {}, remote)
    return repo


def dvc_config(repo: Path, sections: dict, remote: Path | None = None) -> None:
    """Set ``sections`` ({section: {option: value}}) in the repository's DVC config (``dvc config``), and add
    ``remote`` as the default remote ``local`` (``dvc remote add -d local REMOTE``)."""
    from components.data.versioning import quiet_dvc

    with quiet_dvc():
        from dvc.config import Config

        with Config(dvc_dir=str(repo / ".dvc")).edit() as conf:
            for section, options in sections.items():
                conf[section].update(options)
            if remote is not None:
                conf["remote"]["local"] = {"url": str(remote)}
                conf["core"]["remote"] = "local"


# A world small enough that a whole flow run (train, validate, unlearn, evaluate,
# register) takes seconds; gate thresholds this tiny setup meets.
FLOW_PARAMS = {
    "world.n_subjects": 6,
    "world.n_holdout_subjects": 2,
    "world.facts_per_subject": 8,
    "request": "data/requests/tiny-request.json",
    "unlearn.steps": 12,
    "unlearn.batch_size": 4,
    "unlearn.checkpoint_every": 4,
    "eval.max_new_tokens": 8,
    "eval.verbmem_prefix_tokens": 16,
    "gate.min_forget_quality": None,
    # the tiny flow world (6 authors, 2 held out) is too small to calibrate on: orchestration tests run NPO for a
    # fixed 12 steps (as before the calibrated defaults) and gate on the ratios only
    "unlearn.forget_loss": "npo",
    "unlearn.gamma": 0.1,  # the NPO-era rate these 12 steps were sized for (the shipped match + stop uses 0.03)
    "unlearn.stop.rule": "none",
    "gate.min_forget_holdout_ks_p": None,
    "gate.max_forget_holdout_auc_gap": None,
    "gate.max_forget_prob_ratio": 0.5,
    "gate.min_utility_ratio": 0.5,
    "flow.retries": 0,
    "flow.retry_delay_seconds": 0,
    "flow.lock_timeout_seconds": 600,
}


def tiny_subjects() -> list[str]:
    """Subjects of the tiny flow world (seed 0, 6 authors)."""
    from components.data.demo_world import generate_world

    world, _ = generate_world(seed=0, n_subjects=6, n_holdout_subjects=2, facts_per_subject=8)
    return list(dict.fromkeys(record.subject for record in world))


def request_json(request_id: str, subjects: list[str], **extra) -> str:
    import json

    return json.dumps({"request_id": request_id, "received_at": "2026-11-28T09:00:00Z",
                       "subjects": subjects, **extra})


def make_flow_repo(repo: Path, overrides: dict | None = None, mlflow_db: Path | None = None) -> Path:
    """A pipeline repository on the tiny flow world, with a local DVC remote and a migrated MLflow DB."""
    make_pipeline_repo(repo, {**FLOW_PARAMS, **(overrides or {})})
    (repo / "data" / "requests" / "tiny-request.json").write_text(request_json("tiny-0001", [tiny_subjects()[1]]))
    dvc_config(repo, {}, remote=repo.parent / f"{repo.name}-remote")
    if mlflow_db is not None:
        shutil.copyfile(mlflow_db, repo / "mlflow.db")
    return repo
