"""The training loop every unlearning run goes through, the toy bilevel problem included.

One function, :func:`train_bilevel`, with the steps of an optimizer step in order:

1. **lower level**: for each micro-batch, its loss and gradients, accumulated in ``.grad``
   (and reduced across ranks on the last micro-batch: all-reduced by DDP, reduce-scattered
   into shards by FSDP); then copied into the one extra gradient buffer (``stash``);
2. **upper level**: the same, accumulated into the zeroed ``.grad``;
3. **combine** in place: ``.grad <- c_upper * .grad + c_lower * stash`` with the
   coefficients of the combiner, computed on the device from the inner product and norms
   (under FSDP summed over the ranks' shards in one all-reduce, see :class:`Ranks`; for
   ``blur_p`` also in the optimizer's preconditioned metric, :mod:`~components.unlearning.precondition`);
4. **clip** the combined direction ``d`` (not its parts) to ``max_grad_norm``;
5. **check**: every scalar of the step (losses, inner product, norms, ``xi``, norm of ``d``,
   a finite flag) goes to the host in one transfer - the step's only synchronisation - and a
   non-finite value raises :class:`UnlearningDivergedError` before the weights change;
6. **step** the optimizer and the learning-rate schedule;
7. **log** the step's diagnostics and **checkpoint** every ``checkpoint_every`` steps.

The knobs come in three small objects: :class:`StepRule` (the method), :class:`Ranks` (the
processes) and :class:`StepHooks` (logging and checkpoints).

The loop knows nothing about language models: a level is a callable ``loss(step, micro)``
that fetches its own micro-batch and returns this rank's share of the level's loss for the
step, scaled so that summing over micro-batches and averaging over ranks (what DDP and FSDP
do to gradients) gives the mean over the whole effective batch.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, ContextManager, Literal, Sequence

import torch

from components.unlearning.combine import COMBINERS, combine_, dot_and_norms, squared_norm
from components.unlearning.precondition import PRECONDITIONED, SecondMoments, preconditioned_scalars, second_moments

LossFn = Callable[[int, int], torch.Tensor]
CLIP_EPS = 1e-6


class UnlearningDivergedError(RuntimeError):
    """A loss or gradient became NaN or infinite; the run stopped and produced no model."""


@dataclass(frozen=True)
class StepRule:
    """What one optimizer step does with the two levels' gradients (``unlearn.*`` knobs).

    With ``seed`` the global RNG (dropout) is reseeded from ``(seed, step)`` at every step,
    so a resumed run draws the same numbers as an uninterrupted one without carrying RNG state.
    """

    combiner: str = "blur"
    lower: Literal["forget", "retain"] = "forget"
    gamma: float = 1.0
    alpha: float = 1.0
    grad_accum: int = 1
    max_grad_norm: float | None = None
    seed: int | None = None


@dataclass(frozen=True)
class Ranks:
    """How the processes of a run share each step (the defaults: one process).

    ``no_sync`` suspends the gradient reduction on all but the last micro-batch of a level
    (DDP's ``no_sync``, FSDP's ``set_requires_gradient_sync(False)``); ``all_reduce`` sums a
    tensor over ranks in place. ``sharded`` (FSDP): each rank holds a shard of every gradient
    (``DTensor``), so the step's scalars - inner product, both squared norms and the losses -
    are computed on the local shards and summed over ranks in one all-reduce, and the norm of
    the combined direction follows from them. Unsharded (DDP): gradients are replicated, the
    scalars are already global and only the logged losses are averaged.
    """

    world_size: int = 1
    no_sync: Callable[[], ContextManager] = nullcontext
    all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
    sharded: bool = False


@dataclass(frozen=True)
class StepHooks:
    """Called after each step: ``log(record)``, and ``checkpoint(step)`` every ``checkpoint_every`` steps."""

    log: Callable[[dict], None] | None = None
    checkpoint: Callable[[int], None] | None = None
    checkpoint_every: int = 0

    def after_step(self, record: dict, steps: int) -> None:
        if self.log is not None:
            self.log(record)
        step = record["step"]
        if self.checkpoint is not None and self.checkpoint_every and (step % self.checkpoint_every == 0
                                                                       or step == steps):
            self.checkpoint(step)


def train_bilevel(
    params: Sequence[torch.Tensor],
    forget_loss: LossFn,
    retain_loss: LossFn,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    *,
    steps: int,
    start_step: int = 0,
    rule: StepRule = StepRule(),
    ranks: Ranks = Ranks(),
    hooks: StepHooks = StepHooks(),
) -> list[dict]:
    """Run optimizer steps ``start_step + 1 .. steps`` and return their diagnostics.

    ``params`` are the trainable tensors the combiner sees (all of them together); ``rule``
    says how a step combines, clips and accumulates; ``ranks`` how processes share it;
    ``hooks`` what happens after it.
    """
    if rule.combiner not in COMBINERS:
        raise ValueError(f"unknown combiner '{rule.combiner}'; choose one of {sorted(COMBINERS)}")
    if rule.lower not in ("forget", "retain"):
        raise ValueError(f"lower must be 'forget' or 'retain', not '{rule.lower}'")
    params = list(params)
    for p in params:  # gradients live for the whole run and are zeroed in place, never set to None
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    stash = [torch.empty_like(g) for g in _grads(params, ranks)]  # the one extra gradient buffer
    lower_loss, upper_loss = (forget_loss, retain_loss) if rule.lower == "forget" else (retain_loss, forget_loss)
    history: list[dict] = []

    for step in range(start_step, steps):
        if rule.seed is not None:
            torch.manual_seed(_step_seed(rule.seed, step))

        # 1-2. losses and gradients of the lower level (kept in the stash), then the upper level
        lower_value = _accumulate(params, lower_loss, step, rule.grad_accum, ranks)
        torch._foreach_copy_(stash, _grads(params, ranks))
        upper_value = _accumulate(params, upper_loss, step, rule.grad_accum, ranks)
        grads = _grads(params, ranks)

        # 3-4. combine in place (.grad <- c_upper * g_upper + c_lower * g_lower) and clip
        losses = torch.stack([lower_value, upper_value])
        moments = second_moments(optimizer, params, sharded=ranks.sharded) if rule.combiner in PRECONDITIONED else None
        scalars = _combine_and_clip(grads, stash, losses, rule, ranks, moments)

        # 5. the step's one host synchronisation, and the guard against divergence
        values = torch.cat([scalars, torch.isfinite(scalars).all().float()[None]]).tolist()
        record = _record(step + 1, values, rule.lower, optimizer.param_groups[0]["lr"])
        if not values[-1]:
            raise UnlearningDivergedError(_diverged_message(record))

        # 6. step
        optimizer.step()
        if scheduler is not None:
            scheduler.step()

        # 7. log and checkpoint
        history.append(record)
        hooks.after_step(record, steps)
    return history


def _combine_and_clip(grads: list[torch.Tensor], stash: list[torch.Tensor], losses: torch.Tensor,
                      rule: StepRule, ranks: Ranks, moments: SecondMoments | None = None) -> torch.Tensor:
    """Steps 3-4 in place on ``grads``; the step's scalars ``[losses, inner, norms, xi, ||d||]``.

    With ``moments`` the combiner is given the inner product and lower norm in Adam's metric (BLUR-P).
    """
    scalars = dot_and_norms(stash, grads)
    if moments is not None:
        scalars = torch.cat([scalars, preconditioned_scalars(stash, grads, moments)])
    if ranks.sharded:  # local shards: one all-reduce sums the scalars and the losses
        summed = ranks.all_reduce(torch.cat([scalars, losses.float()]))
        scalars, losses = summed[: len(scalars)], summed[len(scalars):] / ranks.world_size
    elif ranks.all_reduce is not None:  # replicated gradients: only the losses differ by rank
        losses = ranks.all_reduce(losses) / ranks.world_size
    inner, lower_sq, upper_sq = scalars[0], scalars[1], scalars[2]
    combined_by = scalars[3:5] if moments is not None else scalars[:2]
    c_upper, c_lower = COMBINERS[rule.combiner](*combined_by, lower=rule.lower, gamma=rule.gamma, alpha=rule.alpha)
    combine_(grads, stash, c_upper, c_lower)
    if ranks.sharded:  # ||d||^2 from the global scalars: no second reduction
        grad_norm = (c_upper**2 * upper_sq + 2 * c_upper * c_lower * inner
                     + c_lower.square() * lower_sq).clamp(min=0).sqrt()
    else:
        grad_norm = squared_norm(grads).sqrt()
    if rule.max_grad_norm is not None:
        torch._foreach_mul_(grads, (rule.max_grad_norm / (grad_norm + CLIP_EPS)).clamp(max=1.0))
    return torch.cat([losses, torch.stack([inner, lower_sq, upper_sq, c_lower, grad_norm])])


def _accumulate(params: list[torch.Tensor], loss_fn: LossFn, step: int, grad_accum: int,
                ranks: Ranks) -> torch.Tensor:
    """Zero ``.grad``, then backpropagate ``grad_accum`` micro-batches into it; their summed loss."""
    torch._foreach_zero_(_grads(params, ranks))
    total = None
    for micro in range(grad_accum):
        with ranks.no_sync() if micro < grad_accum - 1 else nullcontext():
            loss = loss_fn(step, micro)
            loss.backward()
        total = loss.detach() if total is None else total + loss.detach()
    return total.float()


def _grads(params: list[torch.Tensor], ranks: Ranks) -> list[torch.Tensor]:
    """The gradients as plain tensors: this rank's shards under FSDP (in-place edits reach ``.grad``).

    Fetched each time: DDP may re-point ``.grad`` at its buckets.
    """
    if ranks.sharded:
        return [p.grad.to_local() for p in params]
    return [p.grad for p in params]


def _record(step: int, values: list[float], lower: str, lr: float) -> dict:
    lower_loss, upper_loss, inner, lower_sq, upper_sq, xi, grad_norm, _ = values
    forget_loss, retain_loss = (lower_loss, upper_loss) if lower == "forget" else (upper_loss, lower_loss)
    forget_sq, retain_sq = (lower_sq, upper_sq) if lower == "forget" else (upper_sq, lower_sq)
    denominator = math.sqrt(forget_sq * retain_sq)
    return {
        "step": step,
        "forget_loss": forget_loss,
        "retain_loss": retain_loss,
        "inner": inner,
        "forget_norm_sq": forget_sq,
        "retain_norm_sq": retain_sq,
        "cos": inner / denominator if denominator > 0 and math.isfinite(denominator) else 0.0,
        "xi": xi,
        "grad_norm": grad_norm,
        "lr": lr,
    }


def _diverged_message(record: dict) -> str:
    bad = [key for key in ("forget_loss", "retain_loss", "inner", "forget_norm_sq", "retain_norm_sq",
                           "xi", "grad_norm") if not math.isfinite(record[key])]
    shown = ", ".join(f"{key}={record[key]}" for key in bad)
    return (
        f"unlearning diverged at step {record['step']}: {shown}. The weights were not updated "
        f"and no model should be written. Lower unlearn.lr, set unlearn.max_grad_norm, or check "
        f"the starting model and data for NaN/inf."
    )


def _step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step) % (2**63 - 1)
