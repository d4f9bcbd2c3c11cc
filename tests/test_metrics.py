"""Each metric against a value computed by hand on a fixed tiny example.

The model here is a bigram table of probabilities chosen so every number can be worked
out on paper; the tokenizer maps the words "yes" and "no" to their own ids and every
other word to <unk>, so a question is all <unk> and only the answer words matter.
"""

from __future__ import annotations

import math
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from rouge_score import rouge_scorer
from scipy.stats import hmean, ks_2samp
from sklearn.metrics import roc_auc_score

from components.config import EvalConfig
from components.data.records import QARecord, TextRecord
from components.evaluation import METRICS, EvaluationContext, register_metric
from components.evaluation import formulas
from components.evaluation.inference import teacher_forced
from components.modeling.encoding import encode_record
from components.modeling.io import LoadedModel

PAD, BOS, EOS, UNK, YES, NO = range(6)

# P[previous token] = distribution of the next token (each row sums to 1).
TARGET_TABLE = {
    UNK: [0.05, 0.05, 0.10, 0.10, 0.50, 0.20],
    YES: [0.05, 0.05, 0.10, 0.05, 0.50, 0.25],
    NO: [0.05, 0.05, 0.50, 0.10, 0.10, 0.20],
}
ORACLE_TABLE = {
    UNK: [0.05, 0.05, 0.10, 0.10, 0.20, 0.50],
    YES: [0.05, 0.05, 0.50, 0.20, 0.10, 0.10],
    NO: [0.05, 0.05, 0.20, 0.10, 0.10, 0.50],
}


class WordTokenizer:
    pad_token_id, bos_token_id, eos_token_id = PAD, BOS, EOS
    words = {"yes": YES, "no": NO}

    def encode(self, text, add_special_tokens=False):
        return [self.words.get(word, UNK) for word in text.split()]

    def decode(self, ids, skip_special_tokens=True):
        names = {YES: "yes", NO: "no", UNK: "?"}
        return " ".join(names[i] for i in ids if i in names)

    def __len__(self):
        return 6


class BigramLM(torch.nn.Module):
    """Logits that depend only on the previous token: log of a fixed probability table."""

    def __init__(self, table: dict[int, list[float]]):
        super().__init__()
        rows = [table.get(token, [1 / 6] * 6) for token in range(6)]
        self.log_table = torch.nn.Parameter(torch.log(torch.tensor(rows, dtype=torch.float32)))

    def forward(self, input_ids, attention_mask=None, **_):
        return SimpleNamespace(logits=self.log_table[input_ids])

    def generate(self, input_ids, attention_mask, max_new_tokens, eos_token_id, pad_token_id, **_):
        """Greedy continuation, as ``transformers`` returns it: prompt, new tokens, pad after eos."""
        rows = input_ids.tolist()
        done = [False] * len(rows)
        for _ in range(max_new_tokens):
            for i, row in enumerate(rows):
                row.append(pad_token_id if done[i] else int(self.log_table[row[-1]].argmax()))
                done[i] = done[i] or row[-1] in eos_token_id
        return torch.tensor(rows)


FACT = QARecord(question="who?", answer="yes no", subject="A", paraphrased_answer="no yes",
                perturbed_answers=("yes", "no"))
SHORT = QARecord(question="what?", answer="yes", subject="B")


def context(forget, holdout=(), *, oracle=True, retain=(), **config) -> EvaluationContext:
    tokenizer = WordTokenizer()
    models = {"target": LoadedModel(BigramLM(TARGET_TABLE), tokenizer, "target"),
              "oracle": LoadedModel(BigramLM(ORACLE_TABLE), tokenizer, "oracle") if oracle else None}
    return EvaluationContext(models, {"forget": list(forget), "retain": list(retain), "holdout": list(holdout)},
                             EvalConfig(**config), max_length=16)


# ---- answer probability, by hand: "yes no" after the question is p(yes|unk) p(no|yes) p(eos|no)
YES_NO_LOGPS = [math.log(0.5), math.log(0.25), math.log(0.5)]
YES_NO_PROB = (0.5 * 0.25 * 0.5) ** (1 / 3)


def test_answer_tokens_alone_are_labelled_and_scored_teacher_forced():
    encoded = encode_record(WordTokenizer(), FACT, max_length=16)
    assert encoded.input_ids == [BOS, UNK, UNK, UNK, YES, NO, EOS]  # "Question:", "who?", "Answer:" are unk
    [evidence] = teacher_forced(BigramLM(TARGET_TABLE), [encoded], PAD, batch_size=4)
    np.testing.assert_allclose(evidence.logps, YES_NO_LOGPS, rtol=1e-6)


def test_answer_probability_is_exp_of_minus_mean_answer_token_nll():
    result = context([FACT]).metric("prob", "target", "forget")
    assert result["by_item"] == pytest.approx([YES_NO_PROB], rel=1e-6)
    assert result["value"] == pytest.approx(YES_NO_PROB, rel=1e-6)


def test_batching_and_padding_do_not_change_per_item_values():
    # "yes" after the question: p(yes|unk) p(eos|yes) = 0.5 * 0.1
    result = context([FACT, SHORT, FACT], batch_size=2).metric("prob", "target", "forget")
    assert result["by_item"] == pytest.approx([YES_NO_PROB, math.sqrt(0.05), YES_NO_PROB], rel=1e-6)
    assert result["value"] == pytest.approx((2 * YES_NO_PROB + math.sqrt(0.05)) / 3, rel=1e-6)


def test_truth_ratio_is_geometric_mean_of_perturbed_over_paraphrased_probability():
    paraphrase = (0.2 * 0.1 * 0.1) ** (1 / 3)  # "no yes": p(no|unk) p(yes|no) p(eos|yes)
    perturbed_yes = math.sqrt(0.5 * 0.1)  # "yes": p(yes|unk) p(eos|yes)
    perturbed_no = math.sqrt(0.2 * 0.5)  # "no": p(no|unk) p(eos|no)
    expected = math.sqrt(perturbed_yes * perturbed_no) / paraphrase
    result = context([FACT, SHORT]).metric("truth_ratio", "target", "forget")
    assert result["by_item"][0] == pytest.approx(expected, rel=1e-6)
    assert result["by_item"][1] is None  # no paraphrase or perturbed answers


def test_truth_ratio_stays_finite_for_a_collapsed_model():
    ratio = formulas.truth_ratio(np.array([-5000.0]), [np.array([-1.0])])
    assert math.isfinite(ratio) and formulas.forget_truth_ratio_score(ratio) == pytest.approx(0.0)


def test_truth_ratio_scores_follow_tofu_for_forget_and_retain_sets():
    ratios = [0.5, 2.0, 1.0, 0.25]
    assert [formulas.forget_truth_ratio_score(r) for r in ratios] == [0.5, 0.5, 1.0, 0.25]
    assert [formulas.utility_truth_ratio_score(r) for r in ratios] == [0.5, 0.0, 0.0, 0.75]


def test_extraction_strength_is_one_minus_shortest_prefix_after_which_greedy_reproduces_the_rest():
    assert formulas.extraction_strength(np.array([True, True, True, True])) == 1.0
    assert formulas.extraction_strength(np.array([False, True, True, True])) == 0.75
    assert formulas.extraction_strength(np.array([True, False, True, True])) == 0.5
    assert formulas.extraction_strength(np.array([True, True, True, False])) == 0.0


def test_extraction_strength_reads_greedy_hits_from_one_forward_pass():
    # argmax after unk is yes (hit), after yes is yes (miss: answer says no), after no is eos (hit)
    result = context([FACT]).metric("extraction_strength", "target", "forget")
    assert result["by_item"] == pytest.approx([1 - 2 / 3])


def test_min_k_score_averages_the_least_likely_fraction_of_tokens():
    assert formulas.min_k_score(np.log([0.9, 0.5, 0.1, 0.2, 0.8]), 0.4) == pytest.approx(np.log([0.1, 0.2]).mean())
    assert formulas.min_k_score(np.array([-3.0]), 0.4) == -3.0  # at least one token
    result = context([FACT]).metric("mia_mink", "target", "forget")
    assert result["by_item"] == pytest.approx([math.log(0.25)])  # int(3 * 0.4) = 1 token


def test_loss_and_zlib_scores_are_minus_mean_nll_and_that_over_compressed_length():
    ctx = context([FACT])
    mean_logp = float(np.mean(YES_NO_LOGPS))
    assert ctx.metric("mia_loss", "target", "forget")["by_item"] == pytest.approx([mean_logp])
    compressed = len(zlib.compress("yes no".encode("utf-8")))
    assert ctx.metric("mia_zlib", "target", "forget")["by_item"] == pytest.approx([mean_logp / compressed])


def test_rouge_l_recall_and_f1_match_rouge_score_and_hand_count():
    reference, generation = "the cat sat on the mat", "the cat lay on a mat"
    # longest common subsequence: "the cat on mat", 4 of 6 reference words, 4 of 6 generated
    assert formulas.rouge_l_recall(reference, generation) == pytest.approx(4 / 6)
    assert formulas.rouge_l_f1(reference, generation) == pytest.approx(4 / 6)
    stemmed = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True).score("cats running", "cat ran")
    plain = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False).score("cats running", "cat running here")
    assert formulas.rouge_l_recall("cats running", "cat ran") == stemmed["rougeL"].recall
    assert formulas.rouge_l_f1("cats running", "cat running here") == plain["rougeL"].fmeasure


def test_rouge_and_knowmem_score_the_greedy_answer():
    # greedy after the question: yes, then yes again (p 0.5) forever -> "yes yes yes yes"
    ctx = context([FACT], max_new_tokens=4)
    assert ctx.generations("target", "forget")[0].text == "yes yes yes yes"
    assert ctx.metric("rouge", "target", "forget")["value"] == pytest.approx(1 / 2)  # LCS 1 of 2 answer words
    assert ctx.metric("knowmem", "target", "forget")["value"] == pytest.approx(1 / 3)  # F1 of P 1/4, R 1/2


def test_verbmem_scores_the_greedy_continuation_of_the_text_prefix():
    # prefix "no yes" (2 tokens), true continuation "no yes"; greedy after yes: "yes yes"
    ctx = context([TextRecord(text="no yes no yes no", subject="A")], verbmem_prefix_tokens=2, max_new_tokens=2)
    generation = ctx.generations("target", "forget")[0]
    assert (generation.text, generation.reference) == ("yes yes", "no yes")
    assert ctx.metric("verbmem", "target", "forget")["value"] == pytest.approx(0.5)  # LCS 1: P 1/2, R 1/2


def test_qa_generations_are_cut_at_muse_stop_strings():
    assert formulas.cut_at_stop_strings("Lisbon.\n\nQuestion: next") == "Lisbon."
    assert formulas.cut_at_stop_strings("Lisbon.\nQuestion: next") == "Lisbon."


def test_forget_quality_is_the_ks_two_sample_p_value():
    rng = np.random.default_rng(0)
    ours, oracle = rng.lognormal(0, 1, 30), rng.lognormal(0.8, 1, 25)
    assert formulas.ks_p_value(ours, oracle) == pytest.approx(ks_2samp(ours, oracle).pvalue)
    assert formulas.ks_p_value(oracle, oracle) == 1.0


def test_forget_quality_compares_truth_ratios_with_the_oracles():
    ctx = context([FACT, FACT, SHORT])
    ours = [r for r in ctx.metric("truth_ratio", "target", "forget")["by_item"] if r is not None]
    oracle = [r for r in ctx.metric("truth_ratio", "oracle", "forget")["by_item"] if r is not None]
    assert ctx.metric("forget_quality", "target", "forget")["value"] == pytest.approx(ks_2samp(ours, oracle).pvalue)
    assert ctx.metric("forget_quality", "oracle", "forget")["value"] == 1.0


def test_membership_auc_matches_sklearn_and_a_hand_count_of_pairs():
    members, nonmembers = [3.0, 2.0], [1.0, 2.5]
    # member above non-member in 3 of the 4 pairs
    assert formulas.membership_auc(members, nonmembers) == 0.75
    rng = np.random.default_rng(1)
    m, n = rng.normal(1, 1, 40), rng.normal(0, 1, 50)
    assert formulas.membership_auc(m, n) == pytest.approx(roc_auc_score([1] * 40 + [0] * 50, np.r_[m, n]))


def test_membership_auc_separates_forget_from_holdout_by_score():
    # the forget fact is likelier (-0.92 mean logp) than the holdout one (-1.50): AUC 1
    assert context([FACT], [SHORT]).metric("mia_auc_loss", "target", "forget")["value"] == 1.0


def test_privleak_is_the_relative_difference_of_muse_aucs_in_percent():
    # MUSE's AUC takes the holdout as the positive class: 1 - 0.9 = 0.1 and 1 - 0.5 = 0.5
    assert formulas.privleak(0.9, 0.5) == pytest.approx((0.1 - 0.5) / 0.5 * 100)
    assert formulas.privleak(0.3, 0.4) == pytest.approx((0.7 - 0.6) / 0.6 * 100)
    assert formulas.privleak(0.62, 0.62) == 0.0


# Target probabilities (geometric mean per token): "yes no" YES_NO_PROB, "yes" sqrt(0.5 * 0.1), "no" sqrt(0.2 * 0.5)
YES_PROB, NO_PROB = math.sqrt(0.05), math.sqrt(0.1)
# The answer is its own paraphrase and "no" the wrong option: TR = NO_PROB / YES_NO_PROB ~ 0.80
KNOWN = QARecord(question="who?", answer="yes no", subject="A", paraphrased_answer="yes no", perturbed_answers=("no",))
# The reverse: TR = YES_NO_PROB / NO_PROB ~ 1.26
UNSURE = QARecord(question="who?", answer="no", subject="B", paraphrased_answer="no", perturbed_answers=("yes no",))


def test_model_utility_is_scipys_harmonic_mean_of_probability_rouge_and_truth_ratio_score():
    ctx = context([], retain=[KNOWN], max_new_tokens=4)
    # greedy "yes yes yes yes": ROUGE-L recall 1/2; truth-ratio score 1 - NO_PROB / YES_NO_PROB
    parts = [YES_NO_PROB, 0.5, 1 - NO_PROB / YES_NO_PROB]
    assert ctx.metric("model_utility", "target", "retain")["value"] == pytest.approx(hmean(parts), rel=1e-6)


def test_model_utility_is_zero_when_any_part_is_zero():
    # FACT's perturbed answers are likelier than its paraphrase for the target: truth-ratio score 0
    ctx = context([], retain=[FACT])
    assert ctx.metric("truth_ratio_utility", "target", "retain")["value"] == 0.0
    assert ctx.metric("model_utility", "target", "retain")["value"] == 0.0


def test_option_probability_is_the_answers_share_of_every_options_probability():
    # FACT's options: the answer "yes no" and the wrong "yes" and "no"
    result = context([FACT]).metric("option_prob", "target", "forget")
    assert result["by_item"] == pytest.approx([YES_NO_PROB / (YES_NO_PROB + YES_PROB + NO_PROB)], rel=1e-6)
    assert context([SHORT]).metric("option_prob", "target", "forget")["by_item"] == [None]  # no wrong options


def test_option_accuracy_picks_the_option_with_the_highest_mean_log_probability():
    ctx = context([FACT, UNSURE])
    # target: "yes no" (0.40) beats "yes" (0.22) and "no" (0.32); "no" (0.32) loses to "yes no" (0.40)
    assert ctx.metric("option_acc", "target", "forget")["by_item"] == [1.0, 0.0]
    # oracle: "yes no" (p 0.2 * 0.1 * 0.2, 0.16 per token) loses to "yes" and "no" (0.32 each)
    assert ctx.metric("option_acc", "oracle", "forget")["by_item"][0] == 0.0
    assert formulas.option_correct(np.log([0.5]), [np.log([0.5])]) == 0.0  # a tie is not a pick


def test_forget_holdout_ks_p_compares_truth_ratios_and_flags_remembered_and_over_forgotten_sets():
    low, high = [KNOWN] * 5, [UNSURE] * 5
    separated = ks_2samp([NO_PROB / YES_NO_PROB] * 5, [YES_NO_PROB / NO_PROB] * 5).pvalue
    assert separated < 0.05
    # forget set more familiar than the holdout (not forgotten), and less (over-forgotten): both stand out
    assert context(low, high).metric("forget_holdout_ks_p", "target", "forget")["value"] == pytest.approx(separated)
    assert context(high, low).metric("forget_holdout_ks_p", "target", "forget")["value"] == pytest.approx(separated)
    assert context(low, low).metric("forget_holdout_ks_p", "target", "forget")["value"] == 1.0


def test_forget_holdout_ks_p_uses_losses_for_text_records_and_needs_no_oracle():
    forget = [TextRecord(text="yes no yes", subject="A"), TextRecord(text="no no", subject="A")]
    holdout = [TextRecord(text="yes yes", subject="B"), TextRecord(text="no yes no no", subject="B")]
    ctx = context(forget, holdout, oracle=False)
    losses = [[-v for v in ctx.metric("mia_loss", "target", split)["by_item"]] for split in ("forget", "holdout")]
    assert ctx.metric("forget_holdout_ks_p", "target", "forget")["value"] == pytest.approx(ks_2samp(*losses).pvalue)


def test_every_registered_metric_returns_value_and_by_item():
    ctx = context([FACT, SHORT], [SHORT])
    for name in METRICS:
        split = "retain" if name == "model_utility" else "forget"
        result = ctx.metric(name, "target", split)
        assert set(result) == {"value", "by_item"}, name


def test_forget_quality_asks_for_truth_ratios_by_name_instead_of_recomputing():
    class Recording(EvaluationContext):
        asked: list = []
        passes: list = []

        def metric(self, name, model, split):
            self.asked.append((name, model, split))
            return super().metric(name, model, split)

        def alternatives(self, model, split):
            self.passes.append(model)
            return super().alternatives(model, split)

    tokenizer = WordTokenizer()
    ctx = Recording({"target": LoadedModel(BigramLM(TARGET_TABLE), tokenizer, "t"),
                     "oracle": LoadedModel(BigramLM(ORACLE_TABLE), tokenizer, "o")},
                    {"forget": [FACT], "retain": [], "holdout": []}, EvalConfig(), max_length=16)
    ctx.metric("truth_ratio_forget", "target", "forget")
    ctx.metric("forget_quality", "target", "forget")
    assert ("truth_ratio", "target", "forget") in ctx.asked and ("truth_ratio", "oracle", "forget") in ctx.asked
    assert sorted(ctx.passes) == ["oracle", "target"]  # one scoring pass per model, reused


def test_oracle_dependent_metrics_are_null_without_an_oracle():
    ctx = context([FACT], [SHORT], oracle=False)
    assert ctx.metric("forget_quality", "target", "forget") == {"value": None, "by_item": []}
    assert ctx.metric("privleak", "target", "forget")["value"] is None
    assert ctx.metric("prob", "oracle", "forget") == {"value": None, "by_item": [None]}
    assert ctx.metric("prob", "target", "forget")["value"] is not None


def test_text_records_get_no_qa_metrics():
    ctx = context([TextRecord(text="yes no yes", subject="A")])
    assert ctx.metric("truth_ratio", "target", "forget")["value"] is None
    assert ctx.metric("prob", "target", "forget")["value"] is not None


def test_a_metric_name_can_be_registered_only_once():
    with pytest.raises(ValueError, match="already registered"):
        register_metric("prob")(lambda ctx, model, split: {"value": None, "by_item": []})


def test_utility_hmean_states_its_edge_cases_and_the_benchmarks_retain_part_uses_it():
    from benchmarks.calibration import retain_utility
    from components.evaluation.metrics import utility_hmean

    assert utility_hmean([0.5, 1.0]) == pytest.approx(2 / 3)
    assert utility_hmean([0.5, 0.0]) == 0.0
    assert utility_hmean([]) is None
    assert utility_hmean([0.5, float("nan")]) is None
    parts = {"retain_prob": 0.9, "retain_rouge": 0.6, "retain_truth_ratio": 0.3}
    assert retain_utility(parts) == pytest.approx(utility_hmean([0.9, 0.6, 0.3]))
    assert retain_utility(parts | {"retain_rouge": None}) is None
