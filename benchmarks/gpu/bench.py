"""Step time, peak memory and host syncs per step: BLUR, weighted sum, naive BLUR (CUDA: SmolLM2-135M if present and a
1B-shaped Llama in bf16; ``--cpu-smoke``, ``--cpu-precision``: on the CPU). How it works: README appendix."""

import platform
import statistics
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Optional

import torch
import typer
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from benchmarks import harness
from benchmarks.harness import REPO, RESULTS, log, write_json
from benchmarks.workload import HostSyncCounter, ModelSize, StepCostConfig, Workload, run_method, step_times
from components.config import UnlearnConfig
from components.modeling.scoring import token_scores
from components.unlearning.losses import FORGET_LOSSES, RETAIN_LOSSES, LossContext
from components.unlearning.modules import LossModel

app = harness.cli(__doc__)  # the command: main, at the end
METHODS = ("blur", "weighted_sum", "naive_blur")
RULE = StepCostConfig()  # gamma 0.1, clipping at 1.0: step_cost's settings
SMOLLM2 = REPO / "models" / "base" / "smollm2-135m-instruct"


@dataclass(frozen=True)
class Shape(ModelSize):
    """A Llama configuration (the 1B one is Llama-3.2-1B's shape)."""

    num_kv_heads: int
    vocab_size: int


LLAMA_1B = Shape("llama-1b-random", 2048, 8192, 16, 32, 8, 128256)
LLAMA_20M = Shape("llama-20m-random", 512, 1408, 6, 8, 8, 4096)
TINY = Shape("llama-tiny-random", 32, 64, 2, 2, 2, 300)


@dataclass
class Plan:
    """What one invocation measures."""

    device: str
    models: list[tuple[str, Shape | Path]]
    precisions: tuple[str, ...] = ("bf16",)  # fp32 | bf16 (weights) | autocast-bf16 (fp32 master weights)
    methods: tuple[str, ...] = METHODS
    batch_size: int = 8
    seq_len: int = 512
    steps: int = 5
    budget_seconds: float = 360.0
    out: Path = RESULTS / "gpu.json"
    notes: list[str] = field(default_factory=list)


def baseline_syncs(work: Workload, device: str) -> int:
    """Host syncs of what every method does anyway: both levels' forward and backward, an AdamW step."""
    optimizer = torch.optim.AdamW(work.params, lr=0.0)
    for _ in range(2):  # the first round is a warm-up: AdamW's state exists from then on
        with HostSyncCounter(device) as counter:
            work.forget_loss(0, 0).backward()
            work.retain_loss(0, 0).backward()
            optimizer.step()
    work.reset()
    return counter.count


def build_model(source: Shape | Path, precision: str, device: str) -> torch.nn.Module:
    """A random Llama of ``source``'s shape, or the model directory, in the precision's weight dtype."""
    dtype = torch.float32 if precision in ("fp32", "autocast-bf16") else torch.bfloat16
    if isinstance(source, Path):
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    else:
        config = LlamaConfig(hidden_size=source.hidden_size, intermediate_size=source.intermediate_size,
                             num_hidden_layers=source.num_layers, num_attention_heads=source.num_heads,
                             num_key_value_heads=source.num_kv_heads, vocab_size=source.vocab_size,
                             max_position_embeddings=4096, tie_word_embeddings=True)
        torch.manual_seed(0)
        with torch.device(device):
            model = LlamaForCausalLM(config).to(dtype)
    return model.to(device).train()


def random_workload(model: torch.nn.Module, plan: Plan, precision: str) -> Workload:
    """NPO and NLL on fixed random-token batches; the weights go on from method to method."""
    generator = torch.Generator().manual_seed(0)

    def batch() -> dict[str, torch.Tensor]:
        ids = torch.randint(model.config.vocab_size, (plan.batch_size, plan.seq_len), generator=generator)
        labels = ids.masked_fill(torch.arange(plan.seq_len) < plan.seq_len // 2, -100)  # the answer: the second half
        return {"input_ids": ids.to(plan.device), "attention_mask": torch.ones_like(ids).to(plan.device),
                "labels": labels.to(plan.device)}

    forget, retain = batch(), batch()
    loss_model, context = LossModel(model), LossContext(UnlearnConfig())
    autocast = (lambda: torch.autocast(torch.device(plan.device).type, dtype=torch.bfloat16)) \
        if precision == "autocast-bf16" else nullcontext
    with torch.no_grad(), autocast():
        forget["ref_logp"] = token_scores(loss_model, forget).sum_logp.float()

    def forget_loss(step: int, micro: int) -> torch.Tensor:
        with autocast():
            return FORGET_LOSSES["npo"](loss_model, forget, context).mean()

    def retain_loss(step: int, micro: int) -> torch.Tensor:
        with autocast():
            return RETAIN_LOSSES["nll"](loss_model, retain, context).mean()

    return Workload(model, [p for p in model.parameters() if p.requires_grad], forget_loss, retain_loss, None, 1e-5)


def measure_method(method: str, work: Workload, plan: Plan) -> tuple[list[float], int | None, int]:
    """Step seconds (``plan.steps`` after a warm-up), their peak memory, and the syncs of one more step."""
    cuda = torch.device(plan.device).type == "cuda"
    optimizer = work.reset()
    times = step_times(method, work, optimizer, RULE, plan.steps, torch.cuda.synchronize if cuda else None,
                       torch.cuda.reset_peak_memory_stats if cuda else None)
    peak = torch.cuda.max_memory_allocated() if cuda else None
    with HostSyncCounter(plan.device) as counter:
        run_method(method, work, optimizer, RULE, start=1 + plan.steps, stop=2 + plan.steps)
    return times, peak, counter.count


def measure_model(name: str, source: Shape | Path, precision: str, plan: Plan) -> dict:
    """Every method of ``plan`` on one model in one precision."""
    work = random_workload(build_model(source, precision, plan.device), plan, precision)
    result = {"model": name, "precision": precision, "n_params": sum(p.numel() for p in work.params),
              "param_bytes": work.param_bytes, "batch_size": plan.batch_size, "seq_len": plan.seq_len, "methods": {}}
    result["model_and_optimizer_host_syncs_per_step"] = baseline = baseline_syncs(work, plan.device)
    # two rounds, the methods in opposite orders (to cancel warm-up and drift)
    rounds = [{m: measure_method(m, work, plan) for m in order} for order in (plan.methods, plan.methods[::-1])]
    for method in plan.methods:
        times, peaks = [t for r in rounds for t in r[method][0]], [r[method][1] for r in rounds]
        syncs = rounds[0][method][2]
        result["methods"][method] = {
            "step_seconds_median": statistics.median(times), "step_seconds": times,
            "peak_memory_bytes": None if None in peaks else max(peaks),
            "host_syncs_per_step": syncs - baseline, "host_syncs_per_step_total": syncs}
        log(f"  {name} {precision} {method}: {statistics.median(times) * 1e3:.1f} ms/step, {syncs - baseline} syncs")
    blur, weighted = result["methods"]["blur"], result["methods"]["weighted_sum"]  # in every plan
    result["blur_over_weighted_time"] = blur["step_seconds_median"] / weighted["step_seconds_median"]
    if blur["peak_memory_bytes"] is not None:
        result["blur_extra_memory_over_param_bytes"] = (
            blur["peak_memory_bytes"] - weighted["peak_memory_bytes"]) / result["param_bytes"]
    return result


def run(plan: Plan) -> dict:
    """Measure every model x precision of ``plan`` within its time budget; the JSON document."""
    started = time.perf_counter()
    runs, notes = [], list(plan.notes)
    for name, source in plan.models:
        for precision in plan.precisions:
            if time.perf_counter() - started > plan.budget_seconds:
                notes.append(f"{name} {precision}: time budget of {plan.budget_seconds:.0f} s spent")
                continue
            log(f"{name} ({precision}) on {plan.device} ...")
            runs.append(measure_model(name, source, precision, plan))
            torch.cuda.empty_cache()  # the model is gone: its cached blocks back to the device (a no-op on the CPU)
    device = torch.cuda.get_device_name(torch.device(plan.device)) if torch.device(plan.device).type == "cuda" \
        else f"cpu ({platform.machine()}, {torch.get_num_threads()} torch threads)"
    return {"benchmark": "gpu_step_cost", "device": device, "runs": runs, "notes": notes,
            "plan": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(plan).items() if k != "models"},
            "models": [name for name, _ in plan.models], "torch": torch.__version__,
            "wall_seconds": round(time.perf_counter() - started, 1)}


def choose_plan(cpu_smoke: bool, cpu_precision: bool) -> Plan:
    """The run asked for: tiny shapes on the CPU, the CPU precision table, or (the default) the CUDA run."""
    if cpu_smoke:
        return Plan(device="cpu", models=[(TINY.name, TINY)], batch_size=2, seq_len=16, steps=1, budget_seconds=60.0,
                    out=RESULTS / "gpu_smoke.json", notes=["--cpu-smoke: tiny shapes on the CPU; numbers mean nothing"])
    if cpu_precision:
        return Plan(device="cpu", models=[(LLAMA_20M.name, LLAMA_20M)], precisions=("fp32", "bf16", "autocast-bf16"),
                    methods=("blur", "weighted_sum"), batch_size=8, seq_len=128, steps=3, budget_seconds=600.0,
                    out=RESULTS / "precision_cpu.json")
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks.gpu: no CUDA device here. Run it on a GPU machine, or pass --cpu-smoke "
                         "(tiny shapes, checks the machinery) or --cpu-precision (CPU figures).")
    found = SMOLLM2.is_dir()
    return Plan(device="cuda", models=([("smollm2-135m", SMOLLM2)] if found else []) + [(LLAMA_1B.name, LLAMA_1B)],
                notes=[] if found else [f"smollm2-135m: {SMOLLM2.relative_to(REPO)} not found (blur model fetch "
                                        "smollm2); skipped"])


@harness.command(app, __name__)
def main(cpu_smoke: bool = typer.Option(False, "--cpu-smoke", help="tiny shapes on the CPU (seconds)"),
         cpu_precision: bool = typer.Option(False, "--cpu-precision", help="fp32 / bf16 / autocast-bf16 on the CPU"),
         out: Optional[Path] = typer.Option(None, help="where to write the JSON result"),
         steps: Optional[int] = typer.Option(None, help="timed steps per method"),
         budget: Optional[float] = typer.Option(None, help="seconds after which no new model is started"),
         threads: int = typer.Option(1, help="torch threads on the CPU")) -> None:
    if cpu_smoke and cpu_precision:
        raise typer.BadParameter("--cpu-smoke and --cpu-precision exclude each other")
    torch.set_num_threads(threads)
    plan = choose_plan(cpu_smoke, cpu_precision)
    chosen = replace(plan, steps=steps or plan.steps, budget_seconds=budget or plan.budget_seconds, out=out or plan.out)
    result = run(chosen)
    write_json(chosen.out, result)
    log(f"wrote {chosen.out} in {result['wall_seconds']:.0f} s")
