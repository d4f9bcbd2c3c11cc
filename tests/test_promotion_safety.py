"""Promotion that cannot go wrong on a retry or a race (issue 13), on a real MLflow store.

A retry of the register step resumes the batch's run (one run, one version, the alias moved
once); the alias moves only if it still points where the run read it (compare and set); a
reproduction serves only if it forgot every processed request.
"""

from __future__ import annotations

from functools import partial

import pytest

from components.registry import (
    AliasMovedError,
    Candidate,
    RegistryError,
    TrackingUnavailableError,
    champion_version,
    register_candidate,
)
from registry_fixtures import (  # noqa: F401  (fixtures)
    migrated_mlflow_db,
    mlflow_store,
    register_sample,
    registry_config,
    sample_diagnostics,
    sample_metrics,
    sample_summary,
    tiny_model_dir,
)

pytestmark = pytest.mark.usefixtures("undrawn_plots")  # the registry's bookkeeping, not its pictures

MODEL = "blur-test"
GATE = {"min_forget_quality": 0.05, "max_forget_prob_ratio": 0.5}


register = partial(register_sample, gate=GATE)


def candidate(model_dir, request_id="req-0001", **summary) -> Candidate:
    return Candidate(sample_metrics(), sample_diagnostics(), sample_summary(request_id, **summary), {}, model_dir)


def runs(store) -> list:
    client = store.client()
    return client.search_runs([client.get_experiment_by_name("blur-unlearning").experiment_id])


def versions(store) -> list[str]:
    return sorted(str(v.version) for v in store.client().search_model_versions(f"name='{MODEL}'"))


def crash_after(monkeypatch, method: str):
    """Make ``MlflowClient.<method>`` do its work and then lose the connection (once)."""
    from mlflow import MlflowClient

    original = getattr(MlflowClient, method)

    def works_then_fails(self, *args, **kwargs):
        original(self, *args, **kwargs)
        monkeypatch.setattr(MlflowClient, method, original)
        raise ConnectionError(f"connection lost after {method}")

    monkeypatch.setattr(MlflowClient, method, works_then_fails)


# --------------------------------------------------------------------------- idempotent per batch


@pytest.mark.parametrize("crash", ["create_model_version", "set_registered_model_alias", "log_artifacts"])
def test_a_retry_after_a_crash_finishes_the_same_run_with_one_version_and_one_alias_move(
        mlflow_store, tiny_model_dir, tmp_path, monkeypatch, crash):
    crash_after(monkeypatch, crash)
    with pytest.raises(TrackingUnavailableError):
        register(mlflow_store, tiny_model_dir, tmp_path / "r1", batch_id="batch-0123abcd")
    first_run = runs(mlflow_store)[0]
    assert first_run.info.status == "FAILED"

    decision = register(mlflow_store, tiny_model_dir, tmp_path / "r2", batch_id="batch-0123abcd")
    assert [r.info.run_id for r in runs(mlflow_store)] == [first_run.info.run_id]  # no second run
    assert versions(mlflow_store) == ["1"]  # no second version
    assert decision.passed and (decision.run_id, decision.version) == (first_run.info.run_id, "1")
    assert champion_version(mlflow_store.client(), MODEL, "champion") == "1"
    run = mlflow_store.client().get_run(decision.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["batch_id"] == "batch-0123abcd"
    assert run.data.tags["register.done"].split(",")[-1] == "alias"
    assert (tmp_path / "r2" / "gate.json").exists()


def test_a_retry_after_a_finished_registration_changes_nothing_and_moves_no_alias(
        mlflow_store, tiny_model_dir, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    first = register(mlflow_store, tiny_model_dir, tmp_path / "r1", batch_id="batch-0123abcd")
    moves = []
    original = MlflowClient.set_registered_model_alias
    monkeypatch.setattr(MlflowClient, "set_registered_model_alias",
                        lambda self, *a, **kw: (moves.append(a), original(self, *a, **kw))[1])
    again = register(mlflow_store, tiny_model_dir, tmp_path / "r2", batch_id="batch-0123abcd")
    assert (again.run_id, again.version, again.passed) == (first.run_id, first.version, True)
    assert moves == [] and len(runs(mlflow_store)) == 1 and versions(mlflow_store) == ["1"]


def test_a_batch_retried_after_its_gate_failed_gets_a_new_run_only_if_the_verdict_changes(
        mlflow_store, tiny_model_dir, tmp_path):
    def attempt(reports, **gate):
        return register_candidate(registry_config(**gate), candidate(tiny_model_dir), tmp_path / reports,
                                  store=mlflow_store, batch_id="batch-a")

    failed = attempt("r1", min_forget_quality=0.9)  # 0.4 < 0.9
    again = attempt("r2", min_forget_quality=0.9)
    assert not again.passed and again.run_id == failed.run_id and len(runs(mlflow_store)) == 1
    passed = attempt("r3", **GATE)  # thresholds relaxed by a reviewer, then `blur request retry`
    assert passed.passed and passed.run_id != failed.run_id and passed.version == "1"
    assert champion_version(mlflow_store.client(), MODEL, "champion") == "1"


def test_different_batches_get_their_own_runs_and_versions(mlflow_store, tiny_model_dir, tmp_path):
    register(mlflow_store, tiny_model_dir, tmp_path / "r1", batch_id="batch-a")
    second = register(mlflow_store, tiny_model_dir, tmp_path / "r2", batch_id="batch-b", request_id="req-0002")
    assert len(runs(mlflow_store)) == 2 and versions(mlflow_store) == ["1", "2"] and second.version == "2"


def test_a_batch_id_that_cannot_go_into_a_search_filter_is_refused(mlflow_store, tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="batch_id"):
        register(mlflow_store, tiny_model_dir, tmp_path / "r", batch_id="x' OR '1'='1")


# --------------------------------------------------------------------------- compare and set


def test_the_alias_is_not_moved_if_another_run_promoted_meanwhile(mlflow_store, tiny_model_dir, tmp_path,
                                                                   monkeypatch):
    from mlflow import MlflowClient

    first = register(mlflow_store, tiny_model_dir, tmp_path / "r1", batch_id="batch-a")
    client = mlflow_store.client()
    source = client.get_model_version(MODEL, first.version).source
    original = MlflowClient.set_terminated

    def another_run_promotes(self, run_id, status=None, *args, **kwargs):
        original(self, run_id, status, *args, **kwargs)
        if status == "FINISHED":  # after this run read the alias, before it moves it
            monkeypatch.setattr(MlflowClient, "set_terminated", original)
            other = client.create_model_version(MODEL, source=source, run_id=first.run_id)
            client.set_registered_model_alias(MODEL, "champion", other.version)

    monkeypatch.setattr(MlflowClient, "set_terminated", another_run_promotes)
    with pytest.raises(AliasMovedError) as caught:
        register(mlflow_store, tiny_model_dir, tmp_path / "r2", batch_id="batch-b", request_id="req-0002")
    message = str(caught.value)
    # this run registered version 2; the other run then registered version 3 and promoted it
    assert "moved from version 1 to version 3" in message and "version 2 is registered but not promoted" in message
    assert champion_version(client, MODEL, "champion") == "3"  # the other run's promotion stands
    assert not (tmp_path / "r2" / "gate.json").exists()


# --------------------------------------------------------------------------- reproductions


def test_a_reproduction_that_did_not_forget_a_processed_request_never_moves_the_alias(
        mlflow_store, tiny_model_dir, tmp_path):
    first = register(mlflow_store, tiny_model_dir, tmp_path / "r1", batch_id="batch-a")
    processed = {"req-0001": ["0123456789abcdef", "fedcba9876543210"], "req-later": ["00000000000000aa"]}
    decision = register(mlflow_store, tiny_model_dir, tmp_path / "r2", processed=processed)
    assert not decision.passed and decision.version is None
    assert champion_version(mlflow_store.client(), MODEL, "champion") == first.version
    [reason] = decision.reasons
    assert "1 processed request(s) not forgotten by this reproduction: req-later" in reason
    assert versions(mlflow_store) == ["1"]


def test_a_reproduction_whose_forget_set_covers_every_processed_request_may_serve(
        mlflow_store, tiny_model_dir, tmp_path):
    processed = {"req-old": ["0123456789abcdef"], "req-0001": ["fedcba9876543210"]}  # records of sample_summary
    decision = register(mlflow_store, tiny_model_dir, tmp_path / "r", processed=processed)
    assert decision.passed and champion_version(mlflow_store.client(), MODEL, "champion") == decision.version


def test_a_reproduction_not_told_what_was_processed_fails_closed(mlflow_store, tiny_model_dir, tmp_path):
    decision = register(mlflow_store, tiny_model_dir, tmp_path / "r", processed=None)
    assert not decision.passed and "processed requests were not given" in decision.reasons[0]
    assert champion_version(mlflow_store.client(), MODEL, "champion") is None


def test_a_flow_batch_covers_the_requests_it_resolved_and_re_checked(mlflow_store, tiny_model_dir, tmp_path):
    processed = {"req-earlier": ["00000000000000aa"], "req-0001": ["0123456789abcdef"]}
    decision = register(mlflow_store, tiny_model_dir, tmp_path / "r", batch_id="batch-a", processed=processed,
                        summary=sample_summary(earlier_requests=["req-earlier"]))
    assert decision.passed
    missed = register(mlflow_store, tiny_model_dir, tmp_path / "r2", batch_id="batch-b",
                      processed=processed | {"req-lost": ["00000000000000bb"]},
                      summary=sample_summary("req-0002", earlier_requests=["req-earlier"]))
    # req-0001's record is in this batch's forget set too; req-lost is neither resolved nor forgotten
    assert not missed.passed and "1 processed request(s) not forgotten by this batch: req-lost" in missed.reasons[0]


# --------------------------------------------------------------------------- errors name the part


def test_an_error_names_the_part_that_failed_and_marks_the_run_failed(mlflow_store, tiny_model_dir, tmp_path,
                                                                        monkeypatch):
    import components.registry.promotion as promotion

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(promotion, "save_plots", broken)
    with pytest.raises(RegistryError, match=r"while logging the plots .* OSError: disk full\. Nothing was promoted"):
        register(mlflow_store, tiny_model_dir, tmp_path / "r", batch_id="batch-a")
    [run] = runs(mlflow_store)
    assert run.info.status == "FAILED" and run.data.tags["register.failed_at"] == "plots"
    assert run.data.tags["register.done"] == "record"


def test_the_report_shows_the_earlier_request_check_and_its_worst_request(mlflow_store, tiny_model_dir, tmp_path):
    register(mlflow_store, tiny_model_dir, tmp_path / "r", batch_id="batch-a")
    report = (tmp_path / "r" / "run_report.md").read_text()
    assert ("| gate.max_earlier_forget_prob_ratio | earlier_forget_prob_ratio | oracle-free | <= | 0.5 | 0.09333 | pass |"
            in report)
    assert "- worst: earlier request req-earlier" in report


# --------------------------------------------------------------------------- the register stage (dvc repro)


@pytest.fixture
def stage_root(tmp_path, migrated_mlflow_db, tiny_model_dir, monkeypatch):
    """A pipeline folder after `evaluate`: metrics, the step log, the resolution, the unlearned model."""
    import json
    import shutil

    import yaml

    from components.paths import Paths

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    root = tmp_path / "repo"
    paths = Paths(root)
    paths.reports.mkdir(parents=True)
    paths.prepared.mkdir(parents=True)
    (paths.reports / "metrics.json").write_text(json.dumps(sample_metrics()))
    (paths.reports / "unlearn_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sample_diagnostics()))
    sample_summary().save(paths.resolution)
    shutil.copytree(tiny_model_dir, paths.unlearned)
    shutil.copyfile(migrated_mlflow_db, root / "mlflow.db")
    (root / "params.yaml").write_text(yaml.safe_dump(registry_config(**GATE).model_dump(mode="json")))
    return root


def test_the_register_command_of_a_reproduction_reads_the_processed_requests_and_may_promote(stage_root):
    import json

    from typer.testing import CliRunner

    from components.registry import champion, tracking_store
    from components.stages.__main__ import cli

    result = CliRunner().invoke(cli, ["register", "--params", str(stage_root / "params.yaml"),
                                      "--root", str(stage_root)])  # what dvc.yaml runs; nothing processed yet
    assert result.exit_code == 0, result.output
    gate = json.loads((stage_root / "reports" / "gate.json").read_text())
    assert gate["passed"] and gate["checks"][-1]["metric"] == "uncovered_processed_requests"
    assert champion(MODEL, store=tracking_store(stage_root), download=False).version == gate["version"]


def test_the_register_command_refuses_a_reproduction_that_misses_a_request_the_inbox_processed(stage_root):
    import json

    from typer.testing import CliRunner

    from components.data.inbox import RESULT_SUFFIX
    from components.paths import Paths
    from components.registry import champion, tracking_store
    from components.stages.__main__ import cli

    processed = Paths(stage_root).processed  # what the flow's settle leaves for a processed request
    processed.mkdir(parents=True)
    (processed / f"req-done{RESULT_SUFFIX}").write_text(json.dumps({"request_id": "req-done",
                                                                     "forget_ids": ["00000000000000aa"]}))
    result = CliRunner().invoke(cli, ["register", "--params", str(stage_root / "params.yaml"), "--root", str(stage_root)])
    assert result.exit_code == 0, result.output
    assert "gate FAILED" in result.output and "req-done" in result.output
    assert champion(MODEL, store=tracking_store(stage_root), download=False) is None


def test_the_register_stage_refuses_a_reproduction_that_misses_a_processed_request(stage_root):
    from components import stages
    from components.paths import Paths
    from components.registry import champion, tracking_store

    gate = stages.register(registry_config(**GATE), Paths(stage_root), processed_requests={"req-x": ["0000aaaa"]})
    assert not gate["passed"] and "req-x" in gate["reasons"][0]
    assert champion(MODEL, store=tracking_store(stage_root), download=False) is None
