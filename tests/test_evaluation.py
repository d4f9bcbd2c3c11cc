"""The evaluator end to end on the tiny trained target and oracle models of the fixture."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import pytest
from rouge_score import rouge_scorer
from scipy.stats import hmean

from components.data.records import QARecord, TextRecord
from components.evaluation import EvaluationContext, evaluate_models, write_reports
from components.evaluation.inference import greedy_generate, prompt_ids
from components.modeling.encoding import encode_record
from components.modeling.io import LoadedModel

MUSE = Path(__file__).parent / "fixtures" / "muse_news"  # a sample of MUSE-News, see its README
PROMISED_KEYS = {
    "forget_prob", "forget_rouge", "forget_truth_ratio", "forget_quality", "retain_prob", "retain_rouge",
    "retain_truth_ratio", "model_utility", "mia_auc", "privleak", "extraction_strength",
    "mia_auc_loss", "mia_auc_zlib", "forget_verbmem", "forget_knowmem", "earlier",
}


def loaded(model, tokenizer, name):
    return LoadedModel(model=model, tokenizer=tokenizer, source=name)


@pytest.fixture(scope="module")
def setup(tiny_setup):
    return tiny_setup


@pytest.fixture(scope="module")
def evaluation(setup):
    """Target, oracle, and an "unlearned" model that is an exact copy of the oracle."""
    s = setup
    models = {
        "target": loaded(s.target, s.tokenizer, "target"),
        "oracle": loaded(s.oracle, s.tokenizer, "oracle"),
        "unlearned": loaded(copy.deepcopy(s.oracle), s.tokenizer, "unlearned"),
    }
    return evaluate_models(
        models, forget=s.forget, retain=s.retain, holdout=s.holdout, config=s.config.eval,
        max_length=s.config.model.max_length, earlier_forget={"req-2024-01": s.forget[:4]},
        utility_sets={"extra": s.retain[:6]}, show_progress=False,
    )


@pytest.fixture(scope="module")
def target_only(setup):
    s = setup
    return evaluate_models(
        {"target": loaded(s.target, s.tokenizer, "target"), "oracle": None},
        forget=s.forget, retain=s.retain[:8], holdout=s.holdout, config=s.config.eval,
        max_length=s.config.model.max_length, show_progress=False,
    )


def test_metrics_report_every_promised_key_for_each_model(evaluation):
    assert set(evaluation.metrics) == {"target", "oracle", "unlearned"}
    for role, values in evaluation.metrics.items():
        assert PROMISED_KEYS <= set(values), role


def test_target_forget_probability_is_far_above_the_oracles(evaluation):
    target, oracle = evaluation.metrics["target"], evaluation.metrics["oracle"]
    assert target["forget_prob"] > 0.5
    assert target["forget_prob"] > 10 * oracle["forget_prob"]


def test_oracle_forget_quality_against_itself_is_one_and_privleak_zero(evaluation):
    assert evaluation.metrics["oracle"]["forget_quality"] == 1.0
    assert evaluation.metrics["oracle"]["privleak"] == 0.0


def test_a_model_identical_to_the_oracle_is_indistinguishable_from_it(evaluation):
    unlearned, target = evaluation.metrics["unlearned"], evaluation.metrics["target"]
    assert unlearned["forget_quality"] == 1.0
    assert unlearned["forget_prob"] < target["forget_prob"]
    assert unlearned["forget_quality"] > target["forget_quality"]


def test_membership_inference_sees_that_the_target_trained_on_the_forget_set(evaluation):
    target, oracle = evaluation.metrics["target"], evaluation.metrics["oracle"]
    assert target["mia_auc"] > 0.9 and target["mia_auc"] > oracle["mia_auc"]
    assert target["privleak"] < -50  # MUSE sign: strongly negative while the data is remembered


def test_model_utility_is_the_harmonic_mean_over_retain_and_extra_utility_sets(evaluation):
    m = evaluation.metrics["target"]
    parts = [m["retain_prob"], m["retain_rouge"], m["retain_truth_ratio"],
             m["extra_prob"], m["extra_rouge"], m["extra_truth_ratio"]]
    assert m["model_utility"] == pytest.approx(hmean(parts))


def test_earlier_requests_are_checked_per_request_id(evaluation):
    target = evaluation.metrics["target"]["earlier"]["req-2024-01"]
    oracle = evaluation.metrics["oracle"]["earlier"]["req-2024-01"]
    assert {"forget_prob", "forget_rouge", "forget_truth_ratio", "forget_quality"} <= set(target)
    assert target["forget_prob"] > 10 * oracle["forget_prob"]
    assert oracle["forget_quality"] == 1.0


def test_flat_metrics_are_ready_for_mlflow_without_nulls(evaluation):
    from components.registry.tracking import evaluation_metrics

    flat = evaluation_metrics(evaluation.metrics)
    earlier = evaluation.metrics["target"]["earlier"]["req-2024-01"]
    assert flat["target.earlier.req-2024-01.forget_prob"] == earlier["forget_prob"]
    assert "target.forget_verbmem" not in flat and all(isinstance(v, float) for v in flat.values())


def test_replacing_a_model_reuses_the_others_outputs_and_matches_a_fresh_evaluation(setup, evaluation):
    from components.evaluation.evaluator import REPORTED

    s = setup
    splits = {"forget": s.forget, "retain": s.retain, "holdout": s.holdout}
    ctx = EvaluationContext({"target": loaded(s.target, s.tokenizer, "target"),
                             "oracle": loaded(s.oracle, s.tokenizer, "oracle"), "unlearned": None},
                            splits, s.config.eval, max_length=s.config.model.max_length)
    oracle_outputs = ctx.targets("oracle", "forget")
    assert ctx.metric("forget_quality", "unlearned", "forget")["value"] is None
    ctx.replace_model("unlearned", loaded(copy.deepcopy(s.oracle), s.tokenizer, "candidate"))
    values = {key: ctx.metric(name, "unlearned", split)["value"] for key, name, split in REPORTED}
    assert ctx.targets("oracle", "forget") is oracle_outputs  # the oracle was not run again
    expected = evaluation.metrics["unlearned"]  # the same model (a copy of the oracle), evaluated afresh
    utility = values.pop("model_utility")  # the fixture also counts an extra utility set; here only retain
    assert values == {key: expected[key] for key in values}
    assert utility == pytest.approx(hmean([values["retain_prob"], values["retain_rouge"], values["retain_truth_ratio"]]))


def test_metrics_needing_an_absent_model_are_null(target_only):
    target = target_only.metrics["target"]
    assert target["forget_quality"] is None and target["privleak"] is None
    assert target["forget_prob"] is not None and target["mia_auc"] is not None
    for role in ("oracle", "unlearned"):
        assert all(v is None for k, v in target_only.metrics[role].items() if k != "earlier"), role
        assert all(row["prob"] is None for row in target_only.per_item[role]["forget"])


def test_reports_carry_record_ids_but_no_forget_text(evaluation, setup, tmp_path):
    write_reports(evaluation, tmp_path)
    written = "\n".join(p.read_text(encoding="utf-8") for p in tmp_path.rglob("*") if p.is_file())
    for record in setup.forget:
        for text in (record.question, record.answer, record.paraphrased_answer, *record.perturbed_answers,
                     record.subject):
            assert text not in written
        assert record.record_id in written


def test_reports_are_metrics_json_and_flat_numeric_per_item_csvs(evaluation, setup, tmp_path):
    written = write_reports(evaluation, tmp_path)
    assert json.loads((tmp_path / "metrics.json").read_text()) == evaluation.metrics
    with (tmp_path / "per_item" / "target_forget.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["record_id"] for row in rows] == [r.record_id for r in setup.forget]
    for row in rows:
        for column, cell in row.items():
            if column not in ("record_id", "kind") and cell:
                float(cell)
    names = {p.name for p in written.values()}
    assert {"target_forget.csv", "oracle_holdout.csv", "unlearned_retain.csv", "target_utility_extra.csv",
            "target_earlier_req-2024-01.csv"} <= names


def test_batched_left_padded_generation_matches_one_prompt_at_a_time(setup):
    records = setup.forget + setup.holdout[:6]
    prompts = [prompt_ids(encode_record(setup.tokenizer, r, 64)) for r in records]
    assert len({len(p) for p in prompts}) > 1  # batches really are padded
    batched = greedy_generate(setup.target, setup.tokenizer, prompts, max_new_tokens=12, batch_size=5)
    single = greedy_generate(setup.target, setup.tokenizer, prompts, max_new_tokens=12, batch_size=1)
    assert batched == single


def test_generation_stops_at_eos_and_within_the_token_bound(setup):
    prompts = [prompt_ids(encode_record(setup.tokenizer, r, 64)) for r in setup.forget]
    short = greedy_generate(setup.target, setup.tokenizer, prompts, max_new_tokens=3, batch_size=8)
    assert all(len(ids) == 3 for ids in short)
    full = greedy_generate(setup.target, setup.tokenizer, prompts, max_new_tokens=40, batch_size=8)
    assert all(setup.tokenizer.eos_token_id not in ids for ids in full)
    assert any(len(ids) < 40 for ids in full)  # the trained target ends its answers


def test_rouge_is_the_mean_rouge_score_recall_of_the_greedy_answers(setup):
    ctx = EvaluationContext({"target": loaded(setup.target, setup.tokenizer, "t")},
                            {"forget": setup.forget}, setup.config.eval, max_length=64)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    answers = [setup.tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in greedy_generate(
        setup.target, setup.tokenizer, [prompt_ids(encode_record(setup.tokenizer, r, 64)) for r in setup.forget],
        max_new_tokens=setup.config.eval.max_new_tokens, batch_size=1)]
    expected = [scorer.score(r.answer, a)["rougeL"].recall for r, a in zip(setup.forget, answers)]
    assert ctx.metric("rouge", "target", "forget")["by_item"] == pytest.approx(expected)


@pytest.fixture(scope="module")
def muse_news():
    """5 verbmem passages, 5 knowmem QA pairs about the forget articles, 5 retain QA, 5 holdout texts."""
    def read(name):
        return json.loads((MUSE / name).read_text(encoding="utf-8"))[:5]

    return {
        "verbmem": [TextRecord(text=r["prompt"] + r["gt"], subject="bbc-forget") for r in read("verbmem/forget.json")],
        "knowmem": [QARecord(question=r["question"], answer=r["answer"], subject="bbc-forget")
                    for r in read("knowmem/forget_qa.json")],
        "retain_qa": [QARecord(question=r["question"], answer=r["answer"], subject="bbc-retain")
                      for r in read("knowmem/retain2_qa.json")],
        "holdout": [TextRecord(text=t, subject="bbc-holdout") for t in read("privleak/holdout.json")],
    }


def test_muse_news_subset_runs_through_verbmem_and_knowmem(setup, muse_news):
    result = evaluate_models(
        {"target": loaded(setup.target, setup.tokenizer, "t"), "oracle": loaded(setup.oracle, setup.tokenizer, "o")},
        forget=muse_news["verbmem"] + muse_news["knowmem"], retain=muse_news["retain_qa"],
        holdout=muse_news["holdout"], config=setup.config.eval, max_length=64, show_progress=False,
    )
    target = result.metrics["target"]
    for key in ("forget_verbmem", "forget_knowmem", "retain_knowmem", "forget_prob", "mia_auc"):
        assert 0.0 <= target[key] <= 1.0, key
    assert target["forget_truth_ratio"] is None  # MUSE QA has no paraphrased or perturbed answers
    assert target["forget_quality"] is None


def test_text_only_worlds_null_the_qa_metrics_and_report_verbmem(setup, muse_news):
    result = evaluate_models(
        {"target": loaded(setup.target, setup.tokenizer, "t"), "oracle": loaded(setup.oracle, setup.tokenizer, "o")},
        forget=muse_news["verbmem"], retain=muse_news["holdout"][:2], holdout=muse_news["holdout"],
        config=setup.config.eval, max_length=64, show_progress=False,
    )
    target = result.metrics["target"]
    for key in ("forget_rouge", "forget_truth_ratio", "forget_quality", "forget_knowmem", "retain_rouge"):
        assert target[key] is None, key
    for key in ("forget_verbmem", "forget_prob", "extraction_strength", "mia_auc", "privleak", "model_utility"):
        assert target[key] is not None, key


@pytest.mark.parametrize("change, message", [
    ({"models": {"student": None}}, "unknown model role"),
    ({"utility_sets": {"forget": []}}, "utility set name"),
    ({"max_length": 16}, "verbmem_prefix_tokens"),
])
def test_bad_inputs_are_rejected_with_the_reason(setup, change, message):
    kwargs = dict(models={"target": None}, forget=[], retain=[], holdout=[], config=setup.config.eval,
                  max_length=64, show_progress=False)
    kwargs.update(change)
    with pytest.raises(ValueError, match=message):
        evaluate_models(**kwargs)
