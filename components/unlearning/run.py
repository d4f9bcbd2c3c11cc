"""Unlearn a Hugging Face causal LM: data, losses, LoRA, DDP and checkpoints around the loop.

:func:`run_unlearning` prepares everything :func:`components.unlearning.loop.train_bilevel`
needs and nothing more:

- the forget and retain records, encoded once in the one prompt format, and a deterministic
  stream of micro-batches per level: the global batch of step ``t`` is a function of
  ``(seed, t)`` only, and rank ``r`` takes its share of it, so 1 rank x 8, 1 rank x 2 x 4
  micro-batches and 2 ranks x 4 all see the same examples;
- what the losses need from the frozen starting model, computed before any update: NPO's
  reference log-probabilities (once), a frozen copy for the KL retain loss (with LoRA, the
  base model with adapters disabled instead), RMU's random target;
- LoRA adapters (``unlearn.lora.enabled``), merged back before returning;
- ``DistributedDataParallel`` when launched with ``torchrun`` (``torch.distributed``
  initialised by the caller), gradients all-reduced before the combination;
- checkpoints every ``unlearn.checkpoint_every`` steps and resume, a JSON-lines log and a
  progress bar.
"""

from __future__ import annotations

import copy
import json
import math
import re
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from components.config import LoRAConfig, UnlearnConfig
from components.data.records import QARecord, Record
from components.modeling.encoding import Encoded, collate, encode_record, ensure_pad_token
from components.modeling.scoring import scored_batches
from components.unlearning.checkpoint import (
    fingerprint,
    load_checkpoint,
    save_checkpoint,
    token_digest,
    weights_digest,
)
from components.unlearning.losses import FORGET_LOSSES, RETAIN_LOSSES, LossContext
from components.unlearning.loop import train_bilevel


@dataclass
class UnlearnResult:
    """The unlearned model (a plain HF model, adapters merged) and how the run went.

    ``diagnostics`` has one dict per optimizer step (resumed steps included): ``step``,
    ``forget_loss`` and ``retain_loss`` (means over the effective batch, before the step),
    ``inner`` (``<g_f, g_r>``), ``forget_norm_sq``, ``retain_norm_sq``, ``cos``, ``xi`` (the
    coefficient on the lower level's gradient: BLUR's ``gamma - inner / ||g_lower||^2``, or
    the weight of the lower level under ``weighted_sum``), ``grad_norm`` (``||d||`` before
    clipping) and ``lr``.
    """

    model: torch.nn.Module
    diagnostics: list[dict]
    steps: int
    resumed_from: int | None = None
    fingerprint: str = ""

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
        }


def run_unlearning(
    model: torch.nn.Module,
    tokenizer,
    forget: Sequence[Record],
    retain: Sequence[Record],
    config: UnlearnConfig,
    *,
    max_length: int,
    seed: int,
    checkpoint_dir: Path | None = None,
    log_path: Path | None = None,
    show_progress: bool = True,
    on_step: Callable[[dict], None] | None = None,
) -> UnlearnResult:
    """Unlearn ``forget`` from ``model`` while keeping ``retain``; the model is trained in place.

    ``unlearn.batch_size`` is the micro-batch per rank; a step uses
    ``batch_size * grad_accum * world_size`` forget and as many retain examples. With
    ``checkpoint_dir`` a matching checkpoint there is resumed (a stale one is ignored with a
    warning; see :mod:`components.unlearning.checkpoint`). ``log_path`` gets one JSON line
    per step (rank 0). ``on_step`` is called on every rank with each step's diagnostics after
    it is logged and before it is checkpointed (an exception there stops the run).

    Raises :class:`UnlearningDivergedError` on a NaN/inf loss or gradient, before the
    weights change: the caller must then write no model. With LoRA the adapters are merged
    into the weights before returning, so ``.model`` is a plain model (the object passed in).
    """
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    log_path = Path(log_path) if log_path is not None else None
    forget, retain = list(forget), list(retain)
    _check_inputs(forget, retain, config)
    rank, world_size = _rank_and_world()
    device = next(model.parameters()).device
    per_rank = config.batch_size * config.grad_accum
    effective_batch = per_rank * world_size
    steps = resolve_steps(config, len(forget), effective_batch)
    pad = ensure_pad_token(tokenizer)

    # data, encoded once
    forget_examples = _encode_forget(tokenizer, forget, config, max_length, seed)
    retain_examples = [encode_record(tokenizer, record, max_length) for record in retain]

    # what the losses need from the starting model, before any adapter or update
    model.eval()
    context = LossContext(config)
    forget_extra: dict[str, torch.Tensor] = {}
    if config.forget_loss == "npo":
        forget_extra["ref_logp"] = sequence_logps(model, forget_examples, pad)
    if config.forget_loss == "rmu":
        context.rmu_target = rmu_target(model, config, seed)
    run_fingerprint = fingerprint({
        "config": config.model_dump(exclude={"checkpoint_every"}),
        "steps": steps,
        "effective_batch": effective_batch,
        "seed": seed,
        "forget": token_digest(forget_examples),
        "retain": token_digest(retain_examples),
        "model": weights_digest(model),
    })
    frozen = None
    if config.retain_loss == "kl" and not config.lora.enabled:
        frozen = copy.deepcopy(model).requires_grad_(False).eval()

    trainable_before = {name: p.requires_grad for name, p in model.named_parameters()}
    if config.lora.enabled:
        model = add_lora(model, config.lora)
    if config.retain_loss == "kl":
        context.reference_logits = _reference_logits(model, frozen)
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    optimizer = make_optimizer(params, config)
    scheduler = make_scheduler(optimizer, config, steps)

    # resume
    diagnostics: list[dict] = []
    start_step, resumed_from = 0, None
    state = load_checkpoint(checkpoint_dir, run_fingerprint, device)
    if state is not None:
        with torch.no_grad():
            for name, p in named:
                p.copy_(state["weights"][name])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        diagnostics = list(state["diagnostics"])
        start_step = resumed_from = state["step"]

    # the model as the losses call it, wrapped for DDP across ranks
    capture = decoder_layer(model, config.rmu.layer) if config.forget_loss == "rmu" else None
    loss_model = LossModel(model, capture)
    module: torch.nn.Module = loss_model
    if world_size > 1:
        module = torch.nn.parallel.DistributedDataParallel(
            loss_model,
            device_ids=[device.index] if device.type == "cuda" else None,
            broadcast_buffers=False,
            gradient_as_bucket_view=True,
            find_unused_parameters=config.forget_loss == "rmu",  # RMU's loss stops at one layer
        )

    batch_args = dict(seed=seed, micro_batch=config.batch_size, grad_accum=config.grad_accum,
                      rank=rank, world_size=world_size, pad_token_id=pad, device=device)
    forget_batches = BatchStream(forget_examples, stream=0, extra=forget_extra, **batch_args)
    retain_batches = BatchStream(retain_examples, stream=1, **batch_args)
    forget_fn, retain_fn = FORGET_LOSSES[config.forget_loss], RETAIN_LOSSES[config.retain_loss]

    def forget_loss(step: int, micro: int) -> torch.Tensor:
        return forget_fn(module, forget_batches(step, micro), context).sum() / per_rank

    def retain_loss(step: int, micro: int) -> torch.Tensor:
        return retain_fn(module, retain_batches(step, micro), context).sum() / per_rank

    main = rank == 0
    if main and log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text("".join(json.dumps(entry) + "\n" for entry in diagnostics), encoding="utf-8")

    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[status]}"), TimeElapsedColumn())
    with Progress(*columns, disable=not (show_progress and main)) as progress, _forked_rng(device):
        task = progress.add_task(f"unlearn ({config.combiner})", total=steps, completed=start_step, status="")

        def log(record: dict) -> None:
            diagnostics.append(record)
            if main and log_path is not None:
                with log_path.open("a", encoding="utf-8") as stream:
                    stream.write(json.dumps(record) + "\n")
            progress.update(task, advance=1, status=f"forget {record['forget_loss']:.3f}  "
                                                    f"retain {record['retain_loss']:.3f}  xi {record['xi']:.2f}")
            if on_step is not None:
                on_step(record)

        def checkpoint(step: int) -> None:
            if main and checkpoint_dir is not None:
                save_checkpoint(checkpoint_dir, {
                    "fingerprint": run_fingerprint,
                    "step": step,
                    "weights": {name: p.detach() for name, p in named},
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "diagnostics": diagnostics,
                })

        model.train()
        try:
            train_bilevel(
                params, forget_loss, retain_loss, optimizer, scheduler,
                steps=steps, start_step=start_step, combiner=config.combiner, lower=config.lower,
                gamma=config.gamma, alpha=config.alpha, grad_accum=config.grad_accum,
                max_grad_norm=config.max_grad_norm, seed=seed,
                no_sync=getattr(module, "no_sync", nullcontext),
                sum_over_ranks=_sum_over_ranks if world_size > 1 else None, world_size=world_size,
                log=log, checkpoint=checkpoint, checkpoint_every=config.checkpoint_every,
            )
        finally:
            model.eval()
            for p in params:
                p.grad = None

    if config.lora.enabled:
        model = model.merge_and_unload()
        for name, p in model.named_parameters():  # peft froze the base weights; give them back as they were
            p.requires_grad_(trainable_before.get(name, True))
    return UnlearnResult(model=model, diagnostics=diagnostics, steps=steps, resumed_from=resumed_from,
                         fingerprint=run_fingerprint)


# ---- the model as the losses see it ----

class LossModel(torch.nn.Module):
    """What the losses call and what DDP wraps: the causal LM without a KV cache.

    ``forward(input_ids, attention_mask)`` returns the LM's output (``.logits``);
    with ``capture=True`` it returns ``{"activations": ...}``, the output of ``layer``, and
    stops the forward pass there (RMU needs nothing above it, and DDP then sees exactly the
    parameters the loss used).
    """

    def __init__(self, model: torch.nn.Module, layer: torch.nn.Module | None = None):
        super().__init__()
        self.model = model
        self._layer = (layer,)  # a tuple, so the layer is not registered twice

    def forward(self, input_ids, attention_mask, capture: bool = False):
        if not capture:
            return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        layer = self._layer[0]
        if layer is None:
            raise ValueError("this LossModel was built without a layer to capture")
        handle = layer.register_forward_hook(_stop_forward)
        try:
            self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        except _Captured as captured:
            return {"activations": captured.output}
        finally:
            handle.remove()
        raise RuntimeError("the RMU layer was not reached in the forward pass")


class _Captured(Exception):
    def __init__(self, output: torch.Tensor):
        super().__init__("captured")
        self.output = output


def _stop_forward(module, inputs, output):
    raise _Captured(output[0] if isinstance(output, tuple) else output)


def decoder_layer(model: torch.nn.Module, index: int) -> torch.nn.Module:
    """The ``index``-th decoder block (``...layers.N``, ``...h.N`` or ``...blocks.N``)."""
    pattern = re.compile(rf"(?:^|\.)(?:layers|h|blocks)\.{index}$")
    matches = [module for name, module in model.named_modules() if pattern.search(name)]
    if len(matches) != 1:
        count = sum(1 for name, _ in model.named_modules() if re.search(r"(?:^|\.)(?:layers|h|blocks)\.\d+$", name))
        raise ValueError(
            f"unlearn.rmu.layer={index}: expected one decoder layer with that index, found {len(matches)} "
            f"(the model has {count} numbered layers; indices start at 0)"
        )
    return matches[0]


def _reference_logits(model: torch.nn.Module, frozen: torch.nn.Module | None):
    """Logits of the frozen starting model: the copy, or the LoRA model with adapters disabled."""
    def reference(batch: dict) -> torch.Tensor:
        with torch.no_grad():
            if frozen is not None:
                return frozen(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                              use_cache=False).logits
            with model.disable_adapter():
                return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             use_cache=False).logits
    return reference


@torch.no_grad()
def sequence_logps(model: torch.nn.Module, examples: Sequence[Encoded], pad_token_id: int,
                   batch_size: int = 32) -> torch.Tensor:
    """Summed target-token log-probability of each example under ``model``, on the host."""
    device = next(model.parameters()).device
    batches = scored_batches(LossModel(model), list(examples), pad_token_id, batch_size, device)
    return torch.cat([scores.sum_logp for scores in batches]).cpu()


def rmu_target(model: torch.nn.Module, config: UnlearnConfig, seed: int) -> torch.Tensor:
    """``c * u``: ``u`` uniform on [0, 1)^d, normalised; seeded, so every rank draws the same."""
    width = getattr(model.config, "hidden_size", None)
    if width is None:
        raise ValueError("RMU needs model.config.hidden_size to size its random target")
    generator = torch.Generator().manual_seed(seed)
    u = torch.rand(width, generator=generator, dtype=torch.float64)
    return (u / u.norm() * config.rmu.steering_coeff).float().to(next(model.parameters()).device)


def add_lora(model: torch.nn.Module, lora: LoRAConfig) -> torch.nn.Module:
    """Wrap ``model`` with peft LoRA adapters; only the adapters stay trainable."""
    from peft import LoraConfig, get_peft_model

    peft_config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                             target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, peft_config)
    except ValueError as error:
        raise ValueError(f"unlearn.lora.target_modules={list(lora.target_modules)}: {error}") from error


# ---- optimisation ----

def make_optimizer(params: list[torch.Tensor], config: UnlearnConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, config: UnlearnConfig, steps: int):
    """Linear warm-up over ``warmup_steps``, then constant or cosine decay to 0 at ``steps``."""
    warmup = config.warmup_steps

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if config.scheduler == "constant":
            return 1.0
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def resolve_steps(config: UnlearnConfig, n_forget: int, effective_batch: int) -> int:
    """``unlearn.steps``, or enough steps for ``unlearn.epochs`` passes over the forget set."""
    if config.epochs is None:
        return config.steps
    return max(1, math.ceil(config.epochs * n_forget / effective_batch))


# ---- data ----

class BatchStream:
    """The micro-batches of one level; the global batch of a step depends only on ``(seed, step)``.

    The examples are visited in epochs, each a seeded permutation; step ``t`` takes positions
    ``t*E .. (t+1)*E - 1`` of that endless sequence (``E`` = effective batch). Rank ``r``'s
    micro-batch ``m`` is the ``(r * grad_accum + m)``-th slice of ``micro_batch`` examples.
    """

    def __init__(self, examples: Sequence[Encoded], *, seed: int, stream: int, micro_batch: int,
                 grad_accum: int, rank: int, world_size: int, pad_token_id: int, device: torch.device,
                 extra: dict[str, torch.Tensor] | None = None):
        self.examples, self.seed, self.stream = list(examples), seed, stream
        self.micro_batch, self.grad_accum, self.rank = micro_batch, grad_accum, rank
        self.effective = micro_batch * grad_accum * world_size
        self.pad, self.device, self.extra = pad_token_id, device, extra or {}
        self._epoch: tuple[int, list[int]] | None = None
        self._step: tuple[int, list[int]] | None = None

    def global_indices(self, step: int) -> list[int]:
        if self._step is None or self._step[0] != step:
            n = len(self.examples)
            positions = range(step * self.effective, (step + 1) * self.effective)
            self._step = (step, [self._permutation(p // n)[p % n] for p in positions])
        return self._step[1]

    def __call__(self, step: int, micro: int) -> dict[str, torch.Tensor]:
        start = (self.rank * self.grad_accum + micro) * self.micro_batch
        indices = self.global_indices(step)[start : start + self.micro_batch]
        batch = collate([self.examples[i] for i in indices], self.pad)
        for key, values in self.extra.items():  # per-example values, kept on the host
            batch[key] = values[torch.tensor(indices)]
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def _permutation(self, epoch: int) -> list[int]:
        if self._epoch is None or self._epoch[0] != epoch:
            key = ((self.seed * 1_000_003 + self.stream) * 1_000_003 + epoch) % (2**63)
            generator = torch.Generator().manual_seed(key)
            self._epoch = (epoch, torch.randperm(len(self.examples), generator=generator).tolist())
        return self._epoch[1]


def _encode_forget(tokenizer, forget: list[Record], config: UnlearnConfig, max_length: int,
                   seed: int) -> list[Encoded]:
    if config.forget_loss != "idk":
        return [encode_record(tokenizer, record, max_length) for record in forget]
    answers = config.idk.answers
    choice = torch.randint(len(answers), (len(forget),), generator=torch.Generator().manual_seed(seed)).tolist()
    return [encode_record(tokenizer, record, max_length, answer=answers[c]) for record, c in zip(forget, choice)]


def _check_inputs(forget: list[Record], retain: list[Record], config: UnlearnConfig) -> None:
    if not forget:
        raise ValueError("the forget set is empty: nothing to unlearn")
    if not retain:
        raise ValueError("the retain set is empty: unlearning needs retain data to preserve utility")
    if config.forget_loss == "idk":
        if not config.idk.answers:
            raise ValueError("unlearn.idk.answers is empty: the idk loss needs refusal answers")
        if not all(isinstance(record, QARecord) for record in forget):
            raise ValueError("unlearn.forget_loss 'idk' needs question/answer records; the forget set has "
                             "documents - choose ga, npo, simnpo or rmu")


# ---- ranks ----

def _rank_and_world() -> tuple[int, int]:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _sum_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    torch.distributed.all_reduce(tensor)
    return tensor


def _forked_rng(device: torch.device):
    """Keep the caller's global RNG untouched by the per-step reseeding in the loop."""
    if device.type != "cuda":
        return torch.random.fork_rng(devices=[])
    return torch.random.fork_rng(devices=[device.index if device.index is not None else torch.cuda.current_device()])
