"""Step cost: time per optimizer step and peak memory of BLUR against the weighted sum.

    python -m benchmarks.step_cost --json     # one JSON object on stdout, progress on stderr
    python -m benchmarks.step_cost --quick    # fewer rounds (a rough number in a minute)

Same model, same batches, same loop: the engine's :func:`components.unlearning.train_bilevel`
with ``combiner="blur"`` and ``combiner="weighted_sum"``, and two references written here:

- ``naive_blur``: BLUR as the paper's reference code computes it (two gradient copies,
  per-tensor ``.item()``; :mod:`benchmarks.naive_blur`), checked to give the same weights;
- ``fused_weighted``: the leanest weighted sum, ``backward(gamma*L_f)`` then
  ``backward(alpha*L_r)`` into the same ``.grad``, no extra buffer (and no cos/xi logged).

Timing: ``rounds`` rounds; in each, every method (in a rotated order, to cancel drift) is
reset to the same weights and fresh AdamW and runs ``1 + steps`` steps in one call; a step's
time is from the end of the previous step to its own end, the first (warm-up) step untimed. Per-round ratios are medians of that round's steps; the report gives their median
and spread. Memory: one step per method under :class:`benchmarks.memory.LiveBytes`, the
peak of live tensor bytes beyond weights, gradients and optimizer state; ``extra`` is that
peak minus the fused weighted sum's (the floor: two backward passes and a step).

Forget loss NPO, retain loss NLL, micro-batch 8, on the demo world's records; the models
are the demo size of ``params.yaml`` and a ~20M-parameter Llama of the same family.
Weights are untrained: step cost does not depend on them.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from benchmarks.common import RESULTS, init_process, log, machine, write_json
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


# --------------------------------------------------------------------------- measuring


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


def summarise(times: dict[str, list[list[float]]], peaks: dict[str, int], param_bytes: int,
              n_params: int) -> dict[str, Any]:
    def stats(values: list[float]) -> dict[str, float]:
        q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
        return {"median": statistics.median(values), "p25": q[0], "p75": q[2], "min": min(values),
                "max": max(values), "n": len(values)}

    def ratio(a: str, b: str) -> dict[str, float]:
        per_round = [statistics.median(x) / statistics.median(y) for x, y in zip(times[a], times[b])]
        return stats(per_round)

    step = {m: stats([t for r in rounds for t in r]) for m, rounds in times.items()}
    ratios = {
        "blur_over_weighted_time": ratio("blur", "weighted_sum"),
        "naive_over_blur_time": ratio("naive_blur", "blur"),
        "blur_over_fused_weighted_time": ratio("blur", "fused_weighted"),
        "weighted_over_fused_weighted_time": ratio("weighted_sum", "fused_weighted"),
    }
    floor = peaks["fused_weighted"]
    memory = {
        "peak_extra_bytes": peaks,
        "blur_extra_bytes_over_param_bytes": (peaks["blur"] - floor) / param_bytes,
        "weighted_extra_bytes_over_param_bytes": (peaks["weighted_sum"] - floor) / param_bytes,
        "naive_extra_bytes_over_param_bytes": (peaks["naive_blur"] - floor) / param_bytes,
        "blur_over_weighted_peak_bytes": peaks["blur"] / peaks["weighted_sum"],
    }
    return {
        "n_params": n_params,
        "param_bytes": param_bytes,
        "step_seconds": step,
        "ratios": ratios,
        "memory": memory,
        "blur_over_weighted_time": ratios["blur_over_weighted_time"]["median"],
        "naive_over_blur_time": ratios["naive_over_blur_time"]["median"],
        "blur_extra_bytes_over_param_bytes": memory["blur_extra_bytes_over_param_bytes"],
    }


def measure(size: ModelSize, config: StepCostConfig, methods: Sequence[str] = METHODS) -> dict[str, Any]:
    work = build_workload(size, config)
    n_params = sum(p.numel() for p in work.params)
    log(f"{size.name}: {n_params / 1e6:.2f}M parameters; checking the naive BLUR against the engine ...")
    difference = check_naive_matches_blur(work, config)
    log(f"  max weight difference after 2 SGD steps: {difference:.2e}; timing {config.rounds} rounds x "
        f"{config.steps} steps x {len(methods)} methods ...")
    times = time_steps(work, config, methods)
    peaks = peak_memory(work, config, methods)
    result = summarise(times, peaks, work.param_bytes, n_params)
    result |= {"size": asdict(size), "naive_matches_blur_max_abs_diff": difference}
    log(f"  blur/weighted time {result['blur_over_weighted_time']:.3f}, naive/blur time "
        f"{result['naive_over_blur_time']:.3f}, blur extra bytes / param bytes "
        f"{result['blur_extra_bytes_over_param_bytes']:.3f}")
    return result


def run(config: StepCostConfig) -> dict[str, Any]:
    started = time.perf_counter()
    init_process(config.threads)
    models = {size.name: measure(size, config) for size in config.sizes}
    worst = {
        "blur_over_weighted_time": max(m["blur_over_weighted_time"] for m in models.values()),
        "blur_extra_bytes_over_param_bytes": max(m["blur_extra_bytes_over_param_bytes"] for m in models.values()),
        "naive_over_blur_time": min(m["naive_over_blur_time"] for m in models.values()),
    }
    return {
        "benchmark": "step_cost",
        **worst,
        "top_level_keys_are": "the worst case over the models (max of the blur ratios, min of naive/blur)",
        "targets": {"blur_over_weighted_time_at_most_1.05": worst["blur_over_weighted_time"] <= 1.05,
                    "blur_extra_bytes_over_param_bytes_at_most_1.0": worst["blur_extra_bytes_over_param_bytes"] <= 1.0},
        "models": models,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
        "machine": machine(),
        "memory_method": "peak live tensor bytes of one step beyond weights, gradients and AdamW state, counted "
                         "per operator with a TorchDispatchMode (benchmarks/memory.py); extra = that peak minus "
                         "the fused weighted sum's",
        "gpu": "none lent to this session: CPU figures only",
        "wall_seconds": round(time.perf_counter() - started, 1),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object on stdout")
    parser.add_argument("--quick", action="store_true", help="3 rounds x 2 steps instead of 7 x 3")
    parser.add_argument("--out", type=Path, default=RESULTS / "step_cost.json")
    args = parser.parse_args(argv)
    config = StepCostConfig(out=args.out)
    if args.quick:
        config.rounds, config.steps = 3, 2
    result = run(config)
    write_json(config.out, result)
    log(f"wrote {config.out} in {result['wall_seconds']:.0f} s")
    if args.json:
        sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
