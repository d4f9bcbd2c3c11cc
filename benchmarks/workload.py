"""The step-cost workload shared by ``step_cost`` and ``scaling``: a tiny Llama of a given size on the demo
world's records, the two levels' losses on fixed batches, and each method's steps (the engine's BLUR and
weighted sum, the naive BLUR of :mod:`benchmarks.naive_blur`, the fused weighted sum) timed and metered."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from benchmarks.harness import RESULTS
from benchmarks.naive_blur import naive_blur_train

METHODS = ("blur", "weighted_sum", "naive_blur", "fused_weighted")


@dataclass(frozen=True)
class ModelSize:
    name: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int


DEMO = ModelSize("demo", 128, 256, 4, 4)  # model.tiny in params.yaml
LLAMA_20M = ModelSize("llama-20M", 512, 1408, 6, 8)


@dataclass
class StepCostConfig:
    sizes: tuple[ModelSize, ...] = (DEMO, LLAMA_20M)
    rounds: int = 7
    steps: int = 3  # timed steps per method per round (after one warm-up step)
    batch_size: int = 8
    max_length: int = 128
    gamma: float = 0.1
    alpha: float = 1.0
    max_grad_norm: float = 1.0
    lr: float = 1e-3
    seed: int = 0
    threads: int = 1
    out: Path = RESULTS / "step_cost.json"


# --------------------------------------------------------------------------- the workload


@dataclass
class Workload:
    """A model, its trainable parameters and the two levels' loss callables (fixed batches)."""

    model: torch.nn.Module
    params: list[torch.Tensor]
    forget_loss: Callable[[int, int], torch.Tensor]
    retain_loss: Callable[[int, int], torch.Tensor]
    initial: dict[str, torch.Tensor]
    lr: float

    @property
    def param_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.params)

    def reset(self, optimizer: str = "adamw") -> torch.optim.Optimizer:
        """The initial weights again, no gradients, and a fresh optimizer."""
        self.model.load_state_dict(self.initial)
        for p in self.params:
            p.grad = None
        if optimizer == "sgd":
            return torch.optim.SGD(self.params, lr=self.lr)
        return torch.optim.AdamW(self.params, lr=self.lr)


def build_workload(size: ModelSize, config: StepCostConfig, records=None, tokenizer=None) -> Workload:
    """The engine's own pieces: encoding, batch streams, NPO/NLL losses, the loss model."""
    from components.config import Config, TinyModelConfig
    from components.data.demo_world import generate_world
    from components.modeling.encoding import encode_record
    from components.modeling.tiny_model import build_tiny_model
    from components.unlearning.losses import FORGET_LOSSES, RETAIN_LOSSES, LossContext
    from components.unlearning.batches import BatchStream
    from components.unlearning.modules import LossModel, sequence_logps

    base = Config()
    if records is None:
        world, _ = generate_world(config.seed, base.world.n_subjects, 0, base.world.facts_per_subject)
        records = (world[:40], world[40:])
    forget, retain = records
    if tokenizer is None:
        from components.modeling.demo import train_demo_tokenizer as _train_tokenizer

        tokenizer = _train_tokenizer(base, forget + retain)
    sizes = TinyModelConfig(hidden_size=size.hidden_size, intermediate_size=size.intermediate_size,
                            num_layers=size.num_layers, num_heads=size.num_heads)
    model = build_tiny_model(sizes, tokenizer, config.max_length, config.seed).train()
    unlearn = base.unlearn.model_copy(update={"forget_loss": "npo", "retain_loss": "nll"})
    pad = tokenizer.pad_token_id
    forget_examples = [encode_record(tokenizer, r, config.max_length) for r in forget]
    retain_examples = [encode_record(tokenizer, r, config.max_length) for r in retain]
    extra = {"ref_logp": sequence_logps(model, forget_examples, pad)}
    stream = dict(seed=config.seed, micro_batch=config.batch_size, grad_accum=1, rank=0, world_size=1,
                  pad_token_id=pad, device=torch.device("cpu"))
    forget_batches = BatchStream(forget_examples, stream=0, extra=extra, **stream)
    retain_batches = BatchStream(retain_examples, stream=1, **stream)
    context, loss_model = LossContext(unlearn), LossModel(model)
    n = config.batch_size

    def forget_loss(step: int, micro: int) -> torch.Tensor:
        return FORGET_LOSSES["npo"](loss_model, forget_batches(step, micro), context).sum() / n

    def retain_loss(step: int, micro: int) -> torch.Tensor:
        return RETAIN_LOSSES["nll"](loss_model, retain_batches(step, micro), context).sum() / n

    return Workload(model, [p for p in model.parameters() if p.requires_grad], forget_loss, retain_loss,
                    copy.deepcopy(model.state_dict()), config.lr)


# --------------------------------------------------------------------------- the methods


def run_method(method: str, work: Workload, optimizer: torch.optim.Optimizer, config: StepCostConfig, *,
               start: int, stop: int, log_step: Callable[[dict], None] | None = None) -> None:
    """Optimizer steps ``start + 1 .. stop`` of ``method`` on ``work``."""
    from components.unlearning import train_bilevel
    from components.unlearning.loop import StepHooks, StepRule

    if method in ("blur", "weighted_sum"):
        rule = StepRule(combiner=method, gamma=config.gamma if method == "blur" else 1.0, alpha=config.alpha,
                        max_grad_norm=config.max_grad_norm)
        train_bilevel(work.params, work.forget_loss, work.retain_loss, optimizer, steps=stop, start_step=start,
                      rule=rule, hooks=StepHooks(log=log_step))
    elif method == "naive_blur":
        naive_blur_train(work.params, work.forget_loss, work.retain_loss, optimizer, steps=stop, start_step=start,
                         gamma=config.gamma, max_grad_norm=config.max_grad_norm, log=log_step)
    elif method == "fused_weighted":
        fused_weighted_train(work, optimizer, config, start=start, stop=stop, log_step=log_step)
    else:
        raise ValueError(f"unknown method '{method}'; choose one of {METHODS}")


def fused_weighted_train(work: Workload, optimizer: torch.optim.Optimizer, config: StepCostConfig, *,
                         start: int, stop: int, log_step: Callable[[dict], None] | None = None) -> None:
    """The leanest weighted sum: both backward passes accumulate into ``.grad``; clip; step."""
    for step in range(start, stop):
        optimizer.zero_grad(set_to_none=False)
        (1.0 * work.forget_loss(step, 0)).backward()
        (config.alpha * work.retain_loss(step, 0)).backward()
        torch.nn.utils.clip_grad_norm_(work.params, config.max_grad_norm)
        optimizer.step()
        if log_step is not None:
            log_step({"step": step + 1})


def check_naive_matches_blur(work: Workload, config: StepCostConfig, steps: int = 2) -> float:
    """Max absolute weight difference between the engine's BLUR and the naive one after ``steps`` steps.

    With SGD, so the weights move exactly along the two directions (AdamW would amplify
    rounding differences in near-zero gradient coordinates up to a whole learning rate).
    """
    results = []
    for method in ("blur", "naive_blur"):
        optimizer = work.reset("sgd")
        run_method(method, work, optimizer, config, start=0, stop=steps)
        results.append([p.detach().clone() for p in work.params])
    return max(float((a - b).abs().max()) for a, b in zip(*results))


def time_steps(work: Workload, config: StepCostConfig, methods: Sequence[str]) -> dict[str, list[list[float]]]:
    """Seconds per timed step, per method, per round (rounds interleave the methods)."""
    times: dict[str, list[list[float]]] = {m: [] for m in methods}
    for round_index in range(config.rounds):
        order = list(methods[round_index % len(methods):]) + list(methods[:round_index % len(methods)])
        for method in order:
            stamps: list[float] = []  # the end of each step; the first step (warm-up) is not timed
            run_method(method, work, work.reset(), config, start=0, stop=1 + config.steps,
                       log_step=lambda record: stamps.append(time.perf_counter()))
            times[method].append([b - a for a, b in zip(stamps, stamps[1:])])
    return times


def peak_memory(work: Workload, config: StepCostConfig, methods: Sequence[str]) -> dict[str, int]:
    """Peak live tensor bytes of one step beyond weights, gradients and optimizer state."""
    from benchmarks.memory import LiveBytes

    peaks = {}
    for method in methods:
        optimizer = work.reset()
        run_method(method, work, optimizer, config, start=0, stop=1)  # gradients and AdamW state exist now
        state = [t for s in optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
        existing = [*work.params, *(p.grad for p in work.params), *state]
        with LiveBytes(adopt=existing) as meter:
            run_method(method, work, optimizer, config, start=1, stop=2)
        peaks[method] = meter.peak_extra
    return peaks
