"""The typed artifacts between the stages: files round-trip, bad values are refused by key, and the
JSON Schemas auditors read are the ones the code validates with."""

from __future__ import annotations

import json
import re

import pytest
from pydantic import TypeAdapter

from components.artifacts import (REQUEST_ID, DeletionRequest, ErasureRecord, GateCheck, GateDecision, Metrics,
                                  json_schemas)
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
