"""Unlearn a Hugging Face causal LM: the steps around the loop, in the order they run.

:func:`run_unlearning` reads as its four steps:

1. :func:`prepare_data` - the forget and retain records encoded once in the one prompt
   format, the number of steps, and what the losses need from the frozen starting model
   (NPO's reference log-probabilities, RMU's random target) before anything changes;
2. :func:`build_engine` - the model and its wrappers: the KL reference (a frozen copy, or
   the base model with LoRA adapters disabled), LoRA adapters (``unlearn.lora``), the loss
   model, DDP or FSDP2 across ``torchrun`` ranks (``unlearn.distributed``; the process group
   is joined by the caller, see :mod:`components.unlearning.distributed`), the optimizer and
   schedule, and the state of a matching checkpoint to resume from;
3. :func:`train` - :func:`components.unlearning.loop.train_bilevel` over deterministic
   micro-batch streams (:mod:`components.unlearning.batches`), with a JSON-lines log, a
   progress bar and checkpoints every ``unlearn.checkpoint_every`` steps;
4. :func:`finish` - adapters merged back, the weights returned as a plain model in the
   dtype they came in.

``unlearn.precision``: ``weights`` trains in the loaded dtype (bf16 weights give bf16
gradients; losses, BLUR's inner product and norms are fp32 whatever the dtype);
``autocast-bf16`` keeps fp32 master weights and runs the forward passes under bf16 autocast.
"""

from __future__ import annotations

import copy
import json
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from components.config import UnlearnConfig
from components.data.records import Record
from components.modeling.encoding import Encoded, encode_record
from components.progress import progress_bar
from components.unlearning import distributed
from components.unlearning.batches import BatchStream, check_inputs, encode_forget
from components.unlearning.checkpoint import (
    fingerprint,
    load_checkpoint,
    save_checkpoint,
    token_digest,
    weights_digest,
)
from components.unlearning.focus import other_subjects, subject_weights
from components.unlearning.loop import Ranks, StepHooks, StepRule, train_bilevel
from components.unlearning.losses import FORGET_LOSSES, RETAIN_LOSSES, LossContext
from components.unlearning.modules import (
    LossModel,
    add_lora,
    decoder_layer,
    reference_logits,
    rmu_target,
    sequence_logps,
)
from components.unlearning.optim import make_optimizer, make_scheduler, resolve_steps
from components.modeling.scoring import mean_token_nll
from components.unlearning.stopping import (HoldoutStopper, StopUnlearning, build_stopper, encode_probe,
                                            matched_targets, step_cap)


@dataclass
class UnlearnResult:
    """The unlearned model (a plain HF model, adapters merged) and how the run went.

    ``diagnostics`` has one dict per optimizer step (resumed steps included): ``step``,
    ``forget_loss`` and ``retain_loss`` (means over the effective batch, before the step),
    ``inner`` (``<g_f, g_r>``), ``forget_norm_sq``, ``retain_norm_sq``, ``cos``, ``xi`` (the
    coefficient on the lower level's gradient: BLUR's ``gamma - inner / ||g_lower||^2``, or
    the weight of the lower level under ``weighted_sum``), ``grad_norm`` (``||d||`` before
    clipping) and ``lr``. Under FSDP only rank 0's ``model`` holds the whole weights (on the CPU).
    """

    model: torch.nn.Module
    diagnostics: list[dict]
    steps: int
    resumed_from: int | None = None
    fingerprint: str = ""
    stop: dict | None = None  # unlearn.stop: where and why the run stopped, the probe's curve

    def summary(self) -> dict:
        last = self.diagnostics[-1] if self.diagnostics else {}
        first = self.diagnostics[0] if self.diagnostics else {}
        return {
            "steps": self.steps,
            "resumed_from": self.resumed_from,
            "first_forget_loss": first.get("forget_loss"),
            "final_forget_loss": last.get("forget_loss"),
            "first_retain_loss": first.get("retain_loss"),
            "final_retain_loss": last.get("retain_loss"),
        } | ({"stop": self.stop} if self.stop is not None else {})


@dataclass(frozen=True)
class RunOutputs:
    """Where a run reports and what it calls: checkpoints, the JSON-lines log, progress, a step callback.

    With ``checkpoint_dir`` a matching checkpoint there is resumed (a stale one is ignored
    with a warning; see :mod:`components.unlearning.checkpoint`). ``log_path`` gets one JSON
    line per step (rank 0). ``on_step`` is called on every rank with each step's diagnostics
    after it is logged and before it is checkpointed (an exception there stops the run).
    """

    checkpoint_dir: Path | None = None
    log_path: Path | None = None
    show_progress: bool = True
    on_step: Callable[[dict], None] | None = None


def run_unlearning(
    model: torch.nn.Module,
    tokenizer,
    forget: Sequence[Record],
    retain: Sequence[Record],
    config: UnlearnConfig,
    *,
    max_length: int,
    seed: int,
    outputs: RunOutputs = RunOutputs(),
    holdout: Sequence[Record] = (),
) -> UnlearnResult:
    """Unlearn ``forget`` from ``model`` while keeping ``retain``; the model is trained in place.

    ``unlearn.batch_size`` is the micro-batch per rank; a step uses
    ``batch_size * grad_accum * world_size`` forget and as many retain examples.

    Raises :class:`UnlearningDivergedError` on a NaN/inf loss or gradient, before the
    weights change: the caller must then write no model. With LoRA the adapters are merged
    into the weights before returning, so ``.model`` is a plain model. ``holdout`` (records the
    model never saw) is the probe of ``unlearn.stop.rule: holdout``, which may end the run early.
    """
    forget, retain = list(forget), list(retain)
    check_inputs(forget, retain, config)
    restore = master_weights(model, config)
    data = prepare_data(model, tokenizer, forget, retain, config, max_length=max_length, seed=seed, holdout=holdout)
    engine = build_engine(model, data, config, outputs.checkpoint_dir, restore)
    # under FSDP the probe goes through the sharded root module, which gathers each layer's weights for it
    probe_model = engine.module if engine.ranks.sharded else engine.model
    stopper = build_stopper(probe_model, tokenizer, forget, holdout, config, max_length=max_length, seed=seed,
                            targets=data.forget_extra.get("target_nll"), reference=data.reference_holdout)
    if stopper is not None:
        stopper.load_state(engine.stopper_state)
    train(engine, data, config, outputs, stopper)
    if stopper is not None:
        restore_nearest(engine, stopper, data.steps)
    steps = stopper.stopped_at if stopper is not None and stopper.stopped_at is not None else data.steps
    return UnlearnResult(model=finish(engine, config), diagnostics=engine.diagnostics, steps=steps,
                         resumed_from=engine.resumed_from, fingerprint=data.fingerprint,
                         stop=stopper.summary() if stopper is not None else None)


# ---- 1. prepare the data ----

@dataclass
class UnlearnData:
    """The encoded examples, the step count and what the losses need from the starting model."""

    forget: list[Encoded]
    retain: list[Encoded]
    pad_token_id: int
    seed: int
    rank: int
    world_size: int
    steps: int
    context: LossContext
    forget_extra: dict[str, torch.Tensor] = field(default_factory=dict)
    reference_holdout: torch.Tensor | None = None  # unlearn.stop.reference start: the holdout probe, scored once
    fingerprint: str = ""


def prepare_data(model: torch.nn.Module, tokenizer, forget: list[Record], retain: list[Record],
                 config: UnlearnConfig, *, max_length: int, seed: int, holdout: Sequence[Record] = ()) -> UnlearnData:
    """Encode both sets once and compute, from the untouched model, NPO's and RMU's references, the
    first targets of ``match`` (the holdout's NLL quantiles, refreshed at every probe) and, under
    ``unlearn.stop.reference: start``, the holdout probe's scores every probe compares with."""
    rank, world_size = distributed.rank_and_world()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    effective_batch = config.batch_size * config.grad_accum * world_size
    data = UnlearnData(
        forget=encode_forget(tokenizer, forget, config, max_length, seed),
        retain=[encode_record(tokenizer, record, max_length) for record in retain],
        pad_token_id=pad, seed=seed, rank=rank, world_size=world_size,
        steps=step_cap(config, resolve_steps(config, len(forget), effective_batch)), context=LossContext(config),
    )
    model.eval()
    if config.forget_loss == "npo":
        with precision_context(config, next(model.parameters()).device):
            data.forget_extra["ref_logp"] = sequence_logps(model, data.forget, pad)
    if config.forget_loss == "rmu":
        data.context.rmu_target = rmu_target(model, config, seed)
    if config.forget_loss == "match" or (config.stop.reference == "start" and config.stop.rule == "holdout"):
        forget_probe, holdout_probe = encode_probe(tokenizer, forget, holdout, config, max_length=max_length,
                                                   seed=seed)
        with precision_context(config, next(model.parameters()).device):
            k = config.stop.score_k
            holdout_nll = mean_token_nll(model, holdout_probe, pad, mink_k=k)
            if config.forget_loss == "match":
                data.forget_extra["target_nll"] = matched_targets(mean_token_nll(model, forget_probe, pad, mink_k=k),
                                                                  holdout_nll)
                if config.focus == "subject":
                    data.forget_extra["token_weight"] = subject_weights(
                        model, tokenizer, forget, data.forget, other_subjects(forget, holdout, retain),
                        max_length=max_length, pad_token_id=pad)
        if config.stop.reference == "start":
            data.reference_holdout = holdout_nll
    data.fingerprint = fingerprint({
        "config": config.model_dump(exclude={"checkpoint_every"}),
        "steps": data.steps,
        "effective_batch": effective_batch,
        "seed": seed,
        "forget": token_digest(data.forget),
        "retain": token_digest(data.retain),
        "model": weights_digest(model),
    })
    return data


# ---- 2. build the model and its wrappers ----

@dataclass
class Engine:
    """The model being trained, the module the losses call, the optimizer and where the run stands."""

    model: torch.nn.Module
    module: torch.nn.Module
    ranks: Ranks
    named: list[tuple[str, torch.Tensor]]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    device: torch.device
    restore: dict = field(default_factory=dict)  # what finish() gives back: trainable flags, dtype, plain copy
    diagnostics: list[dict] = field(default_factory=list)
    start_step: int = 0
    resumed_from: int | None = None
    nearest: list[torch.Tensor] | None = None  # unlearn.stop.overshoot restore: the nearest probe's weights (local shards)
    stopper_state: dict | None = None  # the stopping rule's state as the resumed checkpoint left it

    @property
    def params(self) -> list[torch.Tensor]:
        return [p for _, p in self.named]


def build_engine(model: torch.nn.Module, data: UnlearnData, config: UnlearnConfig,
                 checkpoint_dir: Path | None, restore: dict) -> Engine:
    """Reference for KL, LoRA, DDP/FSDP, optimizer and schedule; resumed if a checkpoint matches.

    ``restore`` collects what :func:`finish` gives back (trainable flags, dtype, the plain model).
    """
    device = next(model.parameters()).device
    restore["trainable"] = {name: p.requires_grad for name, p in model.named_parameters()}
    frozen = None
    if config.retain_loss == "kl" and not config.lora.enabled:
        frozen = copy.deepcopy(model).requires_grad_(False).eval()
    if config.lora.enabled:
        model = add_lora(model, config.lora)
    if config.retain_loss == "kl":
        data.context.reference_logits = reference_logits(model, frozen)
    if config.distributed == "fsdp" and data.world_size > 1 and data.rank == 0:
        restore["plain"] = copy.deepcopy(model).cpu()  # the plain model finish() fills with the gathered weights
    capture = decoder_layer(model, config.rmu.layer) if config.forget_loss == "rmu" else None
    module, ranks = distributed.wrap(LossModel(model, capture), config, device, data.world_size)
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    optimizer = make_optimizer([p for _, p in named], config)
    engine = Engine(model, module, ranks, named, optimizer, make_scheduler(optimizer, config, data.steps),
                    device, restore)
    directory = Path(checkpoint_dir) if checkpoint_dir is not None else None
    state = load_checkpoint(directory, data.fingerprint, torch.device("cpu") if ranks.sharded else device)
    _resume(engine, state)
    for key, values in ((state or {}).get("forget_extra") or {}).items():  # match's targets as they were then
        data.forget_extra[key].copy_(values.to(data.forget_extra[key].device))
    return engine


def master_weights(model: torch.nn.Module, config: UnlearnConfig) -> dict:
    """Under ``autocast-bf16``, fp32 master weights in place; ``{"dtype": ...}`` to restore at the end."""
    dtype = next(model.parameters()).dtype
    if config.precision == "autocast-bf16" and dtype != torch.float32:
        model.float()
        return {"dtype": dtype}
    return {}


def _resume(engine: Engine, state: dict | None) -> None:
    if state is None:
        return
    names = [name for name, _ in engine.named]
    distributed.load_full_state(engine.params, [state["weights"][name] for name in names], engine.optimizer,
                                state["optimizer"])
    engine.scheduler.load_state_dict(state["scheduler"])
    engine.diagnostics = list(state["diagnostics"])
    engine.start_step = engine.resumed_from = state["step"]
    stopper_state = state.get("stopper")
    if stopper_state and stopper_state.get("nearest_weights") is not None:
        engine.nearest = [p.detach().clone() for p in engine.params]  # laid out like the params, then filled
        distributed.load_weights(engine.nearest, [stopper_state["nearest_weights"][name] for name, _ in engine.named])
    engine.stopper_state = stopper_state


# ---- 3. train ----

def train(engine: Engine, data: UnlearnData, config: UnlearnConfig, outputs: RunOutputs,
          stopper: HoldoutStopper | None = None) -> None:
    """The loop over the two levels' batch streams, with log, progress bar and checkpoints;
    ``stopper`` adds its probe to the step log and ends the loop when its rule is met."""
    forget_loss, retain_loss = _level_losses(engine, data, config)
    main = data.rank == 0
    log_path = Path(outputs.log_path) if outputs.log_path is not None else None
    if main and log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text("".join(json.dumps(entry) + "\n" for entry in engine.diagnostics), encoding="utf-8")
    with progress_bar(enabled=outputs.show_progress and main, status=True) as progress, _forked_rng(engine.device):
        task = progress.add_task(f"unlearn ({config.combiner})", total=data.steps, completed=engine.start_step,
                                 status="")

        def log(record: dict) -> None:
            if stopper is not None:
                record.update(stopper.check(record["step"]))
                if record.get("probe_nearest"):
                    keep_nearest(engine)
            engine.diagnostics.append(record)
            if main and log_path is not None:
                with log_path.open("a", encoding="utf-8") as stream:
                    stream.write(json.dumps(record) + "\n")
            progress.update(task, advance=1, status=f"forget {record['forget_loss']:.3f}  "
                                                    f"retain {record['retain_loss']:.3f}  xi {record['xi']:.2f}")
            if outputs.on_step is not None:
                outputs.on_step(record)
            if stopper is not None and stopper.ended_at == record["step"]:
                raise StopUnlearning(record["step"], stopper.reason or "")

        checkpoint_dir = Path(outputs.checkpoint_dir) if outputs.checkpoint_dir is not None else None
        hooks = StepHooks(log=log, checkpoint=lambda step: _checkpoint(engine, data, checkpoint_dir, step, stopper),
                          checkpoint_every=config.checkpoint_every if checkpoint_dir is not None else 0)
        rule = StepRule(combiner=config.combiner, lower=config.lower, gamma=config.gamma, alpha=config.alpha,
                        grad_accum=config.grad_accum, max_grad_norm=config.max_grad_norm, seed=data.seed)
        engine.model.train()
        try:
            train_bilevel(engine.params, forget_loss, retain_loss, engine.optimizer, engine.scheduler,
                          steps=data.steps, start_step=engine.start_step, rule=rule, ranks=engine.ranks, hooks=hooks)
        except StopUnlearning:
            pass  # the rule was met: the weights after this step are the result
        finally:
            engine.model.eval()
            for p in engine.params:
                p.grad = None


def _level_losses(engine: Engine, data: UnlearnData, config: UnlearnConfig):
    """``loss(step, micro)`` of each level: this rank's micro-batch, its share of the step's mean loss."""
    per_rank = config.batch_size * config.grad_accum
    stream = dict(seed=data.seed, micro_batch=config.batch_size, grad_accum=config.grad_accum, rank=data.rank,
                  world_size=data.world_size, pad_token_id=data.pad_token_id, device=engine.device)
    forget_batches = BatchStream(data.forget, stream=0, extra=data.forget_extra, **stream)
    retain_batches = BatchStream(data.retain, stream=1, **stream)
    forget_fn, retain_fn = FORGET_LOSSES[config.forget_loss], RETAIN_LOSSES[config.retain_loss]
    module, context = engine.module, data.context

    def forget_loss(step: int, micro: int) -> torch.Tensor:
        with precision_context(config, engine.device):
            return forget_fn(module, forget_batches(step, micro), context).sum() / per_rank

    def retain_loss(step: int, micro: int) -> torch.Tensor:
        with precision_context(config, engine.device):
            return retain_fn(module, retain_batches(step, micro), context).sum() / per_rank

    return forget_loss, retain_loss


def precision_context(config: UnlearnConfig, device: torch.device):
    """bf16 autocast under ``unlearn.precision: autocast-bf16``; nothing under ``weights``."""
    if config.precision == "autocast-bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def keep_nearest(engine: Engine) -> None:
    """Keep the weights as they are now: the nearest probe so far (``unlearn.stop.overshoot: restore``)."""
    if engine.nearest is None:
        engine.nearest = [p.detach().clone() for p in engine.params]
    else:
        distributed.copy_locals(engine.nearest, engine.params)


def restore_nearest(engine: Engine, stopper: HoldoutStopper, steps: int) -> None:
    """After training: where the rule (or the cap) chose an earlier probe's weights, put them back."""
    last = engine.diagnostics[-1]["step"] if engine.diagnostics else 0
    if stopper.ended_at is None and last == steps:
        stopper.at_cap(last)
    if stopper.stopped_at is not None and stopper.stopped_at != last:
        if engine.nearest is None:
            raise RuntimeError(f"unlearn.stop chose the weights of step {stopper.stopped_at}, but none were kept")
        distributed.copy_locals(engine.params, engine.nearest)


def _checkpoint(engine: Engine, data: UnlearnData, directory: Path | None, step: int,
                stopper: HoldoutStopper | None = None) -> None:
    """Rank 0 writes the whole state; under FSDP every rank first takes part in gathering it."""
    if directory is None:
        return
    if not engine.ranks.sharded and data.rank != 0:
        return
    keep = data.rank == 0
    weights = {name: distributed.full(p.detach(), keep) for name, p in engine.named}
    optimizer = distributed.full_optimizer_state(engine.optimizer, keep)
    stopper_state = stopper.state() if stopper is not None else None
    if stopper_state is not None and engine.nearest is not None:
        stopper_state["nearest_weights"] = {name: distributed.full(kept, keep)
                                            for (name, _), kept in zip(engine.named, engine.nearest)}
    if data.rank == 0:
        save_checkpoint(directory, {
            "fingerprint": data.fingerprint,
            "step": step,
            "weights": weights,
            "optimizer": optimizer,
            "scheduler": engine.scheduler.state_dict(),
            "diagnostics": engine.diagnostics,
            # what changes during the run besides the weights: match's targets, refreshed at each probe
            "forget_extra": {k: v.clone() for k, v in data.forget_extra.items() if k == "target_nll"},
            "stopper": stopper_state,  # the rule's readings and streaks, and the nearest probe's weights
        })


# ---- 4. save: the plain model back ----

def finish(engine: Engine, config: UnlearnConfig) -> torch.nn.Module:
    """The trained weights as a plain model: adapters merged, gathered from shards, original dtype."""
    model = engine.model
    if engine.ranks.sharded:
        plain = engine.restore.get("plain")
        with torch.no_grad():
            for name, p in model.named_parameters():
                value = distributed.full(p.detach(), keep=plain is not None)
                if plain is not None:
                    plain.get_parameter(name).copy_(value)
        model = plain if plain is not None else model
    if config.lora.enabled:
        model = model.merge_and_unload()
    for name, p in model.named_parameters():  # peft froze the base weights; give them back as they were
        p.requires_grad_(engine.restore["trainable"].get(name, True))
    if "dtype" in engine.restore:
        model.to(engine.restore["dtype"])
    return model


def _forked_rng(device: torch.device):
    """Keep the caller's global RNG untouched by the per-step reseeding in the loop."""
    if device.type != "cuda":
        return torch.random.fork_rng(devices=[])
    return torch.random.fork_rng(devices=[device.index if device.index is not None else torch.cuda.current_device()])
