"""Two ranks (gloo, DDP, launched with torchrun) step exactly like one rank on the whole batch."""

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
MAX_LENGTH, SEED = 64, 0
# SGD: AdamW's first steps are about lr * sign(g) and would turn float rounding in near-zero
# gradient entries into differences of order lr. Each rank: 2 micro-batches of 2 = 4 examples.
SHARED = dict(steps=3, optimizer="sgd", lr=0.1, checkpoint_every=0)
CONFIGS = {
    "blur_npo_nll": dict(SHARED, combiner="blur", forget_loss="npo", retain_loss="nll"),
    "weighted_rmu_kl": dict(SHARED, combiner="weighted_sum", forget_loss="rmu", retain_loss="kl"),
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Every test here runs on one torch thread."""


@pytest.fixture(scope="module")
def two_rank_run(tiny_setup, tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    save_model(tiny_setup.target, tiny_setup.tokenizer, root / "model")
    records = {"forget": [r.to_dict() for r in tiny_setup.forget], "retain": [r.to_dict() for r in tiny_setup.retain]}
    (root / "records.json").write_text(json.dumps(records))
    per_rank = {name: dict(config, batch_size=2, grad_accum=2) for name, config in CONFIGS.items()}
    (root / "configs.json").write_text(json.dumps({"configs": per_rank, "max_length": MAX_LENGTH, "seed": SEED}))
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
               "--nproc_per_node", "2", str(WORKER), str(root / "model"), str(root / "records.json"),
               str(root / "configs.json"), str(root)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return root


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_two_ranks_give_the_weights_of_one_rank_on_the_concatenated_batch(two_rank_run, name):
    loaded = load_model(two_rank_run / "model")
    one_rank = run_unlearning(loaded.model, loaded.tokenizer, *_records(two_rank_run),
                              UnlearnConfig(**CONFIGS[name], batch_size=8, grad_accum=1),
                              max_length=MAX_LENGTH, seed=SEED, outputs=RunOutputs(show_progress=False))
    two_ranks = torch.load(two_rank_run / f"{name}.pt")
    expected = one_rank.model.state_dict()
    assert two_ranks.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(two_ranks[key], expected[key], rtol=0.0, atol=1e-6, msg=key)
    diagnostics = json.loads((two_rank_run / f"{name}.json").read_text())
    for a, b in zip(diagnostics, one_rank.diagnostics, strict=True):
        assert a["forget_loss"] == pytest.approx(b["forget_loss"], rel=1e-5)
        assert a["retain_loss"] == pytest.approx(b["retain_loss"], rel=1e-5)
        assert a["xi"] == pytest.approx(b["xi"], rel=1e-4)


def _records(root: Path):
    from components.data.records import record_from_dict

    records = json.loads((root / "records.json").read_text())
    return [record_from_dict(r) for r in records["forget"]], [record_from_dict(r) for r in records["retain"]]
