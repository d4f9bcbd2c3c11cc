"""The register step against a real MLflow store (SQLite in a temporary folder)."""

from __future__ import annotations

import json
import random
import socket
from functools import partial

import pytest

from pydantic import ValidationError

from components.artifacts import Resolution
from components.config import GateConfig
from components.registry import (
    Candidate,
    RegistryError,
    TrackingStore,
    TrackingUnavailableError,
    champion,
    champion_version,
    register_candidate,
    tracking_store,
)
from components.gate import evaluate_gate
from registry_fixtures import (  # noqa: F401  (fixtures)
    draw_gate_case,
    expected_gate_pass,
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
PASSING_GATE = {"min_forget_quality": 0.05, "max_forget_prob_ratio": 0.5}
MD5 = "0123456789abcdef0123456789abcdef"


# a reproduction with no processed requests yet (so it may serve) unless ``tags`` name a batch
register = partial(register_sample, gate=PASSING_GATE, dvc_hashes={"req-0001": MD5}, processed={})


def failing_metrics():
    return sample_metrics(forget_quality=0.001)  # below min_forget_quality=0.05


def test_passing_candidate_becomes_a_version_with_the_alias_and_metrics_in_its_description(
        mlflow_store, tiny_model_dir, tmp_path):
    decision = register(mlflow_store, tiny_model_dir, tmp_path / "reports")
    client = mlflow_store.client()
    assert decision.passed and decision.version == "1" and decision.alias == "champion"
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "1"
    version = client.get_model_version(MODEL, "1")
    assert version.run_id == decision.run_id
    assert version.tags["gate"] == "passed"
    assert "forget_quality" in version.description and "req-0001" in version.description
    assert "| forget_prob | 0.8 | 0.05 | 0.1 |" in version.description


def test_next_passing_candidate_moves_the_alias_to_its_new_version(mlflow_store, tiny_model_dir, tmp_path):
    register(mlflow_store, tiny_model_dir, tmp_path / "r1")
    second = register(mlflow_store, tiny_model_dir, tmp_path / "r2")
    assert second.version == "2"
    assert champion_version(mlflow_store.client(), MODEL, "champion") == "2"


def test_failing_candidate_leaves_the_alias_and_is_recorded_with_gate_failed(mlflow_store, tiny_model_dir,
                                                                             tmp_path):
    first = register(mlflow_store, tiny_model_dir, tmp_path / "r1")
    failed = register(mlflow_store, tiny_model_dir, tmp_path / "r2", metrics=failing_metrics())
    client = mlflow_store.client()
    assert not failed.passed and failed.version is None and failed.alias is None
    assert failed.champion_version == first.version
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == first.version
    assert [str(v.version) for v in client.search_model_versions(f"name='{MODEL}'")] == ["1"]  # not registered
    run = client.get_run(failed.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["gate"] == "failed"
    assert "forget_quality 0.001 < 0.05" in run.data.tags["gate.reasons"]
    model_id = run.outputs.model_outputs[0].model_id
    assert client.get_logged_model(model_id).tags["gate"] == "failed"  # the candidate is kept for review
    report = (tmp_path / "r2" / "run_report.md").read_text()
    assert "**FAILED**" in report and "forget_quality 0.001 < 0.05" in report


def test_failing_first_candidate_creates_no_registered_model(mlflow_store, tiny_model_dir, tmp_path):
    register(mlflow_store, tiny_model_dir, tmp_path / "r", metrics=failing_metrics())
    assert champion_version(mlflow_store.client(), MODEL, "champion") is None


@pytest.mark.parametrize("passing", [True, False], ids=["passed", "failed"])
def test_gate_json_has_the_documented_shape(mlflow_store, tiny_model_dir, tmp_path, passing):
    register(mlflow_store, tiny_model_dir, tmp_path / "reports",
             metrics=None if passing else failing_metrics())
    data = json.loads((tmp_path / "reports" / "gate.json").read_text())
    assert {"passed", "checks", "model_name", "version", "alias"} <= set(data)
    assert data["passed"] is passing and data["model_name"] == MODEL
    assert (data["version"], data["alias"]) == (("1", "champion") if passing else (None, None))
    assert [c["metric"] for c in data["checks"]] == ["forget_quality", "forget_prob_ratio",
                                                     "earlier_forget_prob_ratio", "uncovered_processed_requests"]
    for check in data["checks"]:
        assert set(check) >= {"metric", "op", "threshold", "value", "passed"}


@pytest.mark.drawn_plots
def test_run_holds_params_tags_step_diagnostics_metrics_and_artifacts(mlflow_store, tiny_model_dir, tmp_path):
    from mlflow.entities import LoggedModelStatus
    from PIL import Image

    decision = register(mlflow_store, tiny_model_dir, tmp_path / "reports")
    client = mlflow_store.client()
    run = client.get_run(decision.run_id)
    params, tags, metrics = run.data.params, run.data.tags, run.data.metrics
    assert params["unlearn.combiner"] == "blur" and params["gate.min_forget_quality"] == "0.05"
    assert params["request.n_forget"] == "2" and params["request.forget_digest"] == "00112233445566ff"
    assert tags["requests"] == "req-0001"
    assert tags["request.req-0001.dvc_md5"] == MD5
    assert tags["request.req-0001.request_hash"] == "a1b2c3d4e5f60718"
    assert metrics["unlearned.forget_prob"] == 0.1 and metrics["target.forget_prob"] == 0.8
    assert metrics["unlearned.earlier.req-earlier.forget_prob"] == 0.07
    xi = client.get_metric_history(decision.run_id, "unlearn.xi")
    assert [m.step for m in sorted(xi, key=lambda m: m.step)] == list(range(1, 13))
    listed = {a.path for a in client.list_artifacts(decision.run_id)}
    assert {"run_report.md", "gate.json", "requests.json", "plots", "diagnostics"} <= listed
    for name in ("training_curves.png", "xi.png", "forget_vs_retain.png"):
        png = client.download_artifacts(decision.run_id, f"plots/{name}", str(tmp_path / "dl"))
        assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
        assert Image.open(png).size[0] >= 300  # drawn, not the bookkeeping tests' 1-pixel stand-in
    model_id = run.outputs.model_outputs[0].model_id
    assert str(client.get_logged_model(model_id).status) == str(LoggedModelStatus.READY)


def test_diagnostics_are_logged_in_batches_not_one_call_per_value(mlflow_store, tiny_model_dir, tmp_path,
                                                                  monkeypatch):
    from mlflow import MlflowClient

    batches, singles = [], []
    original = MlflowClient.log_batch
    monkeypatch.setattr(MlflowClient, "log_batch",
                        lambda self, run_id, metrics=(), **kw: (batches.append(len(metrics)),
                                                                 original(self, run_id, metrics=metrics, **kw))[1])
    monkeypatch.setattr(MlflowClient, "log_metric", lambda *a, **kw: singles.append(a))
    config = registry_config(**PASSING_GATE)
    candidate = Candidate(sample_metrics(), sample_diagnostics(250), sample_summary(), {}, tiny_model_dir)
    register_candidate(config, candidate, tmp_path / "reports", store=mlflow_store, processed_requests={})
    assert singles == []
    assert [n for n in batches if n] [:3] == [1000, 1000, 250]  # 250 steps x 9 values


def test_champion_round_trip_loads_with_auto_model(mlflow_store, tiny_model_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    decision = register(mlflow_store, tiny_model_dir, tmp_path / "reports")
    found = champion(MODEL, "champion", store=mlflow_store, dst=tmp_path / "champion")
    assert (found.version, found.run_id) == (decision.version, decision.run_id)
    loaded = AutoModelForCausalLM.from_pretrained(found.model_dir)
    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    for (name, value), (_, expected) in zip(loaded.state_dict().items(), original.state_dict().items()):
        assert torch.equal(value, expected), name
    tokenizer = AutoTokenizer.from_pretrained(found.model_dir)
    assert tokenizer.decode(tokenizer.encode("the river", add_special_tokens=False)) == "the river"


def test_champion_download_replaces_an_earlier_download(mlflow_store, tiny_model_dir, tmp_path):
    register(mlflow_store, tiny_model_dir, tmp_path / "reports")
    champion(MODEL, store=mlflow_store, dst=tmp_path / "champion")
    (tmp_path / "champion" / "stale.txt").write_text("old")
    found = champion(MODEL, store=mlflow_store, dst=tmp_path / "champion")
    assert found.model_dir.is_dir() and not (tmp_path / "champion" / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".champion")] == []  # no staging left


def test_champion_lookup_without_download_gives_version_and_run_only(mlflow_store, tiny_model_dir, tmp_path):
    decision = register(mlflow_store, tiny_model_dir, tmp_path / "reports", tags={"batch_id": "b-7"})
    found = champion(MODEL, store=mlflow_store, download=False)
    assert found == (decision.version, decision.run_id, None)
    assert mlflow_store.client().get_run(decision.run_id).data.tags["batch_id"] == "b-7"


def test_champion_is_none_when_nothing_was_promoted(mlflow_store):
    assert champion(MODEL, "champion", store=mlflow_store) is None


def test_logged_model_loads_as_pyfunc_and_generates(mlflow_store, tiny_model_dir, tmp_path):
    import mlflow

    register(mlflow_store, tiny_model_dir, tmp_path / "reports")
    found = champion(MODEL, store=mlflow_store, dst=tmp_path / "champion")
    model = mlflow.pyfunc.load_model(str(tmp_path / "champion"), model_config={"max_new_tokens": 3})
    completions = model.predict(["The weather was", "Every morning"])
    assert len(completions) == 2 and all(isinstance(c, str) for c in completions)
    requirements = (tmp_path / "champion" / "requirements.txt").read_text()
    assert "transformers==" in requirements and "torch==" in requirements


@pytest.mark.parametrize("environment", ["unset", "set-to-another-store"])
def test_register_leaves_the_process_wide_tracking_uri_as_it_was(mlflow_store, tiny_model_dir, tmp_path,
                                                                  monkeypatch, environment):
    import os

    import mlflow

    if environment != "unset":
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/other.db")
    before = (mlflow.is_tracking_uri_set(), mlflow.get_tracking_uri(), os.environ.get("MLFLOW_TRACKING_URI"))
    register(mlflow_store, tiny_model_dir, tmp_path / "reports")
    after = (mlflow.is_tracking_uri_set(), mlflow.get_tracking_uri(), os.environ.get("MLFLOW_TRACKING_URI"))
    assert after == before
    assert not (tmp_path / "other.db").exists() and not (tmp_path / "mlflow.db").exists()


# --------------------------------------------------------------------------- privacy (issue 7 item 5)

PLANTED_SUBJECT = "Ottoline Vasquez-Brightwater"
PLANTED_QUESTION = "Which street did Ottoline Vasquez-Brightwater grow up on?"
PLANTED_ANSWER = "She grew up on Quillfeather Lane in Marrowby."


@pytest.mark.drawn_plots  # the drawn PNGs are searched too
def test_no_forget_text_reaches_the_store_the_artifacts_or_the_reports(mlflow_store, tiny_model_dir, tmp_path):
    from components.data.records import QARecord
    from components.data.requests import parse_request, resolve_request

    world = [QARecord(PLANTED_QUESTION, PLANTED_ANSWER, PLANTED_SUBJECT),
             QARecord("Where does Ottoline work?", "At the Marrowby observatory.", PLANTED_SUBJECT)]
    world += [QARecord(f"What is fact {i} about Bram Oyelaran?", f"Fact {i} is dull.", "Bram Oyelaran")
              for i in range(4)]
    request = parse_request({"request_id": "req-privacy", "received_at": "2026-11-28T09:30:00+00:00",
                             "subjects": [PLANTED_SUBJECT]})
    summary = resolve_request(request, world).summary()
    with pytest.raises(ValidationError, match="forget_text"):  # a field for text does not exist
        Resolution.model_validate(summary | {"forget_text": [PLANTED_QUESTION, PLANTED_ANSWER]})
    # A batch whose id fields carry text by mistake must still not leak it.
    summary = Resolution.model_validate(summary | {"forget_ids": summary["forget_ids"] + [PLANTED_ANSWER],
                                                  "received_at": {"req-privacy": PLANTED_SUBJECT}})
    reports = tmp_path / "reports"
    register(mlflow_store, tiny_model_dir, reports, summary=summary,
             dvc_hashes={"req-privacy": PLANTED_QUESTION})

    store_dir = tmp_path / "mlflow"
    files = [p for p in store_dir.rglob("*") if p.is_file()] + [p for p in reports.rglob("*") if p.is_file()]
    assert any(p.name == "mlflow.db" for p in files) and any(p.suffix == ".png" for p in files)
    planted = [PLANTED_SUBJECT, PLANTED_QUESTION, PLANTED_ANSWER, "Quillfeather", "Vasquez-Brightwater"]
    for path in files:
        content = path.read_bytes()
        for text in planted:
            assert text.encode() not in content, f"{text!r} found in {path}"
            assert text.encode("utf-16-le") not in content, f"{text!r} (UTF-16) found in {path}"
    run = mlflow_store.client().search_runs([mlflow_store.client().get_experiment_by_name(
        "blur-unlearning").experiment_id])[0]
    assert run.data.tags["requests"] == "req-privacy"  # ids and hashes are what is recorded


# --------------------------------------------------------------------------- failures (issue 7 item 2)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def fast_failing_http(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")


@pytest.mark.parametrize("kind", ["http-server-down", "sqlite-path-missing"])
def test_unreachable_store_raises_a_clear_error_and_writes_nothing(tiny_model_dir, tmp_path, fast_failing_http,
                                                                   kind):
    if kind == "http-server-down":
        uri = f"http://127.0.0.1:{_closed_port()}"
        store = TrackingStore(uri, uri)
    else:
        store = TrackingStore.sqlite("/proc/no-such-dir/mlflow.db")
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "gate.json").write_text('{"passed": true}')  # stale, from an earlier run
    with pytest.raises(TrackingUnavailableError) as caught:
        register(store, tiny_model_dir, reports)
    message = str(caught.value)
    assert store.tracking_uri in message and "unreachable" in message
    assert "no alias moved" in message and "MLFLOW_TRACKING_URI" in message
    assert not (reports / "gate.json").exists()


def test_failure_while_moving_the_alias_leaves_it_on_the_previous_version(mlflow_store, tiny_model_dir,
                                                                           tmp_path, monkeypatch):
    from mlflow import MlflowClient

    first = register(mlflow_store, tiny_model_dir, tmp_path / "r1")

    def store_gone(*args, **kwargs):
        raise ConnectionError("tracking server went away")

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", store_gone)
    with pytest.raises(TrackingUnavailableError, match="moving alias 'champion' to version 2") as caught:
        register(mlflow_store, tiny_model_dir, tmp_path / "r2")
    assert "still points to version 1" in str(caught.value)
    monkeypatch.undo()
    client = mlflow_store.client()
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == first.version
    failed_run = [r for r in client.search_runs([client.get_run(first.run_id).info.experiment_id])
                  if r.info.run_id != first.run_id][0]
    assert failed_run.info.status == "FAILED"
    assert not (tmp_path / "r2" / "gate.json").exists()


def test_tracking_store_defaults_to_sqlite_in_the_root_and_the_environment_overrides(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    default = tracking_store(tmp_path)
    assert default.tracking_uri == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert default.artifact_location == (tmp_path.resolve() / "mlartifacts").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert tracking_store(tmp_path) == TrackingStore("http://tracking.example:5000",
                                                     "http://tracking.example:5000", None)


# --------------------------------------------------------------------------- gate safety (issue 7 item 4)


def test_alias_moves_iff_every_configured_check_passes_on_a_real_registry(mlflow_store, tiny_model_dir,
                                                                           tmp_path):
    rng = random.Random(7)
    cases = []
    while len(cases) < 6:  # three of each outcome, drawn at random
        metrics, thresholds = draw_gate_case(rng)
        if sum(v is not None for v in thresholds.values()) < 2:
            continue
        outcome = expected_gate_pass(metrics, thresholds)
        if sum(expected == outcome for _, _, expected in cases) < 3:
            cases.append((metrics, thresholds, outcome))
    client = mlflow_store.client()
    for index, (metrics, thresholds, expected) in enumerate(cases):
        before = champion_version(client, MODEL, "champion")
        config = registry_config(**thresholds)
        assert evaluate_gate(metrics, GateConfig(**thresholds)).passed == expected
        candidate = Candidate(metrics, sample_diagnostics(3), sample_summary(f"req-{index}"), {}, tiny_model_dir)
        decision = register_candidate(config, candidate, tmp_path / f"r{index}", store=mlflow_store,
                                      processed_requests={})
        after = champion_version(client, MODEL, "champion")
        if expected:
            assert after == decision.version != before
        else:
            assert after == before and decision.version is None


def test_a_missing_model_directory_is_refused_before_anything_is_written(mlflow_store, tmp_path):
    with pytest.raises(RegistryError, match="not a saved Hugging Face model directory"):
        register(mlflow_store, tmp_path / "models" / "unlearned", tmp_path / "reports")
    assert mlflow_store.client().get_experiment_by_name("blur-unlearning") is None


def test_the_run_records_where_unlearning_stopped_and_why(mlflow_store, tiny_model_dir, tmp_path):
    """unlearn.stop's record reaches MLflow: the step whose weights were registered, the last step trained,
    the rule's kind of stop and its reason (numbers only: the probe's AUC and KS p-value)."""
    stop = {"rule": "holdout", "criterion": "landed", "stopped_at": 6, "ended_at": 8,
            "reason": "overshot: forget set past the holdout at 2 probe(s) in a row (AUC 0.219 < 0.5 - 0.05); "
                      "restored the weights of step 6, the probe nearest the holdout (AUC 0.469, KS p 0.656)",
            "curve": [{"step": 6, "probe_auc": 0.469}]}
    candidate = Candidate(sample_metrics(), sample_diagnostics(8), sample_summary("req-0001"), {}, tiny_model_dir,
                          stop=stop)
    register_candidate(registry_config(), candidate, tmp_path, store=mlflow_store)

    client = mlflow_store.client()
    run = client.search_runs([client.get_experiment_by_name(registry_config().registry.experiment).experiment_id])[0]
    assert run.data.params["unlearn.stopped_at"] == "6" and run.data.params["unlearn.ended_at"] == "8"
    assert run.data.tags["unlearn.stop"] == "overshot"
    assert run.data.tags["unlearn.stop_reason"] == stop["reason"]
