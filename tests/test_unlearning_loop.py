"""The training loop on a two-variable toy bilevel problem, and what it costs per step.

Lower level f(x, y) = (x + y - 1)^2 / 2 has a line of minimisers, x + y = 1. Upper level
g(x, y) = ((x - 2)^2 + y^2) / 2 prefers (1.5, -0.5) on that line. The weighted sum f + g
is minimised at (5/3, -1/3), off the line. x and y are separate parameters, so a
combination made per tensor instead of over all parameters together would also fail.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from components.unlearning import UnlearningDivergedError, train_bilevel
from components.unlearning.loop import StepHooks, StepRule

PREFERRED_ON_SOLUTION_SET = (1.5, -0.5)
WEIGHTED_SUM_MINIMUM = (5 / 3, -1 / 3)


def toy(start=(0.0, 0.0)):
    x = torch.tensor([start[0]], requires_grad=True)
    y = torch.tensor([start[1]], requires_grad=True)

    def on_line(step, micro):  # lower level: minimisers x + y = 1
        return 0.5 * (x + y - 1).square().sum()

    def near_two_zero(step, micro):  # upper level
        return 0.5 * ((x - 2).square() + y.square()).sum()

    return x, y, on_line, near_two_zero


def solve(combiner: str, lower: str = "forget", steps: int = 400) -> tuple[float, float]:
    x, y, on_line, near_two_zero = toy()
    forget, retain = (on_line, near_two_zero) if lower == "forget" else (near_two_zero, on_line)
    optimizer = torch.optim.SGD([x, y], lr=0.1)
    train_bilevel([x, y], forget, retain, optimizer, steps=steps, rule=StepRule(combiner=combiner, lower=lower))
    return float(x.detach()), float(y.detach())


def test_blur_converges_to_the_point_the_upper_level_prefers_on_the_lower_solution_set():
    x, y = solve("blur")
    assert x + y == pytest.approx(1.0, abs=1e-4)
    assert (x, y) == pytest.approx(PREFERRED_ON_SOLUTION_SET, abs=1e-3)


def test_weighted_sum_converges_off_the_lower_solution_set():
    x, y = solve("weighted_sum")
    assert (x, y) == pytest.approx(WEIGHTED_SUM_MINIMUM, abs=1e-3)
    assert math.dist((x, y), PREFERRED_ON_SOLUTION_SET) > 0.2


def test_retain_as_lower_level_gives_retain_priority():
    x, y = solve("blur", lower="retain")  # the line is now the retain loss
    assert (x, y) == pytest.approx(PREFERRED_ON_SOLUTION_SET, abs=1e-3)


def test_loop_diagnostics_report_both_losses_and_the_combination():
    x, y, on_line, near_two_zero = toy(start=(1.0, 2.0))
    optimizer = torch.optim.SGD([x, y], lr=0.1)
    first = train_bilevel([x, y], on_line, near_two_zero, optimizer, steps=1, rule=StepRule(gamma=2.0))[0]
    # at (1, 2): g_f = (2, 2), g_r = (-1, 2), f = 2, g = 2.5
    assert first["step"] == 1
    assert first["forget_loss"] == pytest.approx(2.0) and first["retain_loss"] == pytest.approx(2.5)
    assert first["inner"] == pytest.approx(2.0) and first["forget_norm_sq"] == pytest.approx(8.0)
    assert first["retain_norm_sq"] == pytest.approx(5.0)
    assert first["xi"] == pytest.approx(2.0 - 2.0 / 8.0)
    assert first["cos"] == pytest.approx(2.0 / math.sqrt(40.0))
    assert first["grad_norm"] == pytest.approx(math.hypot(-1 + 1.75 * 2, 2 + 1.75 * 2))
    assert first["lr"] == pytest.approx(0.1)


def test_clipping_applies_to_the_combined_direction():
    x, y, on_line, near_two_zero = toy(start=(1.0, 2.0))
    optimizer = torch.optim.SGD([x, y], lr=1.0)
    train_bilevel([x, y], on_line, near_two_zero, optimizer, steps=1, rule=StepRule(max_grad_norm=0.5))
    moved = math.hypot(float(x.detach()) - 1.0, float(y.detach()) - 2.0)
    assert moved == pytest.approx(0.5, rel=1e-5)


def test_non_finite_loss_stops_before_the_weights_change():
    x, y, on_line, near_two_zero = toy(start=(1.0, 2.0))

    def poisoned(step, micro):
        return near_two_zero(step, micro) * (float("nan") if step == 2 else 1.0)

    optimizer = torch.optim.SGD([x, y], lr=0.1)
    seen = []
    with pytest.raises(UnlearningDivergedError, match="step 3: retain_loss=nan"):
        train_bilevel([x, y], on_line, poisoned, optimizer, steps=5, hooks=StepHooks(log=seen.append))
    assert [record["step"] for record in seen] == [1, 2]
    assert torch.isfinite(x).all() and torch.isfinite(y).all()


class HostSyncCounter(TorchFunctionMode):
    """Counts tensor-to-Python conversions: the calls that wait for the device."""

    SYNCS = {"item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy"}

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in self.SYNCS:
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("combiner", ["blur", "weighted_sum"])
def test_loop_synchronises_with_the_host_once_per_step(combiner):
    x, y, on_line, near_two_zero = toy(start=(1.0, 2.0))
    optimizer = torch.optim.SGD([x, y], lr=0.1)  # AdamW would add reads of its CPU step counters
    with HostSyncCounter() as counter:
        train_bilevel([x, y], on_line, near_two_zero, optimizer, steps=7,
                      rule=StepRule(combiner=combiner, grad_accum=2, max_grad_norm=1.0))
    assert counter.count == 7


class AllocationCounter(TorchDispatchMode):
    """Bytes of fresh storage returned by every operator (views and in-place results excluded)."""

    def __init__(self):
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = {t.untyped_storage().data_ptr() for t in _tensors((args, kwargs))}
        out = func(*args, **kwargs)
        for t in _tensors(out):
            if t.untyped_storage().data_ptr() not in inputs:
                self.bytes += t.untyped_storage().nbytes()
                inputs.add(t.untyped_storage().data_ptr())
        return out


def _tensors(tree):
    return [leaf for leaf in tree_leaves(tree) if isinstance(leaf, torch.Tensor)]


def test_blur_keeps_one_extra_gradient_buffer_and_no_per_step_temporaries():
    generator = torch.Generator().manual_seed(0)
    params = [torch.randn(shape, generator=generator).requires_grad_() for shape in [(300, 200), (500,), (40, 30)]]
    targets = [torch.randn(p.shape, generator=generator) for p in params]
    gradient_bytes = sum(p.numel() * p.element_size() for p in params)

    def forget(step, micro):
        return sum((p * t).sum() for p, t in zip(params, targets))

    def retain(step, micro):
        return sum(p.square().sum() for p in params)

    for p in params:
        p.grad = torch.zeros_like(p)
    with AllocationCounter() as losses_alone:  # what the two levels' forward and backward allocate
        forget(0, 0).backward()
        retain(0, 0).backward()

    def loop_bytes(steps: int) -> int:
        optimizer = torch.optim.SGD(params, lr=1e-3)
        with AllocationCounter() as counter:
            train_bilevel(params, forget, retain, optimizer, steps=steps, rule=StepRule(max_grad_norm=1.0))
        return counter.bytes - steps * losses_alone.bytes

    one_step, five_steps = loop_bytes(1), loop_bytes(5)
    assert gradient_bytes <= one_step < 1.01 * gradient_bytes  # the stash, plus a few scalars
    assert five_steps - one_step < 0.01 * gradient_bytes  # nothing gradient-sized per step
