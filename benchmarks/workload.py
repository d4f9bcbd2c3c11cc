"""The cost family's one workload (``step_cost``, ``scaling``, ``gpu.bench``): a model with the two levels' losses on
fixed batches, each method's optimizer steps and the meters (step times, live bytes, host syncs; README appendix)."""

import copy
import time
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from components.config import Config, TinyModelConfig
from components.data.demo_world import generate_world
from components.modeling.demo import train_demo_tokenizer
from components.modeling.encoding import encode_record
from components.modeling.tiny_model import build_tiny_model
from components.unlearning import FORGET_LOSSES, RETAIN_LOSSES, LossContext, train_bilevel
from components.unlearning.batches import BatchStream
from components.unlearning.loop import StepHooks, StepRule
from components.unlearning.modules import LossModel, sequence_logps

METHODS = ("blur", "weighted_sum", "naive_blur", "fused_weighted")
Log = Callable[[dict], None]


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


@dataclass
class Workload:
    """A model, its trainable parameters and the two levels' loss callables (fixed batches)."""

    model: torch.nn.Module
    params: list[torch.Tensor]
    forget_loss: Callable[[int, int], torch.Tensor]
    retain_loss: Callable[[int, int], torch.Tensor]
    initial: dict[str, torch.Tensor] | None  # None: the weights go on from where the last method left them
    lr: float

    @property
    def param_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.params)

    def reset(self, optimizer: str = "adamw") -> torch.optim.Optimizer:
        """The initial weights again, no gradients, and a fresh optimizer."""
        if self.initial is not None:
            self.model.load_state_dict(self.initial)
        for p in self.params:
            p.grad = None
        return (torch.optim.SGD if optimizer == "sgd" else torch.optim.AdamW)(self.params, lr=self.lr)


def build_workload(size: ModelSize, config: StepCostConfig, records=None, tokenizer=None) -> Workload:
    """A tiny Llama of ``size`` on the demo world's records, with the engine's own pieces."""
    base = Config()
    if records is None:
        world, _ = generate_world(config.seed, base.world.n_subjects, 0, base.world.facts_per_subject)
        records = (world[:40], world[40:])
    forget, retain = records
    tokenizer = tokenizer if tokenizer is not None else train_demo_tokenizer(base, forget + retain)
    sizes = TinyModelConfig(hidden_size=size.hidden_size, intermediate_size=size.intermediate_size,
                            num_layers=size.num_layers, num_heads=size.num_heads)
    model = build_tiny_model(sizes, tokenizer, config.max_length, config.seed).train()
    unlearn = base.unlearn.model_copy(update={"forget_loss": "npo", "retain_loss": "nll"})
    pad = tokenizer.pad_token_id
    forget_examples, retain_examples = ([encode_record(tokenizer, r, config.max_length) for r in rs] for rs in records)
    extra = {"ref_logp": sequence_logps(model, forget_examples, pad)}
    stream = dict(seed=config.seed, micro_batch=config.batch_size, grad_accum=1, rank=0, world_size=1,
                  pad_token_id=pad, device=torch.device("cpu"))
    context, loss_model = LossContext(unlearn), LossModel(model)

    def level(loss, batches: BatchStream) -> Callable[[int, int], torch.Tensor]:  # a level's loss at (step, micro)
        return lambda step, micro: loss(loss_model, batches(step, micro), context).sum() / config.batch_size

    return Workload(model, [p for p in model.parameters() if p.requires_grad],
                    level(FORGET_LOSSES["npo"], BatchStream(forget_examples, stream=0, extra=extra, **stream)),
                    level(RETAIN_LOSSES["nll"], BatchStream(retain_examples, stream=1, **stream)),
                    copy.deepcopy(model.state_dict()), config.lr)


def run_method(method: str, work: Workload, optimizer: torch.optim.Optimizer, config: StepCostConfig, *,
               start: int, stop: int, log_step: Log | None = None) -> None:
    """Optimizer steps ``start + 1 .. stop`` of ``method`` on ``work``, clipped, one micro-batch."""
    if method in ("blur", "weighted_sum"):
        rule = StepRule(combiner=method, gamma=config.gamma if method == "blur" else 1.0, alpha=config.alpha,
                        max_grad_norm=config.max_grad_norm)
        train_bilevel(work.params, work.forget_loss, work.retain_loss, optimizer, steps=stop, start_step=start,
                      rule=rule, hooks=StepHooks(log=log_step))
        return
    if method == "naive_blur":
        return naive_blur_steps(work, optimizer, config, start=start, stop=stop, log_step=log_step)
    if method != "fused_weighted":
        raise ValueError(f"unknown method '{method}'; choose one of {METHODS}")
    for step in range(start, stop):  # the leanest weighted sum: both backward passes accumulate into ``.grad``
        optimizer.zero_grad(set_to_none=False)
        (1.0 * work.forget_loss(step, 0)).backward()
        (config.alpha * work.retain_loss(step, 0)).backward()
        torch.nn.utils.clip_grad_norm_(work.params, config.max_grad_norm)
        optimizer.step()
        if log_step is not None:
            log_step({"step": step + 1})


def naive_blur_steps(work: Workload, optimizer: torch.optim.Optimizer, config: StepCostConfig, *, start: int,
                     stop: int, log_step: Log | None = None) -> None:
    """Steps of the NAIVE BLUR, the baseline (README appendix): two gradient copies, per-tensor syncs."""
    for step in range(start, stop):
        optimizer.zero_grad(set_to_none=True)
        (forget_value := work.forget_loss(step, 0)).backward()
        g_f = [p.grad.detach().clone() for p in work.params]  # copy 1
        optimizer.zero_grad(set_to_none=True)
        (retain_value := work.retain_loss(step, 0)).backward()
        g_r = [p.grad.detach().clone() for p in work.params]  # copy 2
        inner, forget_sq = 0.0, 0.0
        for a, b in zip(g_f, g_r):  # per tensor, each partial sum synchronised with the host
            inner += torch.sum(a * b).item()
            forget_sq += torch.sum(a * a).item()
        xi = config.gamma - inner / forget_sq if forget_sq > 0 else 0.0
        for p, a, b in zip(work.params, g_f, g_r):
            p.grad = b + xi * a
        torch.nn.utils.clip_grad_norm_(work.params, config.max_grad_norm)
        optimizer.step()
        if log_step is not None:
            log_step({"step": step + 1, "forget_loss": forget_value.item(), "retain_loss": retain_value.item(),
                      "xi": xi})


def check_naive_matches_blur(work: Workload, config: StepCostConfig, steps: int = 2) -> float:
    """Max absolute weight difference between the engine's and the naive BLUR after ``steps`` SGD steps."""
    results = []
    for method in ("blur", "naive_blur"):
        run_method(method, work, work.reset("sgd"), config, start=0, stop=steps)
        results.append([p.detach().clone() for p in work.params])
    return max(float((a - b).abs().max()) for a, b in zip(*results))


def step_times(method: str, work: Workload, optimizer: torch.optim.Optimizer, config: StepCostConfig, steps: int,
               sync: Callable[[], Any] | None = None, warmed: Callable[[], Any] | None = None) -> list[float]:
    """Seconds of ``steps`` steps of ``method`` after an untimed warm-up (``sync``, ``warmed``: hooks)."""
    stamps: list[float] = []

    def stamp(record: dict) -> None:
        if sync is not None:
            sync()
        if record["step"] == 1 and warmed is not None:
            warmed()
        stamps.append(time.perf_counter())

    run_method(method, work, optimizer, config, start=0, stop=1 + steps, log_step=stamp)
    return [b - a for a, b in zip(stamps, stamps[1:])]


def time_steps(work: Workload, config: StepCostConfig, methods: Sequence[str]) -> dict[str, list[list[float]]]:
    """Seconds per timed step, per method, per round (rounds interleave the methods, in rotated order)."""
    times: dict[str, list[list[float]]] = {m: [] for m in methods}
    for round_index in range(config.rounds):
        shift = round_index % len(methods)
        for method in [*methods[shift:], *methods[:shift]]:
            times[method].append(step_times(method, work, work.reset(), config, config.steps))
    return times


def peak_memory(work: Workload, config: StepCostConfig, methods: Sequence[str]) -> dict[str, int]:
    """Peak live tensor bytes of one step beyond weights, gradients and optimizer state."""
    peaks = {}
    for method in methods:
        optimizer = work.reset()
        run_method(method, work, optimizer, config, start=0, stop=1)  # gradients and AdamW state exist now
        state = [t for s in optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
        existing = [*work.params, *(p.grad for p in work.params), *state]  # held through the step, as measured
        with LiveBytes(adopt=existing) as meter:
            run_method(method, work, optimizer, config, start=1, stop=2)
        peaks[method] = meter.peak - meter.baseline  # the most bytes live at once beyond the baseline
    return peaks


class LiveBytes(TorchDispatchMode):
    """Live and peak bytes of CPU tensor storage while active (README appendix); ``adopt``: the baseline."""

    def __init__(self, adopt: Iterable[torch.Tensor] = ()):
        super().__init__()
        self.live = self.peak = 0
        self._tracked: set[int] = set()
        for tensor in (t for t in adopt if t is not None):  # a parameter may have no gradient
            self._track(tensor)
        self.baseline = self.peak = self.live

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        pointer, size = storage.data_ptr(), storage.nbytes()
        if size == 0 or pointer in self._tracked:
            return
        self._tracked.add(pointer)
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._release, pointer, size)

    def _release(self, pointer: int, size: int) -> None:
        if pointer in self._tracked:
            self._tracked.discard(pointer)
            self.live -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = {t.untyped_storage().data_ptr() for t in _tensors((args, kwargs))}
        out = func(*args, **kwargs)
        for tensor in _tensors(out):
            if tensor.untyped_storage().data_ptr() not in inputs:  # views and in-place results are not new
                self._track(tensor)
        return out


def _tensors(tree: Any) -> list[torch.Tensor]:
    """The tensors among the leaves of an operator's (nested) arguments or outputs."""
    return [leaf for leaf in tree_leaves(tree) if isinstance(leaf, torch.Tensor)]


class HostSyncCounter(TorchFunctionMode):
    """Counts tensor-to-Python conversions, the host's waits for the device (README appendix)."""

    SYNCS = {"item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy"}

    def __init__(self, device: str = "cpu"):
        super().__init__()
        self.count = 0
        self.cpu_only = torch.device(device).type == "cpu"

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in self.SYNCS:
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            if self.cpu_only or any(t.device.type != "cpu" for t in tensors):
                self.count += 1
        return func(*args, **(kwargs or {}))
