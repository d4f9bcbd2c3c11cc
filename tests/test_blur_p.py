"""BLUR-P (ours): BLUR's projection in AdamW's preconditioned metric, checked against flattened vectors."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from components.config import UnlearnConfig
from components.unlearning.loop import StepRule, train_bilevel
from components.unlearning.precondition import preconditioned_scalars, second_moments

SHAPES = [(7, 5), (3,), (2, 3, 4), (16, 9)]
BETA2, EPS = 0.999, 1e-8


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1) for t in tensors]).double()


def make_params(seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator).requires_grad_() for shape in SHAPES]


def quadratic(centres: list[torch.Tensor], scales: list[torch.Tensor]):
    """A loss ``sum scale * (p - centre)^2`` over every tensor: curvature that differs by coordinate,
    so Adam's metric is far from the identity."""
    def loss(params):
        return sum((s * (p - c) ** 2).sum() for p, c, s in zip(params, centres, scales))
    return loss


def reference_xi(g_f: torch.Tensor, g_r: torch.Tensor, v: torch.Tensor, steps: int, gamma: float) -> float:
    """xi_P on flattened vectors: P = 1 / (sqrt(v / (1 - beta2^t)) + eps)."""
    if steps == 0:
        return float(gamma - g_r.dot(g_f) / g_f.dot(g_f))
    p = 1.0 / ((v / (1.0 - BETA2**steps)).sqrt() + EPS)
    return float(gamma - (g_r * p).dot(g_f) / (g_f * p).dot(g_f))


def test_preconditioned_scalars_match_flattened_vectors():
    params = make_params(0)
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):  # second moments from three steps of unlike gradients
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator) * torch.rand(p.shape, generator=generator) * 5
        optimizer.step()
    forget = [torch.randn(s, generator=generator) for s in SHAPES]
    retain = [torch.randn(s, generator=generator) * 0.3 for s in SHAPES]
    moments = second_moments(optimizer, params)
    inner_p, lower_p = preconditioned_scalars(forget, retain, moments).double()
    v = flat([optimizer.state[p]["exp_avg_sq"] for p in params])
    weights = 1.0 / ((v / (1.0 - BETA2**3)).sqrt() + EPS)
    g_f, g_r = flat(forget), flat(retain)
    assert float(inner_p) == pytest.approx(float((g_r * weights).dot(g_f)), rel=1e-5)
    assert float(lower_p) == pytest.approx(float((g_f * weights).dot(g_f)), rel=1e-5)
    # the promise in Adam's metric: <P d, g_f> = gamma <g_f, P g_f>, which plain BLUR's d does not keep
    gamma = 0.7
    d_p = g_r + (gamma - inner_p / lower_p) * g_f
    d_plain = g_r + (gamma - g_r.dot(g_f) / g_f.dot(g_f)) * g_f
    target = gamma * (weights * g_f).dot(g_f)
    assert float((weights * d_p).dot(g_f)) == pytest.approx(float(target), rel=1e-5)
    assert abs(float((weights * d_plain).dot(g_f)) - float(target)) > 1e-3 * abs(float(target))


def test_no_second_moments_before_the_first_step():
    params = make_params(0)
    assert second_moments(torch.optim.AdamW(params, lr=1e-2), params) is None
    with pytest.raises(ValueError, match="Adam-family"):
        second_moments(torch.optim.SGD(params, lr=1e-2), params)


@pytest.mark.parametrize("gamma", [1.0, 0.1])
def test_the_loops_xi_is_the_flattened_reference_at_every_step(gamma):
    """Four AdamW steps of train_bilevel with blur_p; before each, xi_P recomputed from the optimizer's state."""
    generator = torch.Generator().manual_seed(2)
    forget_loss = quadratic([torch.randn(s, generator=generator) for s in SHAPES],
                            [torch.rand(s, generator=generator) * 10 for s in SHAPES])
    retain_loss = quadratic([torch.randn(s, generator=generator) for s in SHAPES],
                            [torch.rand(s, generator=generator) for s in SHAPES])
    params = make_params(3)
    optimizer = torch.optim.AdamW(params, lr=1e-2, betas=(0.9, BETA2), eps=EPS)
    rule = StepRule(combiner="blur_p", gamma=gamma, max_grad_norm=None)
    for step in range(4):
        g_f = flat(torch.autograd.grad(forget_loss(params), params))
        g_r = flat(torch.autograd.grad(retain_loss(params), params))
        v = flat([optimizer.state[p]["exp_avg_sq"] for p in params]) if step else None
        expected = reference_xi(g_f, g_r, v, step, gamma)
        [record] = train_bilevel(params, lambda s, m: forget_loss(params), lambda s, m: retain_loss(params),
                                 optimizer, steps=step + 1, start_step=step, rule=rule)
        assert record["xi"] == pytest.approx(expected, rel=1e-4)
    plain = gamma - float(g_r.dot(g_f) / g_f.dot(g_f))
    assert record["xi"] != pytest.approx(plain, rel=1e-2)  # Adam's metric really changed the projection


def test_blur_p_under_sgd_is_refused_naming_the_fix():
    with pytest.raises(ValidationError, match="use unlearn.combiner: blur"):
        UnlearnConfig(combiner="blur_p", optimizer="sgd")
