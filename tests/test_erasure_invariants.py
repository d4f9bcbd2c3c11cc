"""An erasure, once made, is never undone (issue 21): an erased request cannot be cancelled, and
its records never return to a retain set, also when its result note is lost or its file still
waits in the inbox. Real files, real certificates, a real MLflow SQLite registry."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from components.config import Config
from components.data.inbox import Inbox, InboxError
from components.data.world import load_world
from components.erasure.certificates import ErasureEvidence, issue_certificate
from components.erasure.ledger import LedgerError, erased_forget_ids, registry_erasures
from components.paths import Paths
from flows.cli import app
from registry_fixtures import migrated_mlflow_db, sample_metrics, tiny_model_dir  # noqa: F401  (fixtures)

GATE = {"passed": True, "reasons": [], "checks": []}


def subject_of(index: int = 0) -> str:
    world = load_world(Config().world, Config().seed)
    return list(dict.fromkeys(record.subject for record in world.records))[index]


def forget_ids_of(subject: str) -> list[str]:
    world = load_world(Config().world, Config().seed)
    return [record.record_id for record in world.records if record.subject == subject]


def request_bytes(request_id: str, subject: str) -> bytes:
    return json.dumps({"request_id": request_id, "received_at": "2026-11-28T09:00:00Z",
                       "subjects": [subject]}).encode()


def certify(root: Path, request_id: str, data: bytes, forget_ids: list[str]) -> Path:
    """Issue the real certificate of an erasure of ``request_id`` (model version 1)."""
    return issue_certificate(root, ErasureEvidence(
        request_id=request_id, request_sha256=hashlib.sha256(data).hexdigest(), forget_ids=forget_ids,
        model_name="blur-test", model_version="1", weights_sha256="ab" * 32, metrics=sample_metrics(),
        gate=GATE, batch_id="batch-0123456789ab"))


@pytest.fixture
def inbox(tmp_path) -> Inbox:
    return Inbox(Paths(tmp_path))


def waiting(inbox: Inbox, request_id: str, subject: str, name: str | None = None) -> bytes:
    data = request_bytes(request_id, subject)
    (inbox.paths.inbox / (name or f"{request_id}.json")).write_bytes(data)
    return data


def blur(*args: str, root: Path):
    return CliRunner().invoke(app, [*args, "--root", str(root)])


# --------------------------------------------------------------------------- cancel


def test_cancel_refuses_a_request_whose_certificate_was_issued_while_its_file_still_waits(inbox):
    """The window between the certificates and the settle (or a `dvc move` that failed)."""
    subject = subject_of()
    data = waiting(inbox, "req-r", subject, name="jane-doe.json")
    certify(inbox.paths.root, "req-r", data, forget_ids_of(subject))
    with pytest.raises(InboxError, match="already erased"):
        inbox.cancel("req-r")
    assert (inbox.paths.inbox / "jane-doe.json").exists() and not list(inbox.cancelled.iterdir())


def test_blur_request_cancel_refuses_a_certified_request_with_a_clear_message(inbox):
    subject = subject_of()
    data = waiting(inbox, "req-r", subject)
    certify(inbox.paths.root, "req-r", data, forget_ids_of(subject))
    result = blur("request", "cancel", "req-r", root=inbox.paths.root)
    assert result.exit_code == 1 and "already erased" in result.output and "cannot be cancelled" in result.output
    assert inbox.files() == [inbox.paths.inbox / "req-r.json"]


def test_blur_status_shows_a_certified_request_still_waiting_once_as_erased_and_settling(inbox):
    """Its certificate was issued but its file did not move (a run died, or `dvc move` failed): `blur status`
    shows it once, as processed (erased) with its settle pending, never also as pending."""
    subject = subject_of()
    data = waiting(inbox, "req-r", subject)
    certify(inbox.paths.root, "req-r", data, forget_ids_of(subject))
    state = inbox.status()
    assert state["pending"] == [] and state["processed"] == ["req-r"] and state["settling"] == ["req-r"]
    from pipeline_repo import write_params

    write_params(inbox.paths.root, {})
    shown = blur("status", root=inbox.paths.root)
    assert shown.exit_code == 0, shown.output
    assert shown.output.count("req-r") == 1, shown.output
    assert "req-r (settling)" in shown.output


@pytest.fixture
def registry_root(tmp_path, migrated_mlflow_db, monkeypatch) -> Path:
    """A pipeline root with the embedded MLflow SQLite store (migrated)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    shutil.copyfile(migrated_mlflow_db, tmp_path / "mlflow.db")
    return tmp_path


def champion_erasing(root: Path, request_ids: str) -> None:
    """A registered version tagged with the requests it erased, and the serving alias on it
    (the run died after moving the alias, before issuing certificates)."""
    from components.registry import connect, tracking_store

    client = connect(tracking_store(root))
    experiment = client.create_experiment("blur-unlearning")
    run = client.create_run(experiment, tags={"gate": "passed", "batch_id": "batch-0123456789ab"})
    client.create_registered_model("blur-test")
    source = root / "model"
    source.mkdir()
    version = client.create_model_version("blur-test", str(source), run_id=run.info.run_id,
                                          tags={"requests": request_ids})
    client.set_registered_model_alias("blur-test", "champion", version.version)


def test_blur_request_cancel_refuses_a_request_the_champion_already_erased(registry_root):
    """The run took R, moved the alias to R's version and died before the certificates: only the registry
    says R is erased, and cancel reads no registry. What the run took is still on record (it stopped
    mid-batch), so cancel refuses R until the next run decides its batch."""
    inbox = Inbox(Paths(registry_root))
    waiting(inbox, "req-r", subject_of())
    inbox.take(claim=True)
    inbox.name_batch("batch-0123456789ab")
    champion_erasing(registry_root, "req-r,req-s")
    assert set(registry_erasures(registry_root)) == {"req-r", "req-s"}
    result = blur("request", "cancel", "req-r", root=registry_root)
    said = " ".join(result.output.split())
    assert result.exit_code == 1 and "was taken into batch batch-0123456789ab" in said and "blur process" in said
    assert inbox.files() == [inbox.paths.inbox / "req-r.json"]


def test_a_certificate_tag_on_a_run_counts_as_an_erasure(registry_root):
    from components.registry import connect, tracking_store

    client = connect(tracking_store(registry_root))
    run = client.create_run(client.create_experiment("blur-unlearning"))
    client.set_tag(run.info.run_id, "certificate.req-old", "ab" * 32)
    client.delete_run(run.info.run_id)  # a purged version's run keeps the tag
    assert "req-old" in registry_erasures(registry_root)


# --------------------------------------------------------------------------- the retain set


def test_a_lost_result_note_of_a_certified_request_blocks_the_earlier_requests(inbox):
    """Without the note the erased records are unknown: the next retain set cannot be built blind."""
    subject = subject_of()
    data = waiting(inbox, "req-r", subject)
    (pending,), _ = inbox.take()
    certify(inbox.paths.root, "req-r", data, forget_ids_of(subject))
    inbox.complete(pending, {"forget_ids": forget_ids_of(subject)})
    (inbox.paths.processed / "req-r.result.json").unlink()
    with pytest.raises(InboxError, match="req-r have a deletion certificate but no result file"):
        inbox.earlier()
    assert "req-r" in inbox.known_ids(), "its id stays taken"


def test_a_lost_result_note_is_recovered_from_the_request_file_and_its_certificate(inbox):
    subject = subject_of()
    data = waiting(inbox, "req-r", subject, name="jane-doe.json")
    (pending,), _ = inbox.take()
    certify(inbox.paths.root, "req-r", data, forget_ids_of(subject))
    inbox.complete(pending, {"forget_ids": forget_ids_of(subject)})
    (inbox.paths.processed / "req-r.result.json").unlink()
    assert erased_forget_ids(Config(), inbox.paths, inbox, registry=()) == {"req-r": forget_ids_of(subject)}


def test_a_certified_request_still_waiting_in_the_inbox_counts_as_erased(inbox):
    """The window between the certificates and the settle: a later batch's retain set leaves it out."""
    subject = subject_of()
    data = waiting(inbox, "req-r", subject)
    certify(inbox.paths.root, "req-r", data, forget_ids_of(subject))
    assert erased_forget_ids(Config(), inbox.paths, inbox, registry=()) == {"req-r": forget_ids_of(subject)}
    (valid,), invalid = inbox.take()
    assert valid.request_id == "req-r" and invalid == [], "taken, to be settled from its certificate"


def test_a_request_the_champion_erased_counts_as_erased_before_its_certificate(registry_root):
    subject = subject_of()
    inbox = Inbox(Paths(registry_root))
    waiting(inbox, "req-r", subject)
    champion_erasing(registry_root, "req-r")
    assert erased_forget_ids(Config(), inbox.paths, inbox) == {"req-r": forget_ids_of(subject)}


def test_an_erased_request_whose_note_and_file_are_both_gone_fails_closed(inbox):
    subject = subject_of()
    certify(inbox.paths.root, "req-r", request_bytes("req-r", subject), forget_ids_of(subject))
    with pytest.raises(LedgerError, match="req-r.*restore"):
        erased_forget_ids(Config(), inbox.paths, inbox, registry=())


def test_a_request_file_resolving_to_other_records_than_its_certificate_fails_closed(inbox):
    data = waiting(inbox, "req-r", subject_of(1))
    certify(inbox.paths.root, "req-r", data, forget_ids_of(subject_of(0)))
    with pytest.raises(LedgerError, match="other records than its certificate"):
        erased_forget_ids(Config(), inbox.paths, inbox, registry=())


# --------------------------------------------------------------------------- through the flow


@pytest.mark.slow
def test_a_certified_request_left_in_the_inbox_stays_erased_through_later_batches(
        tmp_path, prefect_server, migrated_mlflow_db, seed_target, monkeypatch):
    """Run 1 issues R's certificate, then its `dvc move` fails (another DVC command holds the lock).
    An older request S arrives and, with one request per batch, is taken before R: S's batch must
    keep R's records out of its retain set and re-check R. Run 3 settles R from its certificate
    instead of unlearning it again (which died on the stale certificate)."""
    from components.data import versioning
    from components.registry import connect, tracking_store
    from flows.pipeline import process_requests
    from pipeline_repo import make_flow_repo, request_json, tiny_subjects
    from stub_stages import stubbed_stages

    repo = make_flow_repo(tmp_path / "repo", {"flow.max_batch_requests": 1}, mlflow_db=migrated_mlflow_db)
    seed_target(repo)
    inbox = Inbox(Paths(repo))
    (inbox.paths.inbox / "jane-doe.json").write_text(request_json("req-r", [tiny_subjects()[1]]))

    def dvc_locked(self, pending, result):
        raise versioning.VersioningError("dvc move failed: Unable to acquire lock")

    with stubbed_stages():
        with monkeypatch.context() as patch:
            patch.setattr(Inbox, "complete", dvc_locked)
            with pytest.raises(Exception):
                process_requests(root=str(repo))
        assert (repo / "data" / "certificates" / "req-r.json").exists() and len(inbox.files()) == 1

        older = json.loads(request_json("req-s", [tiny_subjects()[2]]))
        older["received_at"] = "2026-11-01T09:00:00Z"
        (inbox.paths.inbox / "req-s.json").write_text(json.dumps(older))
        second = process_requests(root=str(repo))
        assert second["processed"] == ["req-s"]
        client = connect(tracking_store(repo))
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                  filter_string=f"tags.batch_id = '{second['batch_id']}'")
        assert "req-r" in runs[0].data.tags.get("earlier_requests", "").split(","), \
            "S's batch kept R out of its retain set and re-checked it"
        assert "unlearned.earlier.req-r.erased_forget_prob" in runs[0].data.metrics, "against its certified level"

        third = process_requests(root=str(repo))
    assert third["processed"] == ["req-r"] and inbox.files() == []
    result = json.loads((inbox.paths.processed / "req-r.result.json").read_text())
    assert result["model_version"] == "1" and len(result["forget_ids"]) > 0



@pytest.mark.slow
def test_a_request_the_champion_erased_is_settled_before_an_older_request_moves_the_alias(
        tmp_path, prefect_server, migrated_mlflow_db, seed_target, monkeypatch):
    """Found by tests/test_lifecycle_state_machine.py, here with every real component. Run 1's alias moves
    to R's version, then MLflow fails while its certificates are logged: R is erased only by the champion's
    `requests` tag. An older request S arrives; with one request per batch, S used to be taken alone, its
    version took the alias, and R's erasure vanished (`cancel R` succeeded). Run 2 finishes R first."""
    import flows.pipeline
    from prefect import task
    from prefect.cache_policies import NO_CACHE

    from flows.pipeline import process_requests
    from pipeline_repo import make_flow_repo, request_json, tiny_subjects
    from stub_stages import stubbed_stages

    repo = make_flow_repo(tmp_path / "repo", {"flow.max_batch_requests": 1, "flow.retries": 0},
                          mlflow_db=migrated_mlflow_db)
    seed_target(repo)
    inbox = Inbox(Paths(repo))
    (inbox.paths.inbox / "req-r.json").write_text(request_json("req-r", [tiny_subjects()[1]]))

    def mlflow_down(*args, **kwargs):
        raise ConnectionError("the MLflow server cannot be reached")

    with stubbed_stages():
        with monkeypatch.context() as patch:
            patch.setattr(flows.pipeline, "record_erasure", task(mlflow_down, name="record-erasure",
                                                                  cache_policy=NO_CACHE))
            with pytest.raises(Exception):
                process_requests(root=str(repo))
        assert "req-r" in registry_erasures(repo) and not (repo / "data" / "certificates" / "req-r.json").exists()
        with monkeypatch.context() as patch:  # cancel reads no registry: the stopped batch's record refuses it
            patch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
            refused = blur("request", "cancel", "req-r", root=repo)
        assert refused.exit_code == 1 and "was taken into batch" in " ".join(refused.output.split())

        older = json.loads(request_json("req-s", [tiny_subjects()[2]]))
        older["received_at"] = "2026-11-01T09:00:00Z"
        (inbox.paths.inbox / "req-s.json").write_text(json.dumps(older))
        assert process_requests(root=str(repo))["processed"] == ["req-r"], "R's batch is finished first"
        assert process_requests(root=str(repo))["processed"] == ["req-s"]
    assert "req-r" in registry_erasures(repo) and inbox.files() == []
    result = blur("request", "cancel", "req-r", root=repo)
    assert result.exit_code == 1 and "already erased" in result.output

# --------------------------------------------------------------------------- the earlier-requests check


def test_an_earlier_request_with_an_empty_forget_file_is_reported_not_skipped(tmp_path):
    from components.stages.prepare import load_earlier

    paths = Paths(tmp_path)
    paths.earlier.mkdir(parents=True)
    paths.earlier_forget("req-empty").write_text("")
    with pytest.raises(ValueError, match="req-empty.*cannot re-check"):
        load_earlier(paths)


def test_prepare_refuses_an_earlier_request_whose_records_are_not_in_the_world(tmp_path):
    from components.stages import prepare

    config = Config().with_overrides({"world.n_subjects": 6, "world.n_holdout_subjects": 2,
                                      "world.facts_per_subject": 8, "model.tokenizer.vocab_size": 400})
    subject = list(dict.fromkeys(r.subject for r in load_world(config.world, config.seed).records))[0]
    with pytest.raises(ValueError, match="req-gone"):
        prepare(config, Paths(tmp_path), request_data=[request_bytes("req-1", subject)],
                earlier={"req-gone": ["0000000000000000"]})


# --------------------------------------------------------------------------- dvc repro


def test_a_reproduction_must_cover_a_certified_request_whose_result_note_was_lost(registry_root, tiny_model_dir):
    """`dvc repro`'s register reads the erased requests from the ledger, not only processed/: a
    reproduction that never forgot R (its note deleted, its certificate kept) is not promoted."""
    import shutil as sh

    from components.artifacts import Metrics
    from components.stages import prepare
    from components.stages.register import register
    from registry_fixtures import sample_diagnostics

    config = Config().with_overrides({"world.n_subjects": 6, "world.n_holdout_subjects": 2,
                                      "world.facts_per_subject": 8, "model.tokenizer.vocab_size": 400,
                                      "registry.model_name": "blur-test"})
    world = load_world(config.world, config.seed).records
    subjects = list(dict.fromkeys(r.subject for r in world))
    erased_ids = [r.record_id for r in world if r.subject == subjects[1]]
    paths = Paths(registry_root)
    inbox = Inbox(paths)
    data = waiting(inbox, "req-r", subjects[1])
    (pending,), _ = inbox.take()
    certify(registry_root, "req-r", data, erased_ids)
    inbox.complete(pending, {"forget_ids": erased_ids})
    (paths.processed / "req-r.result.json").unlink()  # the note is lost; the certificate and the file stay

    prepare(config, paths, request_data=[request_bytes("req-s", subjects[0])])  # the reproduction's request only
    paths.reports.mkdir(parents=True, exist_ok=True)
    paths.unlearn_log.parent.mkdir(parents=True, exist_ok=True)
    paths.unlearn_log.write_text("".join(json.dumps(row) + "\n" for row in sample_diagnostics(3)))
    Metrics.parse(sample_metrics()).save(paths.metrics)
    sh.copytree(tiny_model_dir, paths.unlearned)
    decision = register(config, paths)
    assert not decision.passed and any("req-r" in reason for reason in decision.reasons)
