"""Two ranks (gloo, launched with torchrun) step exactly like one rank on the whole batch.

Under DDP every rank holds the whole gradient; under FSDP2 each holds a shard, and BLUR's
inner product and norms are summed over the shards of both ranks. Either way the weights
after three steps match a one-rank run with the same effective batch (8 = 2 ranks x 2
micro-batches x 2) to ``ATOL`` = 1e-6 absolute (measured on a tiny model: 7.5e-9 at most for
both strategies and both combiners, i.e. fp32 rounding; the weights are of order 0.01-1); BLUR-P, under
AdamW, to 2 * lr * steps. Under FSDP a run killed with SIGKILL resumes from its (gathered) checkpoint
to the weights of an uninterrupted run, and a run that overshoots the holdout gives back the weights
of its nearest probe (kept as shards, gathered into each checkpoint).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from components.config import UnlearnConfig
from components.modeling.io import load_model, save_model
from components.unlearning import RunOutputs, run_unlearning

WORKER = Path(__file__).with_name("distributed_unlearning_worker.py")
MAX_LENGTH, SEED, ATOL = 64, 0, 1e-6
# SGD: AdamW's first steps are about lr * sign(g) and would turn float rounding in near-zero
# gradient entries into differences of order lr. Each rank: 2 micro-batches of 2 = 4 examples.
SHARED = dict(steps=3, optimizer="sgd", lr=0.1, checkpoint_every=0)
CONFIGS = {
    "blur_npo_nll": dict(SHARED, combiner="blur", forget_loss="npo", retain_loss="nll"),
    "weighted_rmu_kl": dict(SHARED, combiner="weighted_sum", forget_loss="rmu", retain_loss="kl"),
    # BLUR-P (ours) needs AdamW: its first step moves each weight by about lr * sign(g), so an entry whose
    # gradient is rounding noise may move either way: the weights agree to 2 * lr * steps, xi_P to rounding
    "blur_p_npo_nll": dict(SHARED, optimizer="adamw", lr=1e-5, combiner="blur_p", forget_loss="npo",
                           retain_loss="nll"),
}
STRATEGIES = ("ddp", "fsdp")
# Resume under FSDP: AdamW (sharded optimizer state in the checkpoint), a checkpoint every step,
# rank 0 killed after logging step 3 (checkpoints of steps 1 and 2 written).
RESUME = dict(steps=4, optimizer="adamw", lr=1e-3, checkpoint_every=1, batch_size=2, grad_accum=2,
              distributed="fsdp", combiner="blur", forget_loss="npo", retain_loss="nll")

# unlearn.stop.overshoot under FSDP: gradient ascent with a KS bar it cannot meet crosses the holdout and is
# stopped there, the nearest probe's sharded weights restored (and gathered into every step's checkpoint)
OVERSHOOT = dict(steps=40, optimizer="adamw", lr=1e-3, checkpoint_every=1, batch_size=2, grad_accum=2,
                 distributed="fsdp", combiner="blur", forget_loss="ga", retain_loss="nll",
                 stop={"rule": "holdout", "every": 1, "probe": 16, "criterion": "landed", "min_ks_p": 0.999})


pytestmark = pytest.mark.usefixtures("one_thread")  # every test here runs on one torch thread


def torchrun(root: Path, runs: dict, tag: str) -> subprocess.CompletedProcess:
    (root / f"{tag}.json").write_text(json.dumps({"runs": runs, "max_length": MAX_LENGTH, "seed": SEED}))
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
               "--nproc_per_node", "2", str(WORKER), str(root / "model"), str(root / "records.json"),
               str(root / f"{tag}.json"), str(root)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def two_rank_run(tiny_setup, tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    save_model(tiny_setup.target, tiny_setup.tokenizer, root / "model")
    records = {"forget": [r.to_dict() for r in tiny_setup.forget], "retain": [r.to_dict() for r in tiny_setup.retain],
               "holdout": [r.to_dict() for r in tiny_setup.holdout]}
    (root / "records.json").write_text(json.dumps(records))
    runs = {f"{strategy}_{name}": {"config": dict(config, batch_size=2, grad_accum=2, distributed=strategy)}
            for name, config in CONFIGS.items() for strategy in STRATEGIES}
    runs["fsdp_uninterrupted"] = {"config": RESUME, "checkpoint_dir": str(root / "uninterrupted")}
    runs["fsdp_overshoot"] = {"config": OVERSHOOT, "checkpoint_dir": str(root / "overshoot"), "replay_fixed": True}
    done = torchrun(root, runs, "equivalence")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return root


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_two_ranks_give_the_weights_of_one_rank_on_the_concatenated_batch(two_rank_run, name, strategy):
    loaded = load_model(two_rank_run / "model")
    one_rank = run_unlearning(loaded.model, loaded.tokenizer, *_records(two_rank_run),
                              UnlearnConfig(**CONFIGS[name], batch_size=8, grad_accum=1),
                              max_length=MAX_LENGTH, seed=SEED, outputs=RunOutputs(show_progress=False))
    two_ranks = torch.load(two_rank_run / f"{strategy}_{name}.pt")
    expected = one_rank.model.state_dict()
    assert two_ranks.keys() == expected.keys()
    atol = ATOL if CONFIGS[name]["optimizer"] == "sgd" else 2 * CONFIGS[name]["lr"] * SHARED["steps"]
    for key in expected:
        torch.testing.assert_close(two_ranks[key], expected[key], rtol=0.0, atol=atol, msg=key)
    written = json.loads((two_rank_run / f"{strategy}_{name}.json").read_text())
    diagnostics = written["diagnostics"]
    # one all-reduce of the loop's per step: the losses under DDP; under FSDP the losses and
    # BLUR's three scalars (inner product, both squared norms) together, and from the second step
    # on BLUR-P's two scalars in Adam's metric (the first step has no second moments yet)
    extra = [0] + [2] * (SHARED["steps"] - 1) if CONFIGS[name]["combiner"] == "blur_p" else [0] * SHARED["steps"]
    assert written["all_reduces"] == [2 if strategy == "ddp" else 5 + n for n in extra]
    for a, b in zip(diagnostics, one_rank.diagnostics, strict=True):
        assert a["forget_loss"] == pytest.approx(b["forget_loss"], rel=1e-5)
        assert a["retain_loss"] == pytest.approx(b["retain_loss"], rel=1e-5)
        # under KL the retain gradient starts at ~0 (the model is its own reference): <g_r, g_f> and xi are then
        # rounding noise (1e-8), which two reduction orders round differently; the weights above are compared anyway
        if b["retain_norm_sq"] > 1e-10 * b["forget_norm_sq"]:
            assert a["inner"] == pytest.approx(b["inner"], rel=1e-4)
            assert a["xi"] == pytest.approx(b["xi"], rel=1e-4)
        assert a["forget_norm_sq"] == pytest.approx(b["forget_norm_sq"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)


def test_fsdp_run_killed_with_sigkill_resumes_to_the_weights_of_an_uninterrupted_run(two_rank_run):
    checkpoints = two_rank_run / "killed"
    killed = torchrun(two_rank_run, {"fsdp_killed": {"config": RESUME, "checkpoint_dir": str(checkpoints),
                                                     "kill_at_step": 3}}, "killed")
    assert killed.returncode != 0 and not (two_rank_run / "fsdp_killed.pt").exists()
    assert torch.load(checkpoints / "last.pt", weights_only=False)["step"] == 2
    resumed = torchrun(two_rank_run, {"fsdp_resumed": {"config": RESUME, "checkpoint_dir": str(checkpoints)}},
                       "resumed")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert json.loads((two_rank_run / "fsdp_resumed.json").read_text())["resumed_from"] == 2
    uninterrupted = torch.load(two_rank_run / "fsdp_uninterrupted.pt")
    after_resume = torch.load(two_rank_run / "fsdp_resumed.pt")
    for key in uninterrupted:
        torch.testing.assert_close(after_resume[key], uninterrupted[key], rtol=0.0, atol=0.0, msg=key)


def test_fsdp_run_past_the_holdout_gives_back_its_nearest_probes_weights(two_rank_run):
    stop = json.loads((two_rank_run / "fsdp_overshoot.json").read_text())["stop"]
    assert stop["reason"].startswith("overshot") and stop["stopped_at"] < stop["ended_at"]
    restored = torch.load(two_rank_run / "fsdp_overshoot.pt")
    fixed = torch.load(two_rank_run / "fsdp_overshoot_fixed.pt")  # the same run, stopped at that step
    for key in fixed:
        torch.testing.assert_close(restored[key], fixed[key], rtol=0.0, atol=0.0, msg=key)
    checkpoint = torch.load(two_rank_run / "overshoot" / "last.pt", weights_only=False)
    kept = checkpoint["stopper"]["nearest_weights"]  # whole tensors, gathered from both ranks' shards
    assert checkpoint["stopper"]["nearest"]["step"] == stop["stopped_at"]
    assert {name: tuple(t.shape) for name, t in kept.items()} == {
        name: tuple(t.shape) for name, t in fixed.items() if name in kept}


def _records(root: Path):
    from components.data.records import record_from_dict

    records = json.loads((root / "records.json").read_text())
    return [record_from_dict(r) for r in records["forget"]], [record_from_dict(r) for r in records["retain"]]


def test_fsdp_with_lora_is_refused_naming_both_keys():
    from components.config import LoRAConfig

    with pytest.raises(ValueError, match="unlearn.distributed 'fsdp' cannot be combined with unlearn.lora.enabled"):
        UnlearnConfig(distributed="fsdp", lora=LoRAConfig(enabled=True))
