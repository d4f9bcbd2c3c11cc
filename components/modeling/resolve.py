"""Which model each role is: the one decision "the user's own model, or the embedded demo".

Every stage and the Prefect flow ask :func:`model_plan`; nothing else looks at
``model.base`` / ``model.oracle``. Pipeline folders (``models/target`` ...) either hold a model or
a ``model-ref.json`` naming the real location (see :mod:`components.modeling.io`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from components.config import Config
from components.paths import ModelFiles, Paths, resolve_local


@dataclass(frozen=True)
class ModelPlan:
    """Where the target and the oracle come from.

    ``target`` is the user's model (a local directory or a hub name); None means the demo
    target trained here. ``oracle`` is the user's reference model, or None (no oracle with a
    user's target; the demo oracle is retrained on the retain set).
    """

    target: str | None
    oracle: str | None

    @property
    def is_demo(self) -> bool:
        return self.target is None


def model_plan(config: Config, config_root: Path) -> ModelPlan:
    """Resolve ``model.base`` / ``model.oracle`` against the pipeline root (hub names pass through)."""
    if not config.model.base:
        return ModelPlan(target=None, oracle=None)
    oracle = resolve_local(config.model.oracle, config_root) if config.model.oracle else None
    return ModelPlan(target=resolve_local(config.model.base, config_root), oracle=oracle)


def link_user_models(plan: ModelPlan, paths: Paths) -> None:
    """Make ``paths.target`` / ``paths.oracle`` stand for the user's models (no copies)."""
    from components.modeling.io import write_model_ref

    write_model_ref(paths.target, plan.target)
    write_model_ref(paths.oracle, plan.oracle)


def target_source(plan: ModelPlan, repo: Paths) -> str | None:
    """The production target's location: the user's model, or the demo target under ``repo``
    (None while the demo target has not been trained yet)."""
    if plan.target is not None:
        return plan.target
    return str(repo.target.resolve()) if ModelFiles(repo.target).hf_config.exists() else None


def longest_example(tokenizer, records) -> int:
    """Tokens of the longest training/evaluation example the records make (alternative answers included)."""
    from components.data.records import QARecord
    from components.modeling.encoding import encode_record

    longest = 0
    for record in records:
        answers: list[str | None] = [None]
        if isinstance(record, QARecord):
            answers += [a for a in (record.paraphrased_answer, *record.perturbed_answers) if a]
        for answer in answers:
            longest = max(longest, len(encode_record(tokenizer, record, 1 << 30, answer=answer).input_ids))
    return longest


def load_tokenizer(source: str | Path, model_config):
    """A model's tokenizer as every stage sees it (``model.prompt: plain`` drops its chat template)."""
    from transformers import AutoTokenizer

    from components.modeling.encoding import ensure_pad_token

    tokenizer = AutoTokenizer.from_pretrained(str(source))
    ensure_pad_token(tokenizer)
    if model_config.prompt == "plain":
        tokenizer.chat_template = None
    return tokenizer
