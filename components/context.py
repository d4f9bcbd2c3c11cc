"""A run's context: the configuration as the stages run with it, and the folders they use.

Every entry point (``python -m components.stages``, the Prefect flow, the ``blur`` commands)
builds one with :func:`run_context`; the stages and the flow's steps receive it. The effective
configuration is derived here and nowhere else:

- ``model.base`` / ``oracle`` / ``pretrained``: local folders resolved against ``paths.config_root``;
- ``eval.relearn.lr: null``: the fine-tuning rate, ``finetune.lr``;
- ``model.max_length: auto``: the longest example of the world under the model's tokenizer,
  capped at ``model.max_length_cap`` (:meth:`RunContext.with_max_length`, what ``prepare``
  derives and records in ``settings.json``), read back by the later stages
  (:meth:`RunContext.prepared`).

``given`` keeps the configuration as written (params.yaml with the flow's overrides): what
MLflow records as the run's parameters and what a ``torchrun`` child is handed, to derive its
own context from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from components.artifacts import PreparedSettings
from components.config import Config, with_relearn_lr
from components.paths import Paths, resolve_local

_LOCAL_MODELS = ("base", "oracle", "pretrained")


@dataclass(frozen=True)
class RunContext:
    """The effective configuration (``config``), the configuration as given (``given``) and the run's folders."""

    config: Config
    paths: Paths
    given: Config

    def at(self, paths: Paths) -> "RunContext":
        """The same run in another folder (a flow batch's): derived again, against its ``config_root``."""
        return run_context(self.given, paths)

    def with_max_length(self, tokenizer, records: Sequence) -> "RunContext":
        """``model.max_length: auto`` replaced by the longest of ``records`` under ``tokenizer``, at least 8
        and at most ``model.max_length_cap`` (longer records are then refused by validation)."""
        if self.config.model.max_length != "auto":
            return self
        from components.modeling.resolve import longest_example

        length = min(max(longest_example(tokenizer, records), 8), self.config.model.max_length_cap)
        return self._with({"model.max_length": length})

    def prepared(self) -> "RunContext":
        """The context of a stage after ``prepare``: ``model.max_length: auto`` as prepare derived it
        (its ``settings.json``; a missing or bad file raises, naming it)."""
        if self.config.model.max_length != "auto":
            return self
        return self._with({"model.max_length": PreparedSettings.load(self.paths.settings).max_length})

    def _with(self, overrides: dict) -> "RunContext":
        return RunContext(self.config.with_overrides(overrides), self.paths, self.given)


def run_context(config: Config, paths: Paths) -> RunContext:
    """The one derivation of the effective configuration from ``config`` (see the module's docstring)."""
    local = {f"model.{key}": resolve_local(getattr(config.model, key), paths.config_root)
             for key in _LOCAL_MODELS if getattr(config.model, key)}
    effective = config.with_overrides(local) if local else config
    effective = effective.model_copy(update={"eval": with_relearn_lr(effective.eval, effective.finetune.lr)})
    return RunContext(effective, paths, config)


def as_context(run: RunContext | Config, paths: Paths | None = None) -> RunContext:
    """``run`` itself, or the context of a caller that passes a configuration and its folders (the
    benchmarks call the stages that way)."""
    if isinstance(run, RunContext):
        return run
    if paths is None:
        raise TypeError("a stage called with a Config needs its Paths too")
    return run_context(run, paths)
