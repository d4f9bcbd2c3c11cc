"""The effective configuration is derived once, in components.context: the DVC stages, the flow and the
torchrun children it launches run with the same configuration for the same params."""

from __future__ import annotations

from pathlib import Path

import yaml

from components.artifacts import PreparedSettings
from components.paths import Paths

ROOT = Path(__file__).resolve().parents[1]


def _repo(tmp_path: Path, **model: object) -> Path:
    """A pipeline folder: the repository's params.yaml with ``model`` settings, and a local model folder."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["model"].update(model)
    params.setdefault("eval", {}).setdefault("relearn", {})["lr"] = None
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (tmp_path / "mine").mkdir()
    return tmp_path


def test_stage_and_flow_entry_points_derive_the_same_configuration(tmp_path):
    from components.stages.__main__ import stage_context
    from flows.pipeline import flow_context

    repo = _repo(tmp_path, base="mine", max_length="auto")
    dvc = stage_context(repo / "params.yaml", repo)
    flow = flow_context(str(repo), "params.yaml")
    assert dvc.config == flow.config
    assert dvc.config.model.base == str((repo / "mine").resolve())  # a local folder, against the pipeline root
    assert dvc.config.eval.relearn.lr == dvc.config.finetune.lr  # null: the fine-tuning rate
    assert dvc.given.model.base == "mine" and dvc.given.eval.relearn.lr is None  # what MLflow records

    PreparedSettings(max_length=48).save(Paths(repo).settings)  # what prepare derived
    assert dvc.prepared().config == flow.prepared().config
    assert flow.prepared().config.model.max_length == 48


def test_a_torchrun_child_derives_the_flows_batch_configuration(tmp_path):
    """The flow hands its batch's processes the configuration as given (its overrides included); what
    they derive from it in the batch folder is what the flow's own batch context holds."""
    from components.stages.__main__ import stage_context
    from flows.launch import write_effective_params
    from flows.pipeline import flow_context

    repo = _repo(tmp_path, base="mine", max_length="auto")
    flow = flow_context(str(repo), "params.yaml", overrides={"unlearn.steps": 3, "eval.relearn.lr": None})
    batch = flow.at(Paths(repo).batch("runs", "batch-x"))
    PreparedSettings(max_length=40).save(batch.paths.settings)
    child = stage_context(write_effective_params(flow.given, batch.paths), batch.paths.root, config_root=repo)
    assert child.prepared().config == batch.prepared().config
    assert child.prepared().config.unlearn.steps == 3 and child.prepared().config.model.max_length == 40


def test_deriving_twice_changes_nothing(tmp_path):
    from components.config import load_config
    from components.context import run_context

    repo = _repo(tmp_path, base="mine")
    once = run_context(load_config(repo / "params.yaml"), Paths(repo))
    assert run_context(once.config, Paths(repo)).config == once.config
