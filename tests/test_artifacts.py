"""The typed artifacts between the stages: files round-trip, bad values are refused by key, and the
JSON Schemas auditors read are the ones the code validates with."""

from __future__ import annotations

import json
import re

import pytest
from pydantic import TypeAdapter

from components.artifacts import (REQUEST_ID, ArtifactError, BatchFailures, ChainHead, DeletionRequest, EarlierLevels,
                                  ErasureRecord, FinetuneSummary, GateCheck, GateDecision, Metrics, ModelRef,
                                  PreparedSettings, PushPending, RequestIdPeek, SettlingJournal, TrainedModel,
                                  UnlearnSummary, json_schemas, read_unlearn_log)
from components.paths import Paths


def test_committed_json_schemas_are_the_ones_the_models_generate():
    folder = Paths().schemas  # the repository's docs/schemas (tests run from the repository root)
    for name, text in json_schemas().items():
        path = folder / f"{name}.schema.json"
        assert path.exists() and path.read_text(encoding="utf-8") == text, (
            f"{path} is stale: run `python -m components.artifacts`")


def test_metrics_round_trip_keeps_the_file_as_evaluate_wrote_it(tmp_path):
    data = {"target": {"forget_prob": 0.8, "n_forget": 4, "earlier": {}},
            "oracle": {"forget_prob": None, "n_forget": None, "earlier": {}},
            "unlearned": {"forget_prob": 0.125, "n_forget": 4, "earlier": {"req-a": {"forget_prob": 0.5}}}}
    path = Metrics.parse(data).save(tmp_path / "metrics.json")
    assert json.loads(path.read_text()) == data
    loaded = Metrics.load(path)
    assert loaded.value("unlearned", "forget_prob") == 0.125 and loaded.value("oracle", "forget_prob") is None
    assert loaded.unlearned.earlier == {"req-a": {"forget_prob": 0.5}} and loaded.value("target", "absent") is None


@pytest.mark.parametrize("value, kind", [(True, "bool"), ("0.5", "str"), ([0.5], "list")])
def test_a_metric_that_is_not_a_number_is_refused_naming_its_key(value, kind):
    with pytest.raises(ValueError, match=rf"metrics\['unlearned'\]\['forget_prob'\] must be a number or null, got {kind}"):
        Metrics.parse({"unlearned": {"forget_prob": value}})


def test_gate_decision_round_trips_with_infinite_values_written_as_text(tmp_path):
    check = GateCheck(metric="forget_prob_ratio", op="<=", threshold=0.5, value=float("inf"), passed=False,
                      setting="gate.max_forget_prob_ratio", reason="forget_prob_ratio inf > 0.5")
    decision = GateDecision(passed=False, checks=(check,), model_name="blur-test")
    path = decision.save(tmp_path / "gate.json")
    written = json.loads(path.read_text())
    assert written["checks"][0]["value"] == "inf" and written["reasons"] == ["forget_prob_ratio inf > 0.5"]
    assert GateDecision.load(path) == decision


def test_the_request_schema_and_the_id_check_use_one_pattern():
    schema = TypeAdapter(DeletionRequest).json_schema()
    pattern = re.compile(schema["properties"]["request_id"]["pattern"])
    for candidate in ("req-1", "a" * 128, "a" * 129, "../x", "a b", "req.1"):
        assert bool(pattern.fullmatch(candidate)) == bool(REQUEST_ID.fullmatch(candidate)), candidate


def test_an_erasure_record_without_forget_ids_is_told_apart_from_one_with_none():
    assert "forget_ids" not in ErasureRecord.parse({"request_id": "req-1"}).model_fields_set
    assert ErasureRecord.parse({"request_id": "req-1", "forget_ids": [], "model_version": 3}).model_version == "3"


# --------------------------------------------------------------------------- the files that had no type before

TRAINED = {"epochs": 3, "mean_answer_prob": 0.91, "stop_reason": "target_prob", "n_records": 40}
UNLEARNED = {"steps": 12, "resumed_from": None, "first_forget_loss": 2.5, "final_forget_loss": 9.0,
             "first_retain_loss": 1.0, "final_retain_loss": 1.1,
             "method": {"combiner": "blur", "lower": "forget", "forget_loss": "match", "retain_loss": "nll",
                        "gamma": 0.5, "alpha": 1.0, "lr": 1e-4}, "start_model": "/x/models/target", "seconds": 3.2}
# model, a file as the code wrote it before it had a type, a malformed one and the key its error names
FILES = [
    (PreparedSettings, {"max_length": 128}, {"max_length": "128"}, "max_length"),
    (EarlierLevels, {"req-a": 0.05, "req-b": 0.125}, {"req-a": "low"}, "req-a"),
    (EarlierLevels, {}, {"../x": 0.1}, "../x"),
    (TrainedModel, TRAINED, {"epochs": 3, "stop_reason": "target_prob", "n_records": 40}, "mean_answer_prob"),
    (FinetuneSummary, {"target": TRAINED, "oracle": TRAINED, "seconds": 12.5},
     {"target": TRAINED, "oracle": TRAINED | {"epochs": 2.5}}, "oracle.trained.epochs"),
    (FinetuneSummary, {"target": TRAINED, "oracle": TRAINED, "cached": "0a1b2c", "seconds": 0.4},
     {"target": TRAINED}, "oracle"),
    (FinetuneSummary, {"target": {"source": "HuggingFaceTB/SmolLM2-135M"}, "oracle": {"source": None}, "seconds": 0.0},
     {"target": {"source": 7}, "oracle": {"source": None}}, "target.linked.source"),
    (UnlearnSummary, UNLEARNED, UNLEARNED | {"steps": None}, "steps"),
    (UnlearnSummary, {"steps": 4, "resumed_from": 2, "first_forget_loss": 1.0, "final_forget_loss": 2.0,
                      "first_retain_loss": 1.0, "final_retain_loss": 1.0, "stop": {"rule": "holdout", "curve": []},
                      "method": {}, "start_model": "m", "seconds": 1.0, "new_key": [1, 2]},
     {"steps": 4, "stop": "early"}, "stop"),
    (ModelRef, {"source": "/abs/models/target"}, {"path": "/abs/models/target"}, "source"),
    (ModelRef, {"source": None}, {}, "source"),
    (BatchFailures, {"failures": 2, "last_error": "ValueError"}, {"failures": "2"}, "failures"),
    (PushPending, {"since": "2026-12-01T10:00:00+00:00", "error": "CalledProcessError: dvc push"},
     {"since": 1733000000}, "since"),
    (SettlingJournal, {"source": "inbox/a.json", "destination": "processed/req-a.json",
                       "note": "processed/req-a.result.json"},
     {"source": "inbox/a.json", "destination": "../../elsewhere", "note": "n"}, "destination"),
    (ChainHead, {"sequence": 2, "request_id": "req-2", "certificate_hash": "ab" * 32},
     {"sequence": 2, "request_id": "req-2", "certificate_hash": "not-a-hash"}, "certificate_hash"),
]


@pytest.mark.parametrize("model, written, malformed, key", FILES)
def test_each_file_loads_and_is_written_byte_for_byte_as_before(tmp_path, model, written, malformed, key):
    before = json.dumps(written, indent=2) + "\n"  # what write_json wrote before the type
    path = tmp_path / "file.json"
    path.write_text(before)
    loaded = model.load(path)
    loaded.save(tmp_path / "again.json")
    assert (tmp_path / "again.json").read_text() == before


@pytest.mark.parametrize("model, written, malformed, key", FILES)
def test_a_malformed_file_is_refused_naming_the_file_and_the_key(tmp_path, model, written, malformed, key):
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(malformed))
    with pytest.raises(ArtifactError, match=rf"broken\.json does not hold a valid {model.__name__}: .*{re.escape(key)}"):
        model.load(path)


@pytest.mark.parametrize("model", sorted({entry[0] for entry in FILES}, key=lambda m: m.__name__))
def test_a_file_that_is_not_json_is_refused_naming_the_file(tmp_path, model):
    path = tmp_path / "cut.json"
    path.write_text('{"max_length": 12')  # a write cut short
    with pytest.raises(ArtifactError, match=r"cut\.json is not JSON"):
        model.load(path)


def test_the_unlearn_log_is_read_as_written_and_a_bad_line_is_named(tmp_path):
    rows = [{"step": 1, "forget_loss": 2.5, "lr": 1e-4}, {"step": 2, "forget_loss": float("nan"), "stop": None}]
    log = tmp_path / "unlearn_log.jsonl"
    log.write_text("".join(json.dumps(row) + "\n" for row in rows) + "\n")
    read = read_unlearn_log(log)
    assert read[0] == rows[0] and read[1]["step"] == 2 and read[1]["forget_loss"] != read[1]["forget_loss"]
    log.write_text(json.dumps(rows[0]) + "\n" + json.dumps({"forget_loss": 1.0}) + "\n")
    with pytest.raises(ArtifactError, match=r"unlearn_log\.jsonl, line 2 does not hold a valid UnlearnStep: step"):
        read_unlearn_log(log)
    log.write_text(json.dumps(rows[0]) + "\n" + '{"step": 2, "forget' + "\n")
    with pytest.raises(ArtifactError, match=r"line 2 is not JSON"):
        read_unlearn_log(log)


@pytest.mark.parametrize("raw, found", [
    (b'{"request_id": "req-1", "subjects": 5}', "req-1"),  # an invalid request still has its id
    (b'{"request_id": "req-1\\n"}', None), (b'{"request_id": "../x"}', None), (b'{"request_id": 7}', None),
    (b'["req-1"]', None), (b'{"request_id": "req-1"', None), (b"\xff\xfe", None)])
def test_a_request_files_id_is_peeked_only_when_well_formed(raw, found):
    assert RequestIdPeek.of(raw) == found
