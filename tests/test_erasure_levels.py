"""What a certificate records for the checks of later batches (issue 21): the forget probability its own
request's records were erased to (the gate's ``max_earlier_regain_ratio``, on by default) and the local
copies removed before it was issued (``retention.local_copies_removed``)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from components.artifacts import Certificate
from components.config import Config, load_config
from components.erasure.certificates import issue_certificate, load_certificate
from components.erasure.ledger import certified_requests
from components.paths import PARAMS_FILE, Paths
from components.gate import evaluate_gate
from test_certificates import evidence
from test_gate import only, with_levels

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- the level each request was erased to


def test_the_regain_bound_is_on_by_default_in_both_profiles():
    for params in (ROOT / PARAMS_FILE, ROOT / "pretrained" / PARAMS_FILE):
        assert load_config(params).gate.max_earlier_regain_ratio == 2.0, params


def test_the_default_regain_bound_passes_a_first_batch_and_a_one_record_request_near_its_level():
    default = only(max_earlier_regain_ratio=load_config(ROOT / PARAMS_FILE).gate.max_earlier_regain_ratio)
    first = evaluate_gate(with_levels({}, {}), default)
    assert first.passed and "no earlier requests" in first.checks[0].reason
    assert evaluate_gate(with_levels({"req-one": 0.3}, {"req-one": 0.25}), default).passed
    comes_back = evaluate_gate(with_levels({"req-one": 0.45}, {"req-one": 0.05}), default)
    assert not comes_back.passed and comes_back.checks[0].value == pytest.approx(9.0)


def test_a_certificate_records_its_own_requests_level_and_the_ledger_bounds_later_batches_by_it(tmp_path):
    issue_certificate(tmp_path, evidence("req-1", request_forget_prob=0.03))
    assert load_certificate(tmp_path, "req-1")["evidence"]["request_forget_prob"] == 0.03
    assert certified_requests(tmp_path)["req-1"].erased_forget_prob == 0.03, "its own records, not the batch's 0.1"
    assert "records alone: unlearned forget_prob 0.03" in Paths(tmp_path).rendering(
        Paths(tmp_path).certificate("req-1")).read_text()


def test_a_certificate_without_its_own_level_is_bounded_by_its_batchs(tmp_path):
    issue_certificate(tmp_path, evidence("req-1"))
    assert certified_requests(tmp_path)["req-1"].erased_forget_prob == 0.1  # sample_metrics' unlearned forget_prob
    stored = load_certificate(tmp_path, "req-1")
    del stored["evidence"]["request_forget_prob"]  # as issued before the field existed
    assert Certificate.model_validate(stored).evidence.request_forget_prob is None


def test_each_requests_level_is_the_mean_of_its_own_records_per_item_probabilities(tmp_path):
    from components.evaluation.reports import per_item_means
    from components.paths import ReportFiles

    files = ReportFiles(tmp_path)
    files.per_item.mkdir()
    with files.per_item_file("unlearned", "forget").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerows([["record_id", "kind", "prob"], ["a1", "qa", "0.1"], ["a2", "qa", "0.3"], ["b1", "qa", ""]])
    groups = {"req-a": ["a1", "a2"], "req-b": ["b1"]}
    means = per_item_means(files, "unlearned", "forget", "prob", groups)
    assert means == {"req-a": pytest.approx(0.2), "req-b": None}
    assert per_item_means(files, "oracle", "forget", "prob", groups) == {"req-a": None, "req-b": None}


# --------------------------------------------------------------------------- local copies removed before the certificate


def _copies(root: Path) -> Paths:
    repo = Paths(root)
    for batch in ("batch-a", "batch-b"):
        for part in ("data", "models", "checkpoints", "reports"):
            (repo.batch("runs", batch).root / part).mkdir(parents=True)
            (repo.batch("runs", batch).root / part / "x").write_text("x")
    repo.champion.mkdir(parents=True)
    (repo.champion / "model.safetensors").write_text("weights")
    return repo


def test_the_copies_outside_the_batchs_own_folder_are_removed_and_named(tmp_path):
    from components.erasure.record import purge_older_copies

    repo = _copies(tmp_path)
    own = repo.batch("runs", "batch-b")
    removed = purge_older_copies(Config(), repo, own)
    assert sorted(removed) == ["models/champion", "runs/batch-a/checkpoints", "runs/batch-a/data",
                               "runs/batch-a/models"]
    assert all((own.root / part).exists() for part in ("data", "models", "checkpoints", "reports"))
    assert (repo.batch("runs", "batch-a").root / "reports").exists() and not repo.champion.exists()


def test_retention_keep_removes_no_copy(tmp_path):
    from components.erasure.record import purge_older_copies

    repo = _copies(tmp_path)
    keep = Config().with_overrides({"registry.retention": "keep"})
    assert purge_older_copies(keep, repo, repo.batch("runs", "batch-b")) == [] and repo.champion.exists()


@pytest.mark.slow
def test_a_second_batchs_certificate_names_the_previous_champions_copy_and_its_gate_bounds_the_first(
        tmp_path, prefect_server, migrated_mlflow_db, seed_target):
    """Through the flow (stubbed training): batch 2 starts from the downloaded champion, which still holds
    request 2's records; it is removed before request 2's certificate, which says so. Batch 2's gate re-checks
    request 1 against the level its certificate recorded, with the shipped regain bound."""
    from components.artifacts import GateDecision
    from flows.pipeline import process_requests
    from pipeline_repo import make_flow_repo, request_json, tiny_subjects
    from stub_stages import stubbed_stages

    repo = make_flow_repo(tmp_path / "repo", {"flow.max_batch_requests": 1}, mlflow_db=migrated_mlflow_db)
    seed_target(repo)
    paths = Paths(repo)
    paths.inbox.mkdir(parents=True)
    (paths.inbox / "req-1.json").write_text(request_json("req-1", [tiny_subjects()[1]]))
    with stubbed_stages():
        first = process_requests(root=str(repo))
        (paths.inbox / "req-2.json").write_text(request_json("req-2", [tiny_subjects()[2]]))
        second = process_requests(root=str(repo))
    assert first["processed"] == ["req-1"] and second["processed"] == ["req-2"]
    assert load_certificate(repo, "req-1")["retention"]["local_copies_removed"] == [], "batch 1 started from the target"
    assert load_certificate(repo, "req-2")["retention"]["local_copies_removed"] == ["models/champion"]
    assert not paths.champion.exists()
    gate = GateDecision.load(paths.batch("runs", second["batch_id"]).gate)
    regain = [check for check in gate.checks if check.metric == "earlier_regain_ratio"]
    assert regain and regain[0].passed and regain[0].threshold == 2.0 and regain[0].value is not None
    assert json.loads((paths.processed / "req-2.result.json").read_text())["model_version"] == "2"
