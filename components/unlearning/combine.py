"""Combiners: how the forget gradient ``g_f`` and the retain gradient ``g_r`` become one step.

A combiner is a small function looked up by name (``unlearn.combiner``) in :data:`COMBINERS`.
It sees only scalars - the inner product of the two gradients and their squared norms, over
*all* trainable parameters together - and returns the two coefficients of the direction

    d = c_upper * g_upper + c_lower * g_lower

as on-device values, so combining never waits for the host. Which gradient is the lower
level is ``unlearn.lower``: ``forget`` (BLUR as published: forgetting has priority) or
``retain`` (the ablation that swaps the roles).

``blur`` (Reisizadeh et al., EACL 2026)::

    d = g_u + xi * g_l,   xi = gamma - <g_u, g_l> / ||g_l||^2   (xi = 0 when ||g_l|| = 0)

so ``<d, g_l> = gamma * ||g_l||^2``: to first order the lower-level loss falls at a rate set
by ``gamma`` whatever the upper level wants, and ``g_u`` acts only orthogonally to ``g_l``.

``blur_p`` (ours, :mod:`components.unlearning.precondition`): BLUR's formula on inner products
taken in AdamW's preconditioned metric, so the promise holds for the step Adam takes.

``weighted_sum`` (the GradDiff / NPO+RT baseline): ``d = gamma * g_f + alpha * g_r``.

The functions here work on lists of tensors with ``torch._foreach_*`` kernels and per-tensor
dot products; the training loop combines in place so it needs one extra gradient buffer.
:func:`blur_combine` is the pure, out-of-place version for callers and tests.
"""

from __future__ import annotations

from typing import Callable, Literal, Sequence

import torch

Lower = Literal["forget", "retain"]


def accumulation_dtype(tensors: Sequence[torch.Tensor]) -> torch.dtype:
    """fp64 if any tensor is fp64, else fp32: scalars are never summed in bf16 or fp16."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def dot_and_norms(lower: Sequence[torch.Tensor], upper: Sequence[torch.Tensor]) -> torch.Tensor:
    """``[<g_l, g_u>, ||g_l||^2, ||g_u||^2]`` over all tensors together, as one fp32 (fp64) tensor.

    Per-tensor kernels whose 0-d results stay on the device; no host synchronisation and no
    temporary of a gradient's size (low-precision gradients are up-cast one tensor at a time).
    Accumulated in fp32, or fp64 when the gradients are fp64.
    """
    lower, upper = list(lower), list(upper)
    dtype = accumulation_dtype(lower + upper)
    inner = torch.stack([_dot(a, b, dtype) for a, b in zip(lower, upper, strict=True)]).sum()
    return torch.stack([inner, squared_norm(lower, dtype), squared_norm(upper, dtype)])


def squared_norm(tensors: Sequence[torch.Tensor], dtype: torch.dtype | None = None) -> torch.Tensor:
    """``sum_i ||t_i||^2`` in fp32 (fp64 for fp64 tensors), on the device."""
    tensors = list(tensors)
    norms = torch._foreach_norm(tensors, 2, dtype=dtype or accumulation_dtype(tensors))
    return torch.stack(norms).square().sum()


def _dot(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    a, b = a.reshape(-1), b.reshape(-1)
    if a.dtype != dtype or b.dtype != dtype:
        a, b = a.to(dtype), b.to(dtype)
    return torch.dot(a, b)


def blur_xi(inner: torch.Tensor, lower_norm_sq: torch.Tensor, gamma: float) -> torch.Tensor:
    """BLUR's coefficient on the lower-level gradient: ``gamma - inner / ||g_l||^2``, 0 if ``g_l = 0``."""
    nonzero = lower_norm_sq > 0
    safe = torch.where(nonzero, lower_norm_sq, torch.ones_like(lower_norm_sq))
    return torch.where(nonzero, gamma - inner / safe, torch.zeros_like(inner))


Coefficients = tuple[float, torch.Tensor]
Combiner = Callable[..., Coefficients]


def blur(inner: torch.Tensor, lower_norm_sq: torch.Tensor, *, lower: Lower, gamma: float,
         alpha: float) -> Coefficients:
    """``d = g_u + xi * g_l`` (``alpha`` is not used)."""
    return 1.0, blur_xi(inner, lower_norm_sq, gamma)


def weighted_sum(inner: torch.Tensor, lower_norm_sq: torch.Tensor, *, lower: Lower, gamma: float,
                 alpha: float) -> Coefficients:
    """``d = gamma * g_f + alpha * g_r``, whichever of the two is called the lower level."""
    c_lower = gamma if lower == "forget" else alpha
    c_upper = alpha if lower == "forget" else gamma
    return c_upper, torch.full_like(inner, c_lower)


# blur_p is BLUR's formula; the loop hands it the inner product and norm in Adam's metric
COMBINERS: dict[str, Combiner] = {"blur": blur, "blur_p": blur, "weighted_sum": weighted_sum}


def combine_(upper: list[torch.Tensor], lower: list[torch.Tensor], c_upper: float,
             c_lower: torch.Tensor) -> None:
    """In place: ``upper <- c_upper * upper + c_lower * lower``; ``lower`` is scaled in place too."""
    if c_upper != 1.0:
        torch._foreach_mul_(upper, c_upper)
    torch._foreach_mul_(lower, c_lower)
    torch._foreach_add_(upper, lower)


def blur_combine(
    forget_grads: Sequence[torch.Tensor | None],
    retain_grads: Sequence[torch.Tensor | None],
    gamma: float = 1.0,
) -> tuple[list[torch.Tensor | None], dict[str, float]]:
    """The BLUR direction ``d = g_r + xi * g_f`` with ``xi = gamma - <g_r, g_f> / ||g_f||^2``.

    ``forget_grads`` and ``retain_grads`` are equal-length sequences of matching tensors
    (one per parameter; ``None`` counts as zero). Inner product and norms are over all
    tensors together. When ``||g_f|| = 0``, ``xi`` is 0 and ``d = g_r``. Returns new tensors
    (the inputs are not modified; an entry is ``None`` only where both inputs are ``None``)
    and ``stats`` with floats ``inner`` (``<g_r, g_f>``), ``forget_norm_sq``,
    ``retain_norm_sq`` and ``xi`` (the coefficient multiplying ``g_f``).
    """
    if len(forget_grads) != len(retain_grads):
        raise ValueError(
            f"blur_combine needs one forget and one retain gradient per parameter; "
            f"got {len(forget_grads)} and {len(retain_grads)}"
        )
    forget, retain, present = [], [], []
    for index, (f, r) in enumerate(zip(forget_grads, retain_grads)):
        if f is None and r is None:
            continue
        if f is not None and r is not None and f.shape != r.shape:
            raise ValueError(f"gradient {index}: forget shape {tuple(f.shape)} != retain shape {tuple(r.shape)}")
        forget.append(f if f is not None else torch.zeros_like(r))
        retain.append(r if r is not None else torch.zeros_like(f))
        present.append(index)
    if not present:
        return [None] * len(forget_grads), {"inner": 0.0, "forget_norm_sq": 0.0, "retain_norm_sq": 0.0, "xi": 0.0}
    inner, forget_sq, retain_sq = dot_and_norms(forget, retain)
    xi = blur_xi(inner, forget_sq, gamma)
    combined = torch._foreach_add(retain, torch._foreach_mul(forget, xi))
    direction: list[torch.Tensor | None] = [None] * len(forget_grads)
    for index, tensor in zip(present, combined):
        direction[index] = tensor
    values = torch.stack([inner, forget_sq, retain_sq, xi]).tolist()
    return direction, dict(zip(("inner", "forget_norm_sq", "retain_norm_sq", "xi"), values))
