"""Stop unlearning once the forget set looks like the holdout (``unlearn.stop``), with no oracle.

Forgetting has a right amount: too little and the erased records are still remembered, too
much and they stand out as *less* familiar than text the model never saw, which gives them
away (membership AUC far below 0.5). The holdout - records of the same kind the model never
trained on - is the oracle-free yardstick. Every ``stop.every`` steps a probe is scored: the
forget set and up to ``stop.probe`` records of the holdout, the mean answer NLL of each (fp32,
no gradients, the model in eval mode and then back in train mode). The criteria:

- ``landed`` (the default): the forget set looks like the holdout from both sides - the
  membership AUC of the NLLs (forget as members) is within ``stop.band`` of 0.5 and their KS
  p-value is at least ``stop.min_ks_p`` - at ``stop.confirm`` probes in a row. One probe can land
  by chance on the way down to over-forgetting; the confirmation asks that it stays there, which
  a forget loss that stops at the holdout's level (``match``) makes it do while the retain level
  repairs utility.
- ``reached``: as ``landed``, but a forget set that went past the holdout (AUC below the band) counts
  too. ``match`` never pushes a record past its target, so once the forget set has crossed, more
  steps cannot bring it back; they only cost utility. A fast step can jump the band between two
  probes, and ``landed`` then runs to the cap.
- ``ks``: the KS p-value alone reaches ``stop.min_ks_p``; ``ks_or_mean``: or the forget mean NLL
  reaches the holdout's (the earlier rules; the mean can cross while most records are remembered).

A run that does not land is not left wherever the cap finds it. Under ``landed`` with
``stop.overshoot: restore`` (the default) each probe is ranked by how near the holdout it is
(:func:`nearness`: inside the band by its KS p-value, outside by its distance from 0.5), the
caller keeps the weights of the nearest probe so far, and the run ends when the forget set has
been past the holdout (AUC below ``0.5 - band``) at ``stop.confirm`` probes in a row - or at the
cap without landing - with those weights restored. A forget set that crossed between two probes
(a fast step jumps the band, or the KS spread never matched) then comes back as the model that
was nearest, not the most over-forgotten one. ``stopped_at`` is the step whose weights are the
result; ``ended_at`` the last step trained. With ``stop.land_at: first`` a landed run keeps the
weights of the probe where it arrived in the band (the first of the ``confirm`` in a row): the later
probes only confirm that it stays, while each step past the arrival forgets more (on a pretrained
model the AUC falls 0.03-0.07 a step there) and costs utility.

Under ``unlearn.forget_loss: match`` each probe also refreshes every forget record's target NLL
(:func:`matched_targets`). ``unlearn.steps`` (or ``stop.max_steps``) is the cap. Under
``torchrun`` every rank scores the probe (FSDP needs every rank in each forward pass) and rank 0's
decision and targets are broadcast, so all ranks train alike and stop at the same step.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Sequence

import torch

from components.config import StopConfig, UnlearnConfig
from components.data.records import Record
from components.evaluation.formulas import ks_p_value, membership_auc
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


def matched_targets(forget_nll: torch.Tensor, holdout_nll: torch.Tensor) -> torch.Tensor:
    """Each forget record's target NLL: the holdout's NLL quantile at the record's rank in the forget set
    (quantile matching), so a forget set that reached its targets is distributed like the holdout."""
    ranks = torch.argsort(torch.argsort(forget_nll)).to(torch.float64)
    levels = (ranks + 0.5) / len(forget_nll)
    return torch.quantile(holdout_nll.to(torch.float64), levels).to(torch.float32)


def nearness(reading: dict, stop: StopConfig) -> tuple[int, float]:
    """How near the holdout a probe's forget set is (larger is nearer): a probe inside the band beats any
    outside it, and is ranked by its KS p-value; outside, by its AUC's distance from 0.5."""
    distance = abs(reading["probe_auc"] - 0.5)
    return (1, reading["probe_ks_p"]) if distance <= stop.band else (0, -distance)


@dataclass
class HoldoutStopper:
    """The probe and the rule; :meth:`check` after each step returns what to log and whether to stop.

    Under ``overshoot: restore`` a reading that is the nearest so far carries ``probe_nearest: 1.0``: the
    caller keeps that step's weights, and restores them when :attr:`stopped_at` is before :attr:`ended_at`.
    """

    model: torch.nn.Module
    forget: list[Encoded]
    holdout: list[Encoded]
    pad_token_id: int
    stop: StopConfig
    targets: torch.Tensor | None = None  # forget_loss match: the per-record targets, refreshed in place
    reference: torch.Tensor | None = None  # stop.reference start: the holdout probe's scores under the starting model
    readings: list[dict] = field(default_factory=list)
    reason: str | None = None
    stopped_at: int | None = None  # the step whose weights are the result
    ended_at: int | None = None  # the last step trained (after stopped_at when the nearest probe was restored)
    streak: int = 0
    past: int = 0  # probes in a row with the forget set past the holdout
    nearest: dict | None = None  # overshoot restore: the nearest probe so far (its weights are kept)
    _last_verdict: str | None = None
    _overshot: bool = False  # rank 0's last verdict was an overshoot (the nearest probe's weights are restored)

    @property
    def restores(self) -> bool:
        """Whether this rule keeps the nearest probe's weights (``landed`` with ``overshoot: restore``)."""
        return self.stop.criterion == "landed" and self.stop.overshoot == "restore"

    def scores(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The score (``stop.statistic``) of every forget record and of the holdout probe, now."""
        k = self.stop.score_k
        forget = mean_token_nll(self.model, self.forget, self.pad_token_id, mink_k=k)
        holdout = (self.reference if self.reference is not None
                   else mean_token_nll(self.model, self.holdout, self.pad_token_id, mink_k=k))
        reshard = getattr(self.model, "reshard", None)
        if reshard is not None:  # FSDP keeps the root's weights gathered after a forward with no backward
            reshard()
        return forget, holdout

    def read(self, step: int) -> dict:
        """Score the probe now: means, AUC, KS p-value and the rule's verdict (``probe_stop``)."""
        forget, holdout = self.scores()
        if self.targets is not None:
            self.targets.copy_(_broadcast(matched_targets(forget, holdout)))
        forget_list, holdout_list = forget.tolist(), holdout.tolist()
        forget_mean, holdout_mean = sum(forget_list) / len(forget_list), sum(holdout_list) / len(holdout_list)
        ks_p = ks_p_value(forget_list, holdout_list)
        auc = membership_auc([-v for v in forget_list], [-v for v in holdout_list])
        return self.decide({"step": step, "probe_forget_nll": forget_mean, "probe_holdout_nll": holdout_mean,
                            "probe_ks_p": ks_p, "probe_auc": auc})

    def decide(self, reading: dict) -> dict:
        """The rule on one probe's reading (step, means, KS p, AUC): the reading with its verdict added."""
        if self.restores:  # rank 0 decides, so every rank keeps (and restores) the same step's weights
            if self.stop.land_at == "first" and self._lands(reading["probe_ks_p"], reading["probe_auc"]):
                nearer = _from_rank0(self.streak == 0)  # an arrival is kept; the probes confirming it are not
            else:
                nearer = _from_rank0(self.nearest is None or nearness(reading, self.stop) > nearness(self.nearest,
                                                                                                    self.stop))
            if nearer:
                self.nearest = dict(reading)
            reading["probe_nearest"] = float(nearer)
        verdict = self._last_verdict = self._verdict(reading["probe_ks_p"], reading["probe_auc"],
                                                     reading["probe_forget_nll"], reading["probe_holdout_nll"])
        kind = _from_rank0(0 if verdict is None else 2 if verdict.startswith("overshot") else 1)
        self._overshot = kind == 2
        reading["probe_stop"] = float(kind > 0)
        self.readings.append(reading)
        return reading

    def _verdict(self, ks_p: float, auc: float, forget_mean: float, holdout_mean: float) -> str | None:
        stop = self.stop
        if stop.criterion in ("landed", "reached"):
            self.streak = self.streak + 1 if self._lands(ks_p, auc) else 0
            self.past = self.past + 1 if auc < 0.5 - stop.band else 0
            if self.streak >= stop.confirm:
                where = (f"within {stop.band} of 0.5" if stop.criterion == "landed"
                         else f"at most 0.5 + {stop.band}: no more familiar than the holdout")
                return (f"{stop.criterion}: forget set like the holdout at {stop.confirm} probe(s) in a row "
                        f"(AUC {auc:.3f} {where}, KS p {ks_p:.3f} >= {stop.min_ks_p})")
            if self.restores and self.past >= stop.confirm:
                return (f"overshot: forget set past the holdout at {stop.confirm} probe(s) in a row (AUC {auc:.3f} "
                        f"< 0.5 - {stop.band}); {self._restoring()}")
            return None
        if ks_p >= stop.min_ks_p:
            return f"ks: forget probe like the holdout (KS p {ks_p:.3f} >= {stop.min_ks_p})"
        if stop.criterion == "ks_or_mean" and forget_mean >= holdout_mean:
            return f"mean: forget probe's mean NLL {forget_mean:.3f} reached the holdout's {holdout_mean:.3f}"
        return None

    def _lands(self, ks_p: float, auc: float) -> bool:
        """Whether one probe's reading is where ``landed`` (or ``reached``) wants the forget set."""
        stop = self.stop
        near = abs(auc - 0.5) <= stop.band if stop.criterion == "landed" else auc <= 0.5 + stop.band
        return near and ks_p >= stop.min_ks_p

    def check(self, step: int) -> dict:
        """After step ``step``: ``{}`` between probes, else the reading's fields for the step log.

        Sets :attr:`reason` and :attr:`stopped_at` when the rule is met (on every rank alike).
        """
        if step % self.stop.every:
            return {}
        return self._settle(self.read(step))

    def _settle(self, reading: dict) -> dict:
        step = reading["step"]
        if reading["probe_stop"] and self.reason is None:
            self.reason = self._last_verdict or "rank 0's probe met the rule"
            self.ended_at = step
            arrived = self.stop.land_at == "first" and self.restores and not self._overshot
            self.stopped_at = self.nearest["step"] if self._overshot or arrived else step
            if arrived and self.stopped_at != step:
                self.reason += f"; kept the weights of step {self.stopped_at}, where it arrived"
        return {k: v for k, v in reading.items() if k != "step"}

    def at_cap(self, step: int) -> None:
        """The cap ended the run at ``step`` before the rule did: under ``overshoot: restore`` the nearest
        probe's weights become the result (:attr:`stopped_at`), else the last step's do."""
        if self.reason is not None:
            return
        self.ended_at = step
        if self.restores and self.nearest is not None and self.nearest["step"] != step:
            self.stopped_at = self.nearest["step"]
            self.reason = f"cap: the step cap came first; {self._restoring()}"

    def _restoring(self) -> str:
        near = self.nearest
        return (f"restored the weights of step {near['step']}, the probe nearest the holdout (AUC "
                f"{near['probe_auc']:.3f}, KS p {near['probe_ks_p']:.3f})")

    def state(self) -> dict:
        """What a checkpoint keeps so a resumed run decides as an uninterrupted one would."""
        return {"readings": list(self.readings), "streak": self.streak, "past": self.past, "nearest": self.nearest}

    def load_state(self, state: dict | None) -> None:
        if state:
            self.readings, self.streak, self.past = list(state["readings"]), state["streak"], state["past"]
            self.nearest = state["nearest"]

    def summary(self) -> dict:
        """What the run's summary records: the rule, where and why it stopped, the probe's curve."""
        return {"rule": "holdout", "criterion": self.stop.criterion, "every": self.stop.every,
                "band": self.stop.band, "min_ks_p": self.stop.min_ks_p, "confirm": self.stop.confirm,
                "probe_forget": len(self.forget), "probe_holdout": len(self.holdout),
                "overshoot": self.stop.overshoot if self.stop.criterion == "landed" else None,
                "land_at": self.stop.land_at, "reference": self.stop.reference,
                "stopped_at": self.stopped_at, "ended_at": self.ended_at,
                "reason": self.reason or "cap: the step cap came first", "curve": list(self.readings)}


def replay(curve: Sequence[dict], stop: StopConfig, last_step: int) -> dict:
    """Where the rule ``stop`` would have ended a run whose probes read ``curve`` and that trained up to
    ``last_step``: its ``stopped_at``, ``ended_at`` and ``reason``. The probe only reads the model, so up to
    the first step where two rules decide differently their runs are the same run."""
    stopper = HoldoutStopper(None, [], [], 0, stop)
    for reading in curve:
        fields = ("step", "probe_forget_nll", "probe_holdout_nll", "probe_ks_p", "probe_auc")
        stopper._settle(stopper.decide({key: reading[key] for key in fields}))
        if stopper.ended_at is not None:
            break
    else:
        stopper.at_cap(last_step)
    return {"stopped_at": stopper.stopped_at, "ended_at": stopper.ended_at,
            "reason": stopper.reason or "cap: the step cap came first"}


def encode_probe(tokenizer, forget: Sequence[Record], holdout: Sequence[Record], config: UnlearnConfig, *,
                 max_length: int, seed: int) -> tuple[list[Encoded], list[Encoded]]:
    """The probe's examples: every forget record (the targets of ``match`` need them all) and a fixed
    sample of at most ``stop.probe`` holdout records."""
    if not holdout:
        raise ValueError(f"unlearn.{'forget_loss is match' if config.forget_loss == 'match' else 'stop.rule is holdout'}"
                         " but no holdout records were given: it compares the forget set with records the model "
                         "never saw. Add holdout subjects to the world (world.n_holdout_subjects, "
                         "world.holdout_path) or choose another forget loss / unlearn.stop.rule: none")
    forget_probe = forget if config.forget_loss == "match" else probe_records(forget, config.stop.probe, seed)
    return ([encode_record(tokenizer, r, max_length) for r in forget_probe],
            [encode_record(tokenizer, r, max_length) for r in probe_records(holdout, config.stop.probe, seed + 1)])


def build_stopper(model: torch.nn.Module, tokenizer, forget: Sequence[Record], holdout: Sequence[Record],
                  config: UnlearnConfig, *, max_length: int, seed: int,
                  targets: torch.Tensor | None = None, reference: torch.Tensor | None = None) -> HoldoutStopper | None:
    """The stopper ``unlearn.stop`` asks for (None under ``rule: none`` unless ``match`` needs its probe to
    refresh ``targets``), its probe encoded once. ``reference``: the holdout probe's scores under the starting
    model (``stop.reference: start``), which every probe then compares with instead of scoring the holdout."""
    if config.stop.rule == "none" and targets is None:
        return None
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    forget_probe, holdout_probe = encode_probe(tokenizer, forget, holdout, config, max_length=max_length, seed=seed)
    stop = config.stop
    if stop.rule == "none":  # only the targets' refresh: a rule that never fires
        stop = stop.model_copy(update={"criterion": "landed", "confirm": 10**9, "overshoot": "continue"})
    return HoldoutStopper(model, forget_probe, holdout_probe, pad, stop, targets, reference)


def _broadcast(values: torch.Tensor) -> torch.Tensor:
    """Rank 0's tensor on every rank (no-op in a single process)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    backend = dist.get_backend()
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    moved = values.to(device)
    dist.broadcast(moved, src=0)
    return moved.to(values.device)


def _from_rank0(value: int) -> int:
    """Rank 0's verdict (a small integer or a flag) on every rank (no-op in a single process)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return int(value)
    backend = dist.get_backend()
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    tensor = torch.tensor([float(value)], device=device)
    dist.broadcast(tensor, src=0)
    return int(tensor.item())
