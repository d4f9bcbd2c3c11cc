"""The optimizer, the learning-rate schedule and the number of steps of an unlearning run."""

from __future__ import annotations

import math

import torch

from components.config import UnlearnConfig


def make_optimizer(params: list[torch.Tensor], config: UnlearnConfig) -> torch.optim.Optimizer:
    """AdamW or SGD (with ``unlearn.momentum``) over ``params`` with ``unlearn.lr`` and ``unlearn.weight_decay``."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
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
