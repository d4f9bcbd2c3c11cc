"""Stop unlearning once the forget set looks like the holdout (``unlearn.stop``), with no oracle.

Forgetting has a right amount: too little and the erased records are still remembered, too
much and they stand out as *less* familiar than text the model never saw, which gives them
away (membership AUC far below 0.5). The holdout - records of the same kind the model never
trained on - is the oracle-free yardstick. Every ``stop.every`` steps a fixed probe is
scored: up to ``stop.probe`` records of the forget set and as many of the holdout, the mean
answer NLL of each (fp32, no gradients, the model in eval mode and then back in train mode).
The run stops when the two samples are alike:

- ``ks``: the two-sample KS p-value of the per-record NLLs is at least ``stop.min_ks_p``; or
- ``mean`` (``stop.criterion: ks_or_mean``, the default): the forget records' mean NLL has reached
  the holdout's (any further step would push them past it, into over-forgetting). It is the
  fallback where the two never look alike by KS (the demo world, where even the oracle tells
  forget from holdout records); on SmolLM2 it fired two probes before the KS did, while most
  forget records were still remembered (``benchmarks/README.md``): ``criterion: ks`` waits for the KS.

``unlearn.steps`` (or ``stop.max_steps``) is the cap. Under ``torchrun`` every rank scores the
probe (FSDP needs every rank in each forward pass) and rank 0's decision is broadcast, so all
ranks stop at the same step.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Sequence

import torch

from components.config import UnlearnConfig
from components.data.records import Record
from components.evaluation.formulas import ks_p_value
from components.modeling.encoding import Encoded, encode_record
from components.modeling.scoring import mean_token_nll


class StopUnlearning(Exception):
    """Raised from the step log when the stopping rule is met; the run ends after that step."""

    def __init__(self, step: int, reason: str):
        super().__init__(f"stopped at step {step}: {reason}")
        self.step, self.reason = step, reason


def step_cap(config: UnlearnConfig, steps: int) -> int:
    """The number of steps the run may take: ``stop.max_steps`` under the holdout rule when set."""
    if config.stop.rule == "holdout" and config.stop.max_steps is not None:
        return config.stop.max_steps
    return steps


def probe_records(records: Sequence[Record], n: int, seed: int) -> list[Record]:
    """A fixed sample of at most ``n`` records (seeded; every rank draws the same)."""
    records = list(records)
    if len(records) <= n:
        return records
    return random.Random(seed).sample(records, n)


@dataclass
class HoldoutStopper:
    """The probe and the rule; :meth:`check` after each step returns what to log and whether to stop."""

    model: torch.nn.Module
    forget: list[Encoded]
    holdout: list[Encoded]
    pad_token_id: int
    every: int
    min_ks_p: float
    use_mean: bool = True  # stop.criterion ks_or_mean
    readings: list[dict] = field(default_factory=list)
    reason: str | None = None
    stopped_at: int | None = None

    def read(self, step: int) -> dict:
        """Score the probe now: the means, the KS p-value and the rule's verdict (``probe_stop``)."""
        forget = mean_token_nll(self.model, self.forget, self.pad_token_id).tolist()
        holdout = mean_token_nll(self.model, self.holdout, self.pad_token_id).tolist()
        forget_mean, holdout_mean = sum(forget) / len(forget), sum(holdout) / len(holdout)
        ks_p = ks_p_value(forget, holdout)
        reason = "ks" if ks_p >= self.min_ks_p else ("mean" if self.use_mean and forget_mean >= holdout_mean else None)
        reading = {"step": step, "probe_forget_nll": forget_mean, "probe_holdout_nll": holdout_mean,
                   "probe_ks_p": ks_p, "probe_stop": float(_agreed(reason is not None))}
        self.readings.append(reading)
        return reading

    def check(self, step: int) -> dict:
        """After step ``step``: ``{}`` between probes, else the reading's fields for the step log.

        Sets :attr:`reason` and :attr:`stopped_at` when the rule is met (on every rank alike).
        """
        if step % self.every:
            return {}
        reading = self.read(step)
        if reading["probe_stop"] and self.reason is None:
            self.reason, self.stopped_at = self._reason(), step
        return {k: v for k, v in reading.items() if k != "step"}

    def _reason(self) -> str:
        last = self.readings[-1]
        if last["probe_ks_p"] >= self.min_ks_p:
            return f"ks: forget probe like the holdout (KS p {last['probe_ks_p']:.3f} >= {self.min_ks_p})"
        return (f"mean: forget probe's mean NLL {last['probe_forget_nll']:.3f} reached the holdout's "
                f"{last['probe_holdout_nll']:.3f}")

    def summary(self) -> dict:
        """What the run's summary records: the rule, where and why it stopped, the probe's curve."""
        return {"rule": "holdout", "every": self.every, "min_ks_p": self.min_ks_p,
                "probe_forget": len(self.forget), "probe_holdout": len(self.holdout),
                "stopped_at": self.stopped_at, "reason": self.reason or "cap: the step cap came first",
                "curve": list(self.readings)}


def build_stopper(model: torch.nn.Module, tokenizer, forget: Sequence[Record], holdout: Sequence[Record],
                  config: UnlearnConfig, *, max_length: int, seed: int) -> HoldoutStopper | None:
    """The stopper ``unlearn.stop`` asks for (None under ``rule: none``), its probe encoded once."""
    stop = config.stop
    if stop.rule == "none":
        return None
    if not holdout:
        raise ValueError("unlearn.stop.rule is 'holdout' but no holdout records were given: the rule compares the "
                         "forget set with records the model never saw. Add holdout subjects to the world "
                         "(world.n_holdout_subjects) or set unlearn.stop.rule: none")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def encode(records: Sequence[Record], salt: int) -> list[Encoded]:
        return [encode_record(tokenizer, r, max_length) for r in probe_records(records, stop.probe, seed + salt)]

    return HoldoutStopper(model, encode(forget, 0), encode(holdout, 1), pad, stop.every, stop.min_ks_p,
                          use_mean=stop.criterion == "ks_or_mean")


def _agreed(flag: bool) -> bool:
    """Rank 0's verdict on every rank (no-op in a single process)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    backend = dist.get_backend()
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.broadcast(value, src=0)
    return bool(value.item())
