"""The training loop every unlearning run goes through, the toy bilevel problem included.

One function, :func:`train_bilevel`, with the steps of an optimizer step in order:

1. **lower level**: for each micro-batch, its loss and gradients, accumulated in ``.grad``
   (and all-reduced across ranks on the last micro-batch); then copied into the one extra
   gradient buffer (``stash``);
2. **upper level**: the same, accumulated into the zeroed ``.grad``;
3. **combine** in place: ``.grad <- c_upper * .grad + c_lower * stash`` with the
   coefficients of the combiner, computed on the device from the inner product and norms;
4. **clip** the combined direction ``d`` (not its parts) to ``max_grad_norm``;
5. **check**: every scalar of the step (losses, inner product, norms, ``xi``, norm of ``d``,
   a finite flag) goes to the host in one transfer - the step's only synchronisation - and a
   non-finite value raises :class:`UnlearningDivergedError` before the weights change;
6. **step** the optimizer and the learning-rate schedule;
7. **log** the step's diagnostics and **checkpoint** every ``checkpoint_every`` steps.

The loop knows nothing about language models: a level is a callable ``loss(step, micro)``
that fetches its own micro-batch and returns this rank's share of the level's loss for the
step, scaled so that summing over micro-batches and averaging over ranks (what DDP does to
gradients) gives the mean over the whole effective batch.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Callable, ContextManager, Literal, Sequence

import torch

from components.unlearning.combine import COMBINERS, combine_, dot_and_norms, squared_norm

LossFn = Callable[[int, int], torch.Tensor]
CLIP_EPS = 1e-6


class UnlearningDivergedError(RuntimeError):
    """A loss or gradient became NaN or infinite; the run stopped and produced no model."""


def train_bilevel(
    params: Sequence[torch.Tensor],
    forget_loss: LossFn,
    retain_loss: LossFn,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    *,
    steps: int,
    start_step: int = 0,
    combiner: str = "blur",
    lower: Literal["forget", "retain"] = "forget",
    gamma: float = 1.0,
    alpha: float = 1.0,
    grad_accum: int = 1,
    max_grad_norm: float | None = None,
    seed: int | None = None,
    no_sync: Callable[[], ContextManager] = nullcontext,
    sum_over_ranks: Callable[[torch.Tensor], torch.Tensor] | None = None,
    world_size: int = 1,
    log: Callable[[dict], None] | None = None,
    checkpoint: Callable[[int], None] | None = None,
    checkpoint_every: int = 0,
) -> list[dict]:
    """Run optimizer steps ``start_step + 1 .. steps`` and return their diagnostics.

    ``params`` are the trainable tensors the combiner sees (all of them together);
    ``no_sync`` is DDP's ``no_sync`` (gradients are all-reduced on the last micro-batch of
    each level only); ``sum_over_ranks`` all-reduces the logged losses. With ``seed`` the
    global RNG (dropout) is reseeded from ``(seed, step)`` at every step, so a resumed run
    draws the same numbers as an uninterrupted one without carrying RNG state.
    """
    if combiner not in COMBINERS:
        raise ValueError(f"unknown combiner '{combiner}'; choose one of {sorted(COMBINERS)}")
    if lower not in ("forget", "retain"):
        raise ValueError(f"lower must be 'forget' or 'retain', not '{lower}'")
    params = list(params)
    for p in params:  # gradients live for the whole run and are zeroed in place, never set to None
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    stash = [torch.empty_like(p) for p in params]  # the one extra gradient buffer
    lower_loss, upper_loss = (forget_loss, retain_loss) if lower == "forget" else (retain_loss, forget_loss)
    coefficients = COMBINERS[combiner]
    history: list[dict] = []

    for step in range(start_step, steps):
        if seed is not None:
            torch.manual_seed(_step_seed(seed, step))

        # 1-2. losses and gradients of the lower level (kept in the stash), then the upper level
        lower_value = _accumulate(params, lower_loss, step, grad_accum, no_sync)
        torch._foreach_copy_(stash, _grads(params))
        upper_value = _accumulate(params, upper_loss, step, grad_accum, no_sync)
        grads = _grads(params)

        # 3. combine in place: .grad <- c_upper * g_upper + c_lower * g_lower
        inner, lower_sq, upper_sq = dot_and_norms(stash, grads)
        c_upper, c_lower = coefficients(inner, lower_sq, lower=lower, gamma=gamma, alpha=alpha)
        combine_(grads, stash, c_upper, c_lower)

        # 4. clip the combined direction
        grad_norm = squared_norm(grads).sqrt()
        if max_grad_norm is not None:
            torch._foreach_mul_(grads, (max_grad_norm / (grad_norm + CLIP_EPS)).clamp(max=1.0))

        # 5. the step's one host synchronisation, and the guard against divergence
        losses = torch.stack([lower_value, upper_value])
        if sum_over_ranks is not None:
            losses = sum_over_ranks(losses) / world_size
        scalars = torch.cat([losses, torch.stack([inner, lower_sq, upper_sq, c_lower, grad_norm])])
        values = torch.cat([scalars, torch.isfinite(scalars).all().float()[None]]).tolist()
        record = _record(step + 1, values, lower, optimizer.param_groups[0]["lr"])
        if not values[-1]:
            raise UnlearningDivergedError(_diverged_message(record))

        # 6. step
        optimizer.step()
        if scheduler is not None:
            scheduler.step()

        # 7. log and checkpoint
        history.append(record)
        if log is not None:
            log(record)
        if checkpoint is not None and checkpoint_every and ((step + 1) % checkpoint_every == 0 or step + 1 == steps):
            checkpoint(step + 1)
    return history


def _accumulate(params: list[torch.Tensor], loss_fn: LossFn, step: int, grad_accum: int,
                no_sync: Callable[[], ContextManager]) -> torch.Tensor:
    """Zero ``.grad``, then backpropagate ``grad_accum`` micro-batches into it; their summed loss."""
    torch._foreach_zero_(_grads(params))
    total = None
    for micro in range(grad_accum):
        with no_sync() if micro < grad_accum - 1 else nullcontext():
            loss = loss_fn(step, micro)
            loss.backward()
        total = loss.detach() if total is None else total + loss.detach()
    return total.float()


def _grads(params: list[torch.Tensor]) -> list[torch.Tensor]:
    return [p.grad for p in params]  # fetched each time: DDP may re-point .grad at its buckets


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
