"""The evaluator end to end on the tiny trained target and oracle models of the fixture."""

from __future__ import annotations

import copy
import csv
import json
import re
import weakref
from pathlib import Path
from urllib.parse import unquote

import pytest
import torch
from rouge_score import rouge_scorer
from scipy.stats import hmean

from components.config import EvalConfig, ModelConfig
from components.data.records import DataError, QARecord, TextRecord
from components.evaluation import EvaluationContext, evaluate_models, write_reports
from components.evaluation.evaluator import safe_name
from components.evaluation.formulas import cut_at_stop_strings
from components.evaluation.inference import greedy_generate, prompt_ids
from components.evaluation.knowledge import knowledge_wanted, load_knowledge_set, load_knowledge_sets
from components.modeling.encoding import collate, encode_record
from components.modeling.io import LoadedModel
from components.modeling.scoring import token_scores

MUSE = Path(__file__).parent / "fixtures" / "muse_news"  # a sample of MUSE-News, see its README
KNOWLEDGE = Path(__file__).parents[1] / "data" / "knowledge"  # TOFU's real authors and world facts
PROMISED_KEYS = {
    "forget_holdout_ks_p", "forget_holdout_auc", "forget_prob", "forget_rouge", "forget_truth_ratio", "forget_quality", "retain_prob", "retain_rouge",
    "retain_truth_ratio", "model_utility", "mia_auc", "privleak", "extraction_strength",
    "mia_auc_loss", "mia_auc_zlib", "forget_verbmem", "forget_knowmem", "earlier",
}


def loaded(model, tokenizer, name):
    return LoadedModel(model=model, tokenizer=tokenizer, source=name)


def loader(model, tokenizer, name):
    """What evaluate_models takes per role: a function that loads the model."""
    return lambda: loaded(model, tokenizer, name)


@pytest.fixture(scope="module")
def setup(tiny_setup):
    return tiny_setup


@pytest.fixture(scope="module")
def evaluation(setup):
    """Target, oracle, and an "unlearned" model that is an exact copy of the oracle."""
    s = setup
    loaders = {
        "target": loader(s.target, s.tokenizer, "target"),
        "oracle": loader(s.oracle, s.tokenizer, "oracle"),
        "unlearned": loader(copy.deepcopy(s.oracle), s.tokenizer, "unlearned"),
    }
    return evaluate_models(
        loaders, forget=s.forget, retain=s.retain, holdout=s.holdout, config=s.config.eval,
        max_length=s.config.model.max_length, earlier_forget={"req-2024-01": s.forget[:4]},
        utility_sets={"extra": s.retain[:6]}, show_progress=False,
    )


@pytest.fixture(scope="module")
def target_only(setup):
    s = setup
    return evaluate_models(
        {"target": loader(s.target, s.tokenizer, "target"), "oracle": None},
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
    # the oracle knows the answer templates and value pools (answers hold the fact, not the name), so it gives an
    # unseen fact some probability, but several times less than the target that learned it
    assert target["forget_prob"] > 4 * oracle["forget_prob"]


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
    assert target["forget_prob"] > 4 * oracle["forget_prob"]  # see the test above
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
    ctx.run_relearn("unlearned")
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


def test_generation_stops_at_a_stop_string_with_the_text_before_it_unchanged(setup):
    """Decoding stops once a row's text holds a stop string; the text up to it is what a full decode gives."""
    prompts = [prompt_ids(encode_record(setup.tokenizer, r, 64)) for r in setup.forget]
    full = [setup.tokenizer.decode(ids, skip_special_tokens=True)
            for ids in greedy_generate(setup.target, setup.tokenizer, prompts, max_new_tokens=40, batch_size=8)]
    stop = " " + full[0].split()[1]  # a word the target says early in its first answer (present in others too)
    assert any(stop in text for text in full) and any(stop not in text for text in full)
    ids = greedy_generate(setup.target, setup.tokenizer, prompts, max_new_tokens=40, batch_size=8,
                          stop_strings=(stop,))
    stopped = [setup.tokenizer.decode(row, skip_special_tokens=True) for row in ids]
    assert [cut_at_stop_strings(t, (stop,)) for t in stopped] == [cut_at_stop_strings(t, (stop,)) for t in full]
    assert [t.endswith(stop) for t in stopped] == [stop in t for t in full]  # stopped right at the string
    assert all(s == f for s, f in zip(stopped, full) if stop not in f)


def test_rouge_is_the_mean_rouge_score_recall_of_the_greedy_answers(setup):
    ctx = EvaluationContext({"target": loaded(setup.target, setup.tokenizer, "t")},
                            {"forget": setup.forget}, setup.config.eval, max_length=64)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    answers = [setup.tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in greedy_generate(
        setup.target, setup.tokenizer, [prompt_ids(encode_record(setup.tokenizer, r, 64)) for r in setup.forget],
        max_new_tokens=setup.config.eval.max_new_tokens, batch_size=setup.config.eval.batch_size)]
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
        {"target": loader(setup.target, setup.tokenizer, "t"), "oracle": loader(setup.oracle, setup.tokenizer, "o")},
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
        {"target": loader(setup.target, setup.tokenizer, "t"), "oracle": loader(setup.oracle, setup.tokenizer, "o")},
        forget=muse_news["verbmem"], retain=muse_news["holdout"][:2], holdout=muse_news["holdout"],
        config=setup.config.eval, max_length=64, show_progress=False,
    )
    target = result.metrics["target"]
    for key in ("forget_rouge", "forget_truth_ratio", "forget_quality", "forget_knowmem", "retain_rouge"):
        assert target[key] is None, key
    for key in ("forget_verbmem", "forget_prob", "extraction_strength", "mia_auc", "privleak", "model_utility"):
        assert target[key] is not None, key


@pytest.mark.parametrize("change, message", [
    ({"loaders": {"student": None}}, "unknown model role"),
    ({"utility_sets": {"forget": []}}, "utility set name"),
    ({"max_length": 16}, "verbmem_prefix_tokens"),
])
def test_bad_inputs_are_rejected_with_the_reason(setup, change, message):
    kwargs = dict(loaders={"target": None}, forget=[], retain=[], holdout=[], config=setup.config.eval,
                  max_length=64, show_progress=False)
    kwargs.update(change)
    with pytest.raises(ValueError, match=message):
        evaluate_models(**kwargs)


# ---- the relearning attack (issue 12)


def test_relearn_halves_split_the_forget_set_the_same_way_every_time():
    from components.evaluation.relearn import relearn_halves

    halves = relearn_halves(9, seed=3)
    assert halves == relearn_halves(9, seed=3) and halves != relearn_halves(9, seed=4)
    assert sorted(halves.attacked + halves.held_out) == list(range(9)) and len(halves.attacked) == 5
    assert relearn_halves(1, seed=0) is None


def test_the_attack_is_reported_for_the_oracle_and_the_unlearned_model_only(evaluation):
    m = evaluation.metrics
    assert m["target"]["relearn_forget_prob"] is None and m["target"]["relearn_recovery"] is None
    # the "unlearned" model is a copy of the oracle: the same attack gives the same numbers
    assert m["unlearned"]["relearn_forget_prob"] == m["oracle"]["relearn_forget_prob"] is not None
    assert m["unlearned"]["relearn_recovery"] == m["oracle"]["relearn_recovery"] is not None


def test_the_attack_trains_a_copy_and_leaves_the_model_as_it_was(setup):
    from components.evaluation.relearn import relearn_attack

    s = setup
    before = {k: v.clone() for k, v in s.oracle.state_dict().items()}
    evidence = relearn_attack(s.oracle, s.tokenizer, s.forget, s.config.eval.relearn,
                              max_length=s.config.model.max_length, batch_size=8)
    assert len(evidence) == len(s.forget) // 2
    assert all(torch.equal(before[k], v) for k, v in s.oracle.state_dict().items())


def test_only_a_model_read_from_disk_is_attacked_in_place(setup):
    """A plain loader may hand over a model the caller still uses: the attack trains a copy. A
    ``FromDisk`` loader's model belongs to the evaluator, which then saves the copy's memory."""
    from components.evaluation.evaluator import FromDisk

    s = setup
    kept, owned = copy.deepcopy(s.oracle), copy.deepcopy(s.oracle)
    before = {k: v.clone() for k, v in s.oracle.state_dict().items()}
    for model, wrap in ((kept, lambda f: f), (owned, FromDisk)):
        evaluate_models({"unlearned": wrap(loader(model, s.tokenizer, "unlearned"))}, forget=s.forget,
                        retain=s.retain[:4], holdout=s.holdout, config=s.config.eval,
                        max_length=s.config.model.max_length, show_progress=False)
    assert all(torch.equal(before[k], v) for k, v in kept.state_dict().items())
    assert not all(torch.equal(before[k], v) for k, v in owned.state_dict().items())


def test_knowledge_only_suppressed_comes_back_under_the_attack_faster_than_the_oracle_learns_it(setup):
    """A target pushed down by a few steps of gradient ascent still holds the facts: the attack on
    one half of the forget set brings the other half back, far more than the oracle gains."""
    s = setup
    suppressed = copy.deepcopy(s.target).train()
    batch = collate([encode_record(s.tokenizer, r, s.config.model.max_length) for r in s.forget],
                    s.tokenizer.pad_token_id)
    optimizer = torch.optim.SGD(suppressed.parameters(), lr=0.5)
    for _ in range(40):
        optimizer.zero_grad()
        (-token_scores(suppressed, batch).mean_nll.mean()).backward()
        torch.nn.utils.clip_grad_norm_(suppressed.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            if token_scores(suppressed, batch).mean_nll.mean() > 4.0:
                break
    result = evaluate_models(
        {"target": loader(s.target, s.tokenizer, "target"), "oracle": loader(s.oracle, s.tokenizer, "oracle"),
         "unlearned": loader(suppressed.eval(), s.tokenizer, "suppressed")},
        forget=s.forget, retain=s.retain[:4], holdout=s.holdout, config=s.config.eval,
        max_length=s.config.model.max_length, show_progress=False,
    )
    ours, oracle = result.metrics["unlearned"], result.metrics["oracle"]
    assert ours["forget_prob"] < 0.5 * result.metrics["target"]["forget_prob"]  # it looks forgotten
    # measured: recovery 0.26 against the oracle's 0.015; probability afterwards 0.23 against 0.03
    assert ours["relearn_recovery"] > oracle["relearn_recovery"] + 0.1
    assert ours["relearn_forget_prob"] > 3 * oracle["relearn_forget_prob"]


# ---- one model at a time, in fp32


def test_models_are_loaded_one_at_a_time_and_each_is_freed_before_the_next(setup):
    s, alive, loads = setup, [], []

    def loader_of(model, name):
        def load():
            assert all(ref() is None for ref in alive), f"a model was still in memory when {name} was loaded"
            copy_ = copy.deepcopy(model)
            alive.append(weakref.ref(copy_))
            loads.append(name)
            return loaded(copy_, s.tokenizer, name)
        return load

    result = evaluate_models(
        {"target": loader_of(s.target, "target"), "oracle": loader_of(s.oracle, "oracle"),
         "unlearned": loader_of(s.oracle, "unlearned")},
        forget=s.forget, retain=s.retain[:8], holdout=s.holdout, config=s.config.eval,
        max_length=s.config.model.max_length, show_progress=False,
    )
    assert loads == ["target", "oracle", "unlearned"]  # each loaded exactly once
    assert all(ref() is None for ref in alive)
    # metrics comparing models are read after all of them are gone
    assert result.metrics["unlearned"]["forget_quality"] == 1.0 and result.metrics["target"]["forget_quality"] < 1


def test_a_bfloat16_model_is_scored_in_float32(setup):
    s = setup
    half = copy.deepcopy(s.target).to(torch.bfloat16)
    batch = collate([encode_record(s.tokenizer, r, 64) for r in s.forget[:4]], s.tokenizer.pad_token_id)
    assert token_scores(half, batch).token_logps.dtype == torch.float32
    runs = {name: evaluate_models({"target": loader(model, s.tokenizer, name)}, forget=s.forget, retain=s.retain[:4],
                                  holdout=s.holdout[:4], config=s.config.eval, max_length=64, show_progress=False)
            for name, model in (("fp32", s.target), ("bf16", half))}
    fp32, bf16 = (runs[name].metrics["target"]["forget_prob"] for name in ("fp32", "bf16"))
    assert bf16 == pytest.approx(fp32, abs=0.05)


def test_a_role_given_a_loaded_model_instead_of_a_loader_is_refused_with_what_to_do(setup):
    with pytest.raises(TypeError, match="lambda: model"):
        evaluate_models({"target": object()}, forget=[], retain=[], holdout=[], config=setup.config.eval,
                        max_length=64, show_progress=False)


# ---- the oracle-free check


def test_forget_holdout_auc_is_the_membership_auc_and_ks_p_tells_remembering_from_never_seen(evaluation):
    for role, values in evaluation.metrics.items():
        assert values["forget_holdout_auc"] == values["mia_auc"], role
    target, oracle = evaluation.metrics["target"], evaluation.metrics["oracle"]
    # the oracle never saw the forget set: it looks more like the holdout to the oracle than to the target
    # (8 forget records: truth ratios give the KS test little power, so no fixed threshold here)
    assert target["forget_holdout_ks_p"] <= oracle["forget_holdout_ks_p"]
    assert target["forget_holdout_auc"] > 0.9 and abs(oracle["forget_holdout_auc"] - 0.5) < 0.25


# ---- TOFU's general-knowledge sets


@pytest.fixture(scope="module")
def knowledge_run(setup):
    s = setup
    sets = {name: records[:6] for name, records in load_knowledge_sets(
        [KNOWLEDGE / "real_authors.json", KNOWLEDGE / "world_facts.json"]).items()}
    return evaluate_models(
        {"target": loader(s.target, s.tokenizer, "t"), "oracle": loader(s.oracle, s.tokenizer, "o"),
         "unlearned": loader(s.oracle, s.tokenizer, "u")},
        forget=s.forget, retain=s.retain[:8], holdout=s.holdout, config=s.config.eval,
        max_length=s.config.model.max_length, knowledge_sets=sets, show_progress=False,
    )


def test_knowledge_sets_report_accuracy_probability_rouge_and_truth_ratio_for_every_model(knowledge_run):
    for role, values in knowledge_run.metrics.items():
        for name in ("real_authors", "world_facts"):
            assert values[f"{name}_acc"] in {k / 6 for k in range(7)}, role
            assert 0 < values[f"{name}_prob"] < 1 and 0 <= values[f"{name}_rouge"] <= 1, role
            assert 0 <= values[f"{name}_truth_ratio"] <= 1, role


def test_knowledge_sets_count_in_model_utility(knowledge_run):
    m = knowledge_run.metrics["target"]
    parts = [m["retain_prob"], m["retain_rouge"], m["retain_truth_ratio"]]
    parts += [m[f"{name}_{part}"] for name in ("real_authors", "world_facts") for part in ("prob", "rouge", "truth_ratio")]
    assert m["model_utility"] == (0.0 if min(parts) == 0 else pytest.approx(hmean(parts)))


def test_knowledge_sets_get_per_item_files(knowledge_run, tmp_path):
    write_reports(knowledge_run, tmp_path)
    with (tmp_path / "per_item" / "unlearned_knowledge_world_facts.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 6 and {"option_acc", "option_prob", "rouge", "truth_ratio"} <= set(rows[0])


def test_the_shipped_knowledge_sets_load_as_tofu_scores_them():
    sets = load_knowledge_sets([KNOWLEDGE / Path(p).name for p in EvalConfig().knowledge_sets])
    assert {name: len(records) for name, records in sets.items()} == {"real_authors": 100, "world_facts": 117}
    for record in sets["world_facts"]:
        assert record.paraphrased_answer == record.answer and len(record.perturbed_answers) == 3


def test_a_knowledge_file_without_wrong_options_is_refused_naming_file_and_row(tmp_path):
    path = tmp_path / "trivia.json"
    path.write_text(json.dumps([{"question": "Capital of Peru?", "answer": "Lima", "perturbed_answer": ["Quito"]},
                                {"question": "Capital of Chile?", "answer": "Santiago"}]))
    with pytest.raises(DataError, match=r"trivia.json, row 2: .*perturbed_answer"):
        load_knowledge_set(path)


SMOLLM2 = "models/base/smollm2-135m-instruct"


@pytest.mark.parametrize("setting, model, wanted", [
    ("auto", {}, False), ("auto", {"base": SMOLLM2}, True), ("auto", {"pretrained": SMOLLM2}, True),
    ("on", {}, True), ("off", {"base": SMOLLM2}, False),
])
def test_knowledge_is_on_by_default_for_a_pretrained_model_only(setting, model, wanted):
    assert knowledge_wanted(setting, ModelConfig(**model)) is wanted


# ---- report file names (issue 13: request ids must map to names one to one)


def test_request_ids_differing_by_a_trailing_underscore_get_their_own_report_files(setup, tmp_path):
    s = setup
    result = evaluate_models({"target": None}, forget=[], retain=[], holdout=[], config=s.config.eval, max_length=64,
                             earlier_forget={"req-1": s.forget[:1], "req-1_": s.forget[1:2]}, show_progress=False)
    write_reports(result, tmp_path)
    for request_id, record in (("req-1", s.forget[0]), ("req-1_", s.forget[1])):
        with (tmp_path / "per_item" / f"target_earlier_{request_id}.csv").open() as handle:
            assert [row["record_id"] for row in csv.DictReader(handle)] == [record.record_id]


@pytest.mark.parametrize("name", ["req-1", "req-1_", "req_1", "a/b", "a b", "%41", "ünï", "..", "x.y"])
def test_safe_name_keeps_request_ids_and_escapes_everything_else_reversibly(name):
    assert unquote(safe_name(name)) == name
    assert re.fullmatch(r"[A-Za-z0-9._~%-]+", safe_name(name))
    if re.fullmatch(r"[A-Za-z0-9_-]+", name):
        assert safe_name(name) == name


def test_the_comparison_benchmark_measures_world_facts_as_the_evaluator_does(knowledge_run, setup):
    """benchmarks/compare.py's world-facts option probability at a trajectory point is the evaluator's
    ``world_facts_prob`` (protocols/comparison.md, amendment of 2026-12-07)."""
    from benchmarks.compare import Scorer

    s = setup
    facts = load_knowledge_sets([KNOWLEDGE / "world_facts.json"])["world_facts"][:6]
    splits = {"forget": s.forget, "holdout": s.holdout, "retain": s.retain[:8]}
    measured = Scorer(s.tokenizer, splits, s.config.model.max_length, facts).measure(s.target, None)
    assert measured["facts_option_prob"] == pytest.approx(knowledge_run.metrics["target"]["world_facts_prob"], abs=1e-6)
    assert "facts_option_prob" not in Scorer(s.tokenizer, splits, s.config.model.max_length).measure(s.target, None)
