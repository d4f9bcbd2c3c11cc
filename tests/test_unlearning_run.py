"""run_unlearning on the tiny trained model: every method forgets, batching and resume are exact."""

from __future__ import annotations

import copy
import dataclasses
import json
import warnings

import pytest
import torch

from components.config import LoRAConfig, UnlearnConfig
from components.data.records import TextRecord
from components.modeling.encoding import encode_record
from components.modeling.finetune import mean_answer_prob
from components.modeling.io import save_model
from components.unlearning import (
    FORGET_LOSSES,
    RETAIN_LOSSES,
    RunOutputs,
    StaleCheckpointWarning,
    UnlearningDivergedError,
    run_unlearning,
)

FAST = dict(steps=4, lr=1e-3, batch_size=8, checkpoint_every=0)


pytestmark = pytest.mark.usefixtures("one_thread")  # every test here runs on one torch thread


def unlearn(setup, config: UnlearnConfig, **kwargs):
    model = copy.deepcopy(setup.target)
    return run_unlearning(model, setup.tokenizer, setup.forget, setup.retain, config,
                          max_length=setup.config.model.max_length, seed=0,
                          outputs=RunOutputs(show_progress=False, **kwargs),
                          holdout=setup.holdout)  # `match` sets its targets from the holdout


def forget_answer_prob(setup, model) -> float:
    encoded = [encode_record(setup.tokenizer, record, setup.config.model.max_length) for record in setup.forget]
    return mean_answer_prob(model, encoded, setup.tokenizer.pad_token_id)


def weights(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def assert_same_weights(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0.0, atol=atol, msg=name)


@pytest.mark.parametrize("combiner", ["blur", "weighted_sum"])
@pytest.mark.parametrize("retain_loss", sorted(RETAIN_LOSSES))
@pytest.mark.parametrize("forget_loss", sorted(FORGET_LOSSES))
def test_every_forget_loss_lowers_forget_answer_probability(tiny_setup, forget_loss, retain_loss, combiner):
    config = UnlearnConfig(forget_loss=forget_loss, retain_loss=retain_loss, combiner=combiner, **FAST)
    before = forget_answer_prob(tiny_setup, tiny_setup.target)
    result = unlearn(tiny_setup, config)
    assert forget_answer_prob(tiny_setup, result.model) < 0.9 * before
    assert len(result.diagnostics) == result.steps == 4


def test_retain_as_lower_level_ablation_runs_and_forgets(tiny_setup):
    before = forget_answer_prob(tiny_setup, tiny_setup.target)
    result = unlearn(tiny_setup, UnlearnConfig(lower="retain", **FAST))
    assert forget_answer_prob(tiny_setup, result.model) < before


# SGD, because AdamW's first steps are about lr * sign(g): they turn float rounding in
# near-zero gradient entries into differences of order lr, hiding what is compared here.
SAME_STEP = dict(FAST, steps=3, optimizer="sgd", lr=0.1)


def test_two_micro_batches_of_four_make_the_same_step_as_one_batch_of_eight(tiny_setup):
    whole = unlearn(tiny_setup, UnlearnConfig(**{**SAME_STEP, "batch_size": 8, "grad_accum": 1}))
    halves = unlearn(tiny_setup, UnlearnConfig(**{**SAME_STEP, "batch_size": 4, "grad_accum": 2}))
    assert_same_weights(weights(halves.model), weights(whole.model), atol=1e-6)
    for a, b in zip(halves.diagnostics, whole.diagnostics):
        assert a["forget_loss"] == pytest.approx(b["forget_loss"], rel=1e-5)
        assert a["inner"] == pytest.approx(b["inner"], rel=1e-4)


class Crash(Exception):
    pass


def test_resume_after_a_crash_gives_the_weights_of_an_uninterrupted_run(tiny_setup, tmp_path):
    config = UnlearnConfig(**{**FAST, "steps": 5, "checkpoint_every": 2, "retain_loss": "kl",
                              "scheduler": "cosine", "warmup_steps": 1})
    uninterrupted = unlearn(tiny_setup, config)

    def crash_at_step_3(record):
        if record["step"] == 3:
            raise Crash

    with pytest.raises(Crash):
        unlearn(tiny_setup, config, checkpoint_dir=tmp_path / "ckpt", on_step=crash_at_step_3)
    log = tmp_path / "log.jsonl"
    resumed = unlearn(tiny_setup, config, checkpoint_dir=tmp_path / "ckpt", log_path=log)

    assert resumed.resumed_from == 2
    assert_same_weights(weights(resumed.model), weights(uninterrupted.model))
    assert resumed.diagnostics == uninterrupted.diagnostics
    assert [json.loads(line) for line in log.read_text().splitlines()] == uninterrupted.diagnostics


def test_checkpoint_of_a_different_config_is_not_resumed(tiny_setup, tmp_path):
    unlearn(tiny_setup, UnlearnConfig(**{**FAST, "steps": 2, "checkpoint_every": 1}), checkpoint_dir=tmp_path)
    changed = UnlearnConfig(**{**FAST, "steps": 2, "checkpoint_every": 1, "lr": 2e-3})
    with pytest.warns(StaleCheckpointWarning, match="different run"):
        result = unlearn(tiny_setup, changed, checkpoint_dir=tmp_path)
    assert result.resumed_from is None
    assert [record["step"] for record in result.diagnostics] == [1, 2]


def test_finished_checkpoint_resumes_to_the_same_model_without_training(tiny_setup, tmp_path):
    config = UnlearnConfig(**{**FAST, "steps": 2, "checkpoint_every": 5})
    first = unlearn(tiny_setup, config, checkpoint_dir=tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StaleCheckpointWarning)
        again = unlearn(tiny_setup, config, checkpoint_dir=tmp_path)
    assert again.resumed_from == 2
    assert_same_weights(weights(again.model), weights(first.model))


def test_nan_in_the_forward_pass_stops_the_run_and_no_model_is_written(tiny_setup, tmp_path):
    model = copy.deepcopy(tiny_setup.target)
    poison = {"on": False}

    def nan_after_first_step(module, inputs, output):
        return output * float("nan") if poison["on"] else output

    model.model.layers[0].register_forward_hook(nan_after_first_step)
    output_dir = tmp_path / "unlearned"

    def unlearn_and_save():
        result = run_unlearning(model, tiny_setup.tokenizer, tiny_setup.forget, tiny_setup.retain,
                                UnlearnConfig(**{**FAST, "checkpoint_every": 1}),
                                max_length=tiny_setup.config.model.max_length, seed=0,
                                outputs=RunOutputs(show_progress=False, checkpoint_dir=tmp_path / "ckpt",
                                                   on_step=lambda record: poison.update(on=True)))
        save_model(result.model, tiny_setup.tokenizer, output_dir)

    with pytest.raises(UnlearningDivergedError, match="diverged at step 2: forget_loss=nan"):
        unlearn_and_save()
    assert not output_dir.exists()
    assert torch.load(tmp_path / "ckpt" / "last.pt", weights_only=False)["step"] == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_lora_trains_only_adapters_and_returns_a_plain_merged_model(tiny_setup):
    config = UnlearnConfig(**{**FAST, "lr": 1e-2, "lora": LoRAConfig(enabled=True, r=4, alpha=8)})
    start = weights(tiny_setup.target)
    result = unlearn(tiny_setup, config)
    after = weights(result.model)
    assert type(result.model) is type(tiny_setup.target)
    assert after.keys() == start.keys()
    changed = {name for name in after if not torch.equal(after[name], start[name])}
    assert changed and all(name.endswith(("q_proj.weight", "v_proj.weight")) for name in changed)
    assert forget_answer_prob(tiny_setup, result.model) < forget_answer_prob(tiny_setup, tiny_setup.target)


def test_diagnostics_are_logged_as_json_lines(tiny_setup, tmp_path):
    log = tmp_path / "logs" / "unlearn.jsonl"
    result = unlearn(tiny_setup, UnlearnConfig(**{**FAST, "steps": 2}), log_path=log)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert lines == result.diagnostics
    assert set(lines[0]) == {"step", "forget_loss", "retain_loss", "inner", "forget_norm_sq", "retain_norm_sq",
                             "cos", "xi", "grad_norm", "lr"}


def test_epochs_set_the_number_of_steps_from_the_forget_set_size(tiny_setup):
    result = unlearn(tiny_setup, UnlearnConfig(**{**FAST, "epochs": 2, "batch_size": 4}))
    assert result.steps == 2 * len(tiny_setup.forget) // 4


def test_idk_refuses_document_forget_sets(tiny_setup):
    documents = [TextRecord(text="Some article about a person.", subject="x")]
    with pytest.raises(ValueError, match="idk' needs question/answer records"):
        unlearn(dataclasses.replace(tiny_setup, forget=documents), UnlearnConfig(forget_loss="idk", **FAST))
