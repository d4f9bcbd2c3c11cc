"""blur_combine: the BLUR direction d = g_r + xi * g_f, xi = gamma - <g_r, g_f> / ||g_f||^2."""

from __future__ import annotations

import pytest
import torch

from components.unlearning import blur_combine
from components.unlearning.combine import COMBINERS, combine_, dot_and_norms

SHAPES = [(7, 5), (3,), (2, 3, 4), (1,), (16, 9)]


def random_grads(seed: int, scale: float = 1.0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator) * scale for shape in SHAPES]


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors]).double()


@pytest.mark.parametrize("gamma", [1.0, 0.3, 4.0])
def test_blur_direction_keeps_forget_descent_rate(gamma):
    forget, retain = random_grads(0), random_grads(1, scale=3.0)
    direction, _ = blur_combine(forget, retain, gamma=gamma)
    g_f, d = flat(forget), flat(direction)
    expected = gamma * g_f.dot(g_f)
    assert abs(d.dot(g_f) - expected) <= 1e-5 * abs(expected)


def test_blur_with_zero_forget_gradient_is_retain_gradient():
    retain = random_grads(1)
    direction, stats = blur_combine([torch.zeros_like(r) for r in retain], retain, gamma=2.0)
    for d, r in zip(direction, retain):
        assert torch.equal(d, r)
    assert stats["xi"] == 0.0 and stats["forget_norm_sq"] == 0.0


def test_blur_of_orthogonal_gradients_adds_gamma_times_forget_gradient():
    forget, retain = random_grads(0), random_grads(1)
    g_f, g_r = flat(forget), flat(retain)
    g_r_orthogonal = g_r - g_r.dot(g_f) / g_f.dot(g_f) * g_f
    retain = list(torch.split(g_r_orthogonal.float(), [r.numel() for r in retain]))
    retain = [r.reshape(shape) for r, shape in zip(retain, SHAPES)]
    direction, stats = blur_combine(forget, retain, gamma=0.5)
    for d, f, r in zip(direction, forget, retain):
        torch.testing.assert_close(d, r + 0.5 * f, rtol=1e-6, atol=1e-6)
    assert stats["xi"] == pytest.approx(0.5, abs=1e-6)


def test_blur_matches_reference_on_flattened_vectors():
    forget, retain = random_grads(2), random_grads(3, scale=0.1)
    gamma = 1.7
    g_f, g_r = flat(forget), flat(retain)
    xi = gamma - g_r.dot(g_f) / g_f.dot(g_f)
    reference = g_r + xi * g_f
    direction, stats = blur_combine(forget, retain, gamma=gamma)
    torch.testing.assert_close(flat(direction), reference, rtol=1e-6, atol=1e-6)
    assert stats["inner"] == pytest.approx(float(g_r.dot(g_f)), rel=1e-6)
    assert stats["forget_norm_sq"] == pytest.approx(float(g_f.dot(g_f)), rel=1e-6)
    assert stats["retain_norm_sq"] == pytest.approx(float(g_r.dot(g_r)), rel=1e-6)
    assert stats["xi"] == pytest.approx(float(xi), rel=1e-6)


def test_blur_counts_none_as_zero():
    forget, retain = random_grads(0), random_grads(1)
    forget_with_none = [None if i == 1 else f for i, f in enumerate(forget)]
    retain_with_none = [None if i == 3 else r for i, r in enumerate(retain)]
    zeroed_forget = [torch.zeros_like(f) if i == 1 else f for i, f in enumerate(forget)]
    zeroed_retain = [torch.zeros_like(r) if i == 3 else r for i, r in enumerate(retain)]
    direction, stats = blur_combine(forget_with_none, retain_with_none)
    expected, expected_stats = blur_combine(zeroed_forget, zeroed_retain)
    for d, e in zip(direction, expected):
        assert torch.equal(d, e)
    assert stats == expected_stats
    both_none, _ = blur_combine([None, forget[0]], [None, retain[0]])
    assert both_none[0] is None and both_none[1].shape == SHAPES[0]


def test_blur_combine_leaves_its_inputs_unchanged():
    forget, retain = random_grads(0), random_grads(1)
    before = [t.clone() for t in forget + retain]
    blur_combine(forget, retain)
    assert all(torch.equal(a, b) for a, b in zip(forget + retain, before))


def test_blur_combine_rejects_gradient_lists_of_different_lengths():
    with pytest.raises(ValueError, match="one forget and one retain gradient per parameter"):
        blur_combine(random_grads(0), random_grads(1)[:-1])


def test_in_place_combination_of_the_loop_matches_blur_combine():
    forget, retain = random_grads(4), random_grads(5)
    expected, _ = blur_combine(forget, retain, gamma=0.8)
    stash, grads = [f.clone() for f in forget], [r.clone() for r in retain]
    inner, forget_sq, _ = dot_and_norms(stash, grads)
    c_upper, c_lower = COMBINERS["blur"](inner, forget_sq, lower="forget", gamma=0.8, alpha=1.0)
    combine_(grads, stash, c_upper, c_lower)
    for d, e in zip(grads, expected):
        torch.testing.assert_close(d, e, rtol=1e-6, atol=1e-6)


# Direction tolerance per gradient dtype: the direction is stored in the gradients' dtype
# (about 2^-8 relative for bf16, 2^-11 for fp16); the scalars are accumulated in fp32 (fp64).
DTYPE_TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}
SCALAR_DTYPE = {torch.float64: torch.float64, torch.float32: torch.float32, torch.bfloat16: torch.float32,
                torch.float16: torch.float32}


@pytest.mark.parametrize("dtype", list(DTYPE_TOLERANCE), ids=str)
def test_blur_combine_takes_every_float_dtype_and_matches_the_flattened_reference(dtype):
    forget = [g.to(dtype) for g in random_grads(6)]
    retain = [g.to(dtype) for g in random_grads(7, scale=0.5)]
    g_f, g_r = flat(forget), flat(retain)  # the same (rounded) inputs, in fp64
    xi = 0.7 - g_r.dot(g_f) / g_f.dot(g_f)
    direction, stats = blur_combine(forget, retain, gamma=0.7)
    assert all(d.dtype == dtype for d in direction)
    tolerance = DTYPE_TOLERANCE[dtype]
    torch.testing.assert_close(flat(direction), g_r + xi * g_f, rtol=tolerance, atol=tolerance)
    # the scalars are accumulated in fp32 at least: they match fp64 to fp32 rounding, far
    # below what a bf16/fp16 accumulation would give
    scalar_tolerance = 1e-12 if dtype == torch.float64 else 1e-5
    assert stats["inner"] == pytest.approx(float(g_r.dot(g_f)), rel=scalar_tolerance)
    assert stats["forget_norm_sq"] == pytest.approx(float(g_f.dot(g_f)), rel=scalar_tolerance)
    assert stats["retain_norm_sq"] == pytest.approx(float(g_r.dot(g_r)), rel=scalar_tolerance)
    assert stats["xi"] == pytest.approx(float(xi), rel=scalar_tolerance)


@pytest.mark.parametrize("dtype", list(SCALAR_DTYPE), ids=str)
def test_inner_product_and_norms_are_accumulated_in_fp32_or_fp64(dtype):
    forget = [g.to(dtype) for g in random_grads(8)]
    retain = [g.to(dtype) for g in random_grads(9)]
    assert dot_and_norms(forget, retain).dtype == SCALAR_DTYPE[dtype]


def test_a_long_bf16_gradient_keeps_an_fp32_accurate_norm():
    # 2^16 entries of 1 + 2^-7: a bf16 running sum stalls at 256 and bf16 rounds 66564 to 66560 at best;
    # an fp32 sum is within 1e-4
    g = torch.full((1 << 16,), 1.0 + 2**-7, dtype=torch.bfloat16)
    expected = (1 << 16) * (1.0 + 2**-7) ** 2
    inner, norm_sq, _ = dot_and_norms([g], [g]).tolist()
    assert inner == pytest.approx(expected, rel=1e-4) and norm_sq == pytest.approx(expected, rel=1e-4)
