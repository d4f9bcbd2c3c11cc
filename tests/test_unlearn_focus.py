"""unlearn.focus: match's gradient on the answer tokens that depend on who the question names."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch

from components.config import UnlearnConfig
from components.data.records import QARecord
from components.modeling.encoding import IGNORE_INDEX, encode_record
from components.unlearning import RunOutputs, run_unlearning
from components.data.loaders import load_records

from components.unlearning.focus import names_by_subject, other_subjects, subject_weights
from components.unlearning.losses import LossContext, holdout_match

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).parents[1]


def _weights(setup, forget):
    encoded = [encode_record(setup.tokenizer, r, setup.config.model.max_length) for r in forget]
    names = other_subjects(forget, setup.holdout, setup.retain)
    pad = setup.tokenizer.pad_token_id if setup.tokenizer.pad_token_id is not None else setup.tokenizer.eos_token_id
    return encoded, subject_weights(setup.target, setup.tokenizer, forget, encoded, names,
                                    max_length=setup.config.model.max_length, pad_token_id=pad)


def test_other_subjects_are_unseen_names_never_the_forget_subjects(tiny_setup):
    names = other_subjects(tiny_setup.forget, tiny_setup.holdout, tiny_setup.retain)
    assert names == sorted({r.subject for r in tiny_setup.holdout})
    assert not set(names) & {r.subject for r in tiny_setup.forget}
    # no usable holdout names: the retain set's, still never a forget subject
    assert set(other_subjects(tiny_setup.forget, [], tiny_setup.retain)) == {r.subject for r in tiny_setup.retain}


def test_weights_sit_on_the_answer_have_mean_one_and_peak_where_the_subject_matters(tiny_setup):
    encoded, weights = _weights(tiny_setup, tiny_setup.forget)
    peaked = 0
    for example, row in zip(encoded, weights):
        answer = torch.tensor([label != IGNORE_INDEX for label in example.labels])
        assert (row[: len(example.labels)][~answer] == 0).all() and (row[len(example.labels):] == 0).all()
        assert row[: len(example.labels)][answer].mean().item() == pytest.approx(1.0, abs=1e-5)
        peaked += row.max().item() > 1.5
    # the trained target knows these subjects: most answers have tokens that hang on the name
    assert peaked >= len(encoded) // 2


def test_subjects_named_by_an_id_are_asked_about_by_the_name_their_records_use():
    """TOFU's files have no name field (`world.rows_per_subject` calls the authors subject-0001, ...)."""
    world = load_records(ROOT / "data" / "tofu" / "world.json", rows_per_subject=20)
    holdout = load_records(ROOT / "data" / "tofu" / "holdout.json", rows_per_subject=20)
    names = names_by_subject(world)
    assert names["subject-0001"] == "Jaime Vasquez" and len(set(names.values())) == 6
    assert sum(names[r.subject] in r.question for r in world) >= 0.9 * len(world)
    forget = [r for r in world if r.subject in ("subject-0001", "subject-0002")]
    # the holdout's ids repeat the world's; its people do not, and a forget author is never offered
    others = other_subjects(forget, holdout, world)
    assert others == sorted(names_by_subject(holdout).values()) and names["subject-0001"] not in others


def test_weights_are_the_same_whether_the_subject_is_given_by_name_or_by_id(tiny_setup):
    by_id = [dataclasses.replace(r, subject="subject-0001") for r in tiny_setup.forget]
    assert names_by_subject(by_id) == {"subject-0001": tiny_setup.forget[0].subject}
    _, named = _weights(tiny_setup, tiny_setup.forget)
    _, anonymous = _weights(tiny_setup, by_id)
    assert torch.equal(named, anonymous) and (named.amax(dim=1) > 1.5).any()


def test_a_record_that_does_not_name_its_subject_keeps_uniform_weights(tiny_setup):
    anonymous = [dataclasses.replace(r, question=r.question.replace(r.subject, "this person"))
                 for r in tiny_setup.forget[:3]]
    encoded, weights = _weights(tiny_setup, anonymous)
    for example, row in zip(encoded, weights):
        answer = [label != IGNORE_INDEX for label in example.labels]
        assert row[: len(answer)].tolist() == [1.0 if a else 0.0 for a in answer]


def test_focus_keeps_the_loss_value_and_moves_its_gradient_to_the_weighted_tokens():
    class Free(torch.nn.Module):  # free logits per position: each token's gradient is its own
        def __init__(self):
            super().__init__()
            self.logits = torch.nn.Parameter(torch.zeros(1, 4, 3))

        def forward(self, input_ids, attention_mask):
            return type("Out", (), {"logits": self.logits})()

    batch = {"input_ids": torch.ones(1, 4, dtype=torch.long), "attention_mask": torch.ones(1, 4, dtype=torch.long),
             "labels": torch.tensor([[IGNORE_INDEX, 1, 1, 1]]), "target_nll": torch.tensor([5.0])}
    plain, focused = Free(), Free()
    loss = holdout_match(plain, batch, LossContext(UnlearnConfig(forget_loss="match")))
    weighted = holdout_match(focused, batch | {"token_weight": torch.tensor([[0.0, 0.0, 3.0, 0.0]])},
                             LossContext(UnlearnConfig(forget_loss="match", focus="subject")))
    assert weighted.item() == pytest.approx(loss.item())
    loss.sum().backward()
    weighted.sum().backward()
    assert (plain.logits.grad[0, :3, 1] > 0).all()  # descending the loss lowers all three answer tokens' logits
    grads = focused.logits.grad[0, :3, 1]
    assert grads[1] > 0 and grads[0] == 0 and grads[2] == 0  # only the weighted one's


def test_only_match_is_focused(tiny_setup):
    from components.unlearning.run import prepare_data

    def extra(loss):
        return prepare_data(copy.deepcopy(tiny_setup.target), tiny_setup.tokenizer, tiny_setup.forget,
                            tiny_setup.retain, UnlearnConfig(forget_loss=loss, focus="subject", steps=1),
                            max_length=tiny_setup.config.model.max_length, seed=0,
                            holdout=tiny_setup.holdout).forget_extra

    assert "token_weight" in extra("match") and "token_weight" not in extra("npo")


def test_a_focused_run_stops_on_the_holdout_and_raises_the_subject_tokens_more(tiny_setup):
    config = dict(forget_loss="match", combiner="blur", gamma=0.1, lr=1e-3, batch_size=8, checkpoint_every=0,
                  steps=200, stop={"rule": "holdout", "every": 2, "criterion": "landed"})

    def run(focus):
        return run_unlearning(copy.deepcopy(tiny_setup.target), tiny_setup.tokenizer, tiny_setup.forget,
                              tiny_setup.retain, UnlearnConfig(**config, focus=focus),
                              max_length=tiny_setup.config.model.max_length, seed=0,
                              outputs=RunOutputs(show_progress=False), holdout=tiny_setup.holdout)

    encoded, weights = _weights(tiny_setup, tiny_setup.forget)
    pad = tiny_setup.tokenizer.pad_token_id if tiny_setup.tokenizer.pad_token_id is not None else \
        tiny_setup.tokenizer.eos_token_id

    def subject_share(model):  # NLL on the subject's tokens over all the answer NLL, summed over records
        from components.modeling.scoring import scored_batches

        subject = total = 0.0
        with torch.no_grad():
            for start in range(0, len(encoded), 16):
                scores = next(scored_batches(model, encoded[start:start + 16], pad, 16, torch.device("cpu")))
                w = weights[start:start + 16, 1:scores.token_logps.shape[1] + 1]
                nll = -scores.token_logps
                subject += (nll * (w > 1.0)).sum().item()
                total += nll.sum().item()
        return subject / total

    focused, plain = run("subject"), run("all")
    assert focused.stop["reason"].startswith("landed") and focused.steps < 200
    assert subject_share(focused.model) > subject_share(plain.model)
