"""One typed configuration object, parsed once from ``params.yaml``.

Every stage takes a :class:`Config` (or one of its sections) as an explicit argument;
nothing reads ``params.yaml`` behind the caller's back. Unknown keys and out-of-range
values are rejected with an error that names the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from components.paths import DEMO_REQUEST, KNOWLEDGE_SETS, PARAMS_FILE


class ConfigError(ValueError):
    """params.yaml is missing, unreadable or has a bad key or value."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WorldConfig(_Section):
    """Where the records the production model was trained on come from."""

    source: Literal["demo", "file", "hf"] = "demo"
    path: str | None = None
    holdout_path: str | None = None
    rows_per_subject: int | None = Field(default=None, ge=1)
    n_subjects: int = Field(default=40, ge=2)
    n_holdout_subjects: int = Field(default=10, ge=0)
    facts_per_subject: int = Field(default=10, ge=8)

    @model_validator(mode="after")
    def _path_needed(self) -> "WorldConfig":
        if self.source in ("file", "hf") and not self.path:
            raise ValueError(f"world.path is required when world.source is '{self.source}'")
        return self


class TokenizerConfig(_Section):
    vocab_size: int = Field(default=1024, ge=300)


class TinyModelConfig(_Section):
    """Sizes of the Llama-family demo model trained from scratch."""

    hidden_size: int = Field(default=128, ge=8)
    intermediate_size: int = Field(default=256, ge=8)
    num_layers: int = Field(default=4, ge=1)
    num_heads: int = Field(default=4, ge=1)

    @model_validator(mode="after")
    def _heads_divide(self) -> "TinyModelConfig":
        if self.hidden_size % self.num_heads:
            raise ValueError("model.tiny.hidden_size must be divisible by model.tiny.num_heads")
        return self


class ModelConfig(_Section):
    """Which model, and how it is loaded and prompted (one resolution for every stage)."""

    base: str | None = None
    oracle: str | None = None
    pretrained: str | None = None  # demo target/oracle are fine-tuned from this checkpoint (null: tiny, from scratch)
    max_length: Annotated[int, Field(ge=8)] | Literal["auto"] = 128  # auto: the longest record, capped
    max_length_cap: int = Field(default=512, ge=8)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto = the checkpoint's own
    device: Literal["auto", "cpu", "cuda"] = "auto"                    # auto = cuda when available
    prompt: Literal["chat", "plain"] = "chat"    # chat: the tokenizer's chat template when it has one
    gradient_checkpointing: bool = False
    tokenizer: TokenizerConfig = TokenizerConfig()
    tiny: TinyModelConfig = TinyModelConfig()


class FinetuneConfig(_Section):
    target_prob: float = Field(default=0.85, gt=0, le=1)
    max_epochs: int = Field(default=150, ge=1)
    min_epochs: int = Field(default=1, ge=1)
    lr: float = Field(default=3e-3, gt=0)
    batch_size: int = Field(default=32, ge=1)
    weight_decay: float = Field(default=0.0, ge=0)
    check_every: int = Field(default=5, ge=1)


class NPOConfig(_Section):
    beta: float = Field(default=0.1, gt=0)


class SimNPOConfig(_Section):
    beta: float = Field(default=2.5, gt=0)
    delta: float = 0.0


class RMUConfig(_Section):
    layer: int = Field(default=1, ge=0)
    steering_coeff: float = Field(default=20.0, gt=0)


class IDKConfig(_Section):
    answers: tuple[str, ...] = (
        "I don't know.",
        "I'm not sure.",
        "I have no information about that.",
        "That is not something I can answer.",
        "I am not aware of that.",
    )


class LoRAConfig(_Section):
    enabled: bool = False
    r: int = Field(default=8, ge=1)
    alpha: int = Field(default=16, ge=1)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")


class StopConfig(_Section):
    """``unlearn.stop``: end the run once the forget set looks like the holdout (no oracle needed).

    ``none``: run ``unlearn.steps``. ``holdout``: every ``every`` steps score the forget set and up to
    ``probe`` records of the holdout (mean answer NLL each). ``criterion: landed`` (the default) stops
    once the forget set has looked like the holdout at ``confirm`` probes in a row: membership AUC
    within ``band`` of 0.5 (neither more familiar nor less) and KS p-value at least ``min_ks_p``.
    ``ks`` / ``ks_or_mean`` are the earlier rules (KS alone, or the forget mean NLL reaching the
    holdout's). ``unlearn.steps`` (or ``max_steps``) is only a cap. See :mod:`components.unlearning.stopping`.
    """

    rule: Literal["none", "holdout"] = "none"
    every: int = Field(default=2, ge=1)
    probe: int = Field(default=64, ge=2)
    criterion: Literal["landed", "reached", "ks_or_mean", "ks"] = "landed"  # reached: landed, or past the holdout
    band: float = Field(default=0.05, gt=0, le=0.5)  # landed: |AUC - 0.5| at most this (about the AUC's standard error on 40 vs 64 records)
    min_ks_p: float = Field(default=0.2, gt=0, le=1)
    confirm: int = Field(default=2, ge=1)  # landed: probes in a row
    max_steps: int | None = Field(default=None, ge=1)
    # landed: once the forget set is past the holdout (AUC below 0.5 - band) at `confirm` probes in a row, or at
    # the cap without landing: restore (stop and return the weights of the probe nearest the holdout) | continue
    overshoot: Literal["restore", "continue"] = "restore"
    # landed: the weights kept once `confirm` probes in a row landed: last (the confirming probe's) | first (the
    # probe where the run arrived; the later ones only confirm it stays there). first needs overshoot: restore
    land_at: Literal["last", "first"] = "last"
    statistic: Literal["mean", "mink"] = "mean"  # a record's score in the probe and match's targets: mean answer NLL |
    mink_k: float = Field(default=0.4, gt=0, le=1)  #   mink: mean NLL of its least likely mink_k fraction of tokens
    # the holdout scores the forget set is compared with, and match's targets are drawn from: current (under the
    # model being unlearned, at every probe) | start (under the starting model, scored once: the drift of unseen
    # records' scores as unlearning goes on does not move the target)
    reference: Literal["current", "start"] = "current"

    @model_validator(mode="after")
    def _first_keeps_weights(self) -> "StopConfig":
        if self.land_at == "first" and (self.criterion != "landed" or self.overshoot != "restore"):
            raise ValueError("unlearn.stop.land_at 'first' returns an earlier probe's weights, which only "
                             "criterion: landed with overshoot: restore keeps: set those, or land_at: last")
        return self

    @property
    def score_k(self) -> float | None:
        """The ``mink_k`` a record's score reads (None: the mean over every answer token)."""
        return self.mink_k if self.statistic == "mink" else None


class UnlearnConfig(_Section):
    """The method (three names) and the optimisation knobs of the unlearning loop."""

    combiner: Literal["blur", "blur_p", "weighted_sum"] = "blur"  # blur_p: ours, BLUR in AdamW's metric
    lower: Literal["forget", "retain"] = "forget"
    forget_loss: Literal["match", "ga", "npo", "simnpo", "idk", "rmu"] = "npo"
    # match's gradient on: all (every answer token) | subject (the tokens that depend on who the question
    # names: the fact, not its wording; components.unlearning.focus). The other forget losses ignore it.
    focus: Literal["all", "subject"] = "all"
    retain_loss: Literal["nll", "kl"] = "nll"
    gamma: float = Field(default=1.0, gt=0)
    alpha: float = Field(default=1.0, ge=0)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    momentum: float = Field(default=0.0, ge=0, lt=1)  # sgd only: heavy-ball momentum (0 = plain SGD)
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    scheduler: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = Field(default=0, ge=0)
    steps: int = Field(default=40, ge=1)
    epochs: float | None = Field(default=None, gt=0)  # when set: ceil(epochs * |forget| / effective batch) steps
    batch_size: int = Field(default=8, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    max_grad_norm: float | None = Field(default=1.0, gt=0)
    checkpoint_every: int = Field(default=10, ge=0)
    # weights: train in the loaded dtype (losses and BLUR's scalars in fp32 regardless);
    # autocast-bf16: fp32 master weights, forward passes under bf16 autocast
    precision: Literal["weights", "autocast-bf16"] = "weights"
    # under torchrun: ddp (replicated gradients) | fsdp (FSDP2 shards; BLUR's scalars summed over shards)
    distributed: Literal["ddp", "fsdp"] = "ddp"
    # processes for the unlearning stage; 1 = in the flow's own process, N > 1: the flow launches torchrun
    nproc: int = Field(default=1, ge=1)
    npo: NPOConfig = NPOConfig()
    simnpo: SimNPOConfig = SimNPOConfig()
    rmu: RMUConfig = RMUConfig()
    idk: IDKConfig = IDKConfig()
    lora: LoRAConfig = LoRAConfig()
    stop: StopConfig = StopConfig()

    @model_validator(mode="after")
    def _blur_p_needs_adam(self) -> "UnlearnConfig":
        if self.combiner == "blur_p" and self.optimizer != "adamw":
            raise ValueError("unlearn.combiner 'blur_p' projects in AdamW's preconditioned metric; under "
                             f"unlearn.optimizer '{self.optimizer}' that metric is plain, so use unlearn.combiner: blur")
        return self

    @model_validator(mode="after")
    def _fsdp_without_lora(self) -> "UnlearnConfig":
        if self.distributed == "fsdp" and self.lora.enabled:
            raise ValueError("unlearn.distributed 'fsdp' cannot be combined with unlearn.lora.enabled: LoRA "
                             "adapters are small enough to replicate - use unlearn.distributed: ddp with LoRA")
        return self


class RelearnConfig(_Section):
    """``eval.relearn``: the relearning attack. A copy of the oracle and of the unlearned model is
    fine-tuned on one half of the forget set and scored on the other half (``relearn_*`` metrics):
    knowledge that was hidden rather than removed comes back faster than the oracle learns it."""

    enabled: bool = True
    epochs: int = Field(default=5, ge=1)  # passes over the attacked half
    lr: float | None = Field(default=None, gt=0)  # null: finetune.lr, the rate that taught the model the data
    batch_size: int = Field(default=4, ge=1)
    seed: int = 0  # which records fall in the attacked half


class SampleConfig(_Section):
    """``eval.sample``: how many records each utility measurement reads (null: all), the same for every
    model role. A fixed subset (the records with the smallest ids), so every run reads the same ones."""

    retain: int | None = Field(default=None, ge=1)     # retain set: retain_* metrics and model utility
    knowledge: int | None = Field(default=None, ge=1)  # each knowledge set (TOFU real authors, world facts)
    utility: int | None = Field(default=None, ge=1)    # each extra utility set (eval.utility_sets)


class EvalConfig(_Section):
    batch_size: int = Field(default=64, ge=1)
    max_new_tokens: int = Field(default=32, ge=1)
    mink_k: float = Field(default=0.4, gt=0, le=1)
    verbmem_prefix_tokens: int = Field(default=32, ge=1)
    utility_sets: tuple[str, ...] = ()
    # TOFU's general-knowledge sets, in model utility. auto: on for a pretrained model (model.base or
    # model.pretrained set); the tiny demo model trained from scratch knows none of it.
    knowledge: Literal["auto", "on", "off"] = "auto"
    knowledge_sets: tuple[str, ...] = KNOWLEDGE_SETS
    relearn: RelearnConfig = RelearnConfig()
    sample: SampleConfig = SampleConfig()
    cache: bool = True  # reuse a model's outputs scored before with the same sets and settings (.cache/eval)
    measure_floor: bool = True  # time the model's throughput: reports/resources.json gets evaluate's floor

    @field_validator("knowledge", mode="before")
    @classmethod
    def _yaml_on_off(cls, value: Any) -> Any:
        """YAML reads a bare ``on``/``off`` as true/false: take them as meant."""
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


class GateConfig(_Section):
    """Promotion thresholds; ``null`` means the check is not made."""

    # oracle_free: promote on the checks that need no oracle; the oracle's checks (forget quality, privleak,
    # relearning gap) are reported beside them. all: every configured check decides.
    decide: Literal["oracle_free", "all"] = "oracle_free"

    min_forget_quality: float | None = Field(default=None, ge=0, le=1)
    max_forget_prob_ratio: float | None = Field(default=None, ge=0)
    min_utility_ratio: float | None = Field(default=None, ge=0)
    max_abs_privleak: float | None = Field(default=None, ge=0)
    # Earlier requests must stay forgotten: worst unlearned/target forget probability among them.
    max_earlier_forget_prob_ratio: float | None = Field(default=0.5, ge=0)
    # ... and against the level each was erased to: worst unlearned forget probability of its records / the
    # one its certificate recorded for them. Both params files ship 2.0 (an erased request may come back at
    # most 2x; the ratio above alone lets one forgotten to 0.05 come back 9x, to 0.45, half a target's 0.9).
    # Null here: a params.yaml without the key keeps the check off, as before it existed.
    max_earlier_regain_ratio: float | None = Field(default=None, ge=1)
    # Oracle-free: the forget set against the holdout (records never trained on).
    min_forget_holdout_ks_p: float | None = Field(default=None, ge=0, le=1)
    max_forget_holdout_auc_gap: float | None = Field(default=None, ge=0, le=0.5)  # |AUC - 0.5|
    # The relearning attack: unlearned minus oracle answer probability on the held-out half of the
    # forget set after both were fine-tuned on the other half (eval.relearn).
    max_relearn_gap: float | None = Field(default=None, ge=0)
    # Fail closed: a configured check whose metric is null, NaN or absent fails the gate.
    # false records it as skipped instead; a null threshold is not checked at all.
    fail_on_missing: bool = True


def with_relearn_lr(eval_config: EvalConfig, finetune_lr: float) -> EvalConfig:
    """``eval.relearn.lr: null`` means ``finetune_lr``, the rate that taught the model the data."""
    if eval_config.relearn.lr is not None:
        return eval_config
    return eval_config.model_copy(update={"relearn": eval_config.relearn.model_copy(update={"lr": finetune_lr})})


class RegistryConfig(_Section):
    model_name: str = "blur-demo"
    alias: str = "champion"
    experiment: str = "blur-unlearning"
    # What happens to older model versions once a new champion has erased a request:
    # delete their weights and versions, archive (tag, drop aliases, keep weights) or keep.
    retention: Literal["delete", "archive", "keep"] = "delete"


class FlowConfig(_Section):
    """How the Prefect flow runs: retries, the inbox lock, the default schedule."""

    retries: int = Field(default=2, ge=0)
    retry_delay_seconds: float = Field(default=10.0, ge=0)
    lock_timeout_seconds: float = Field(default=3600.0, ge=0)
    # The Prefect global concurrency limit (one slot) every run of this pipeline holds.
    # Pipelines with their own inbox and registered model may use their own name.
    concurrency_limit: str = Field(default="blur-inbox", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$")
    # The slot is leased and renewed while a run holds it; a run killed without releasing it
    # blocks the next one until the lease expires (the Prefect server allows 60 s to 1 day).
    lease_seconds: float = Field(default=300.0, ge=60, le=86400)
    cron: str = "0 2 * * *"
    runs_dir: str = "runs"
    # At most this many valid requests per batch, oldest first; the rest wait for the next run.
    max_batch_requests: int = Field(default=50, ge=1)
    # a batch that fails this many runs in a row (after validation) sends its requests to failed/
    max_batch_failures: int = Field(default=3, ge=1)


class Config(_Section):
    """The whole of params.yaml."""

    seed: int = 0
    threads: int | None = Field(default=None, ge=1)
    world: WorldConfig = Field(default_factory=WorldConfig)
    request: str = DEMO_REQUEST
    model: ModelConfig = Field(default_factory=ModelConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    unlearn: UnlearnConfig = Field(default_factory=UnlearnConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    flow: FlowConfig = Field(default_factory=FlowConfig)

    def with_overrides(self, overrides: dict[str, Any]) -> "Config":
        """Return a copy with dotted keys replaced, e.g. ``{"unlearn.steps": 5}``."""
        data = self.model_dump()
        for dotted, value in overrides.items():
            node = data
            *parents, leaf = dotted.split(".")
            for key in parents:
                if not isinstance(node.get(key), dict):
                    raise ConfigError(f"unknown config key '{dotted}'")
                node = node[key]
            if leaf not in node:
                raise ConfigError(f"unknown config key '{dotted}'")
            node[leaf] = value
        return config_from_dict(data)


def _describe(error: ValidationError, source: str) -> str:
    from components.artifacts import validation_reasons

    unknown = "unknown key (check the spelling; see params.yaml comments for valid keys)"
    return "\n".join([f"invalid configuration in {source}:"]
                     + [f"  - {reason}" for reason in validation_reasons(error, unknown=unknown)])


def config_from_dict(data: dict[str, Any] | None, source: str = "<dict>") -> Config:
    """Validate a plain mapping into a :class:`Config`."""
    try:
        return Config.model_validate(data or {})
    except ValidationError as error:
        raise ConfigError(_describe(error, source)) from None


# libyaml's safe loader where PyYAML was built with it: the same documents, parsed ~10x faster (every
# entry point and flow run reads params.yaml)
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_config(path: str | Path = PARAMS_FILE) -> Config:
    """Read and validate ``params.yaml``."""
    path = Path(path)
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_SAFE_LOADER)
    except FileNotFoundError:
        raise ConfigError(f"configuration file not found: {path}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path} must be a mapping of keys to values")
    return config_from_dict(data, source=str(path))
