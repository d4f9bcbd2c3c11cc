"""Launched by tests/test_distributed_unlearning.py under torchrun: one rank of unlearning runs.

    python -m torch.distributed.run --standalone --nproc_per_node 2 \
        tests/distributed_unlearning_worker.py MODEL_DIR RECORDS_JSON CONFIGS_JSON OUT_DIR

For each named run in CONFIGS_JSON (``{"runs": {NAME: {"config": ..., "checkpoint_dir": ...,
"kill_at_step": ..., "replay_fixed": ...}}}``) unlearns the model in MODEL_DIR with gloo (DDP or FSDP,
as the config says), with the holdout of RECORDS_JSON; rank 0 writes OUT_DIR/NAME.pt (the final
weights) and OUT_DIR/NAME.json (the diagnostics, the stop record and the sizes of the loop's own
all-reduces). With ``kill_at_step`` rank 0 kills itself with SIGKILL when that step has been logged
(before its checkpoint), as a crash would. With ``replay_fixed`` the same run is then repeated with no
stop rule for as many steps as the first one's result took: OUT_DIR/NAME_fixed.pt.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from components.config import UnlearnConfig
from components.data.records import record_from_dict
from components.modeling.io import load_model
from components.unlearning import RunOutputs, run_unlearning
from components.unlearning import distributed
from components.unlearning.distributed import init_distributed


def main(model_dir: str, records_json: str, configs_json: str, out_dir: str) -> None:
    init_distributed()
    torch.set_num_threads(1)
    records = json.loads(Path(records_json).read_text())
    forget = [record_from_dict(r) for r in records["forget"]]
    retain = [record_from_dict(r) for r in records["retain"]]
    holdout = [record_from_dict(r) for r in records.get("holdout", [])]
    spec = json.loads(Path(configs_json).read_text())
    rank = dist.get_rank()
    reduce = distributed.sum_over_ranks
    for name, run in spec["runs"].items():
        all_reduces = []

        def counted(tensor: torch.Tensor) -> torch.Tensor:  # the loop's own collectives (not DDP's or FSDP's)
            all_reduces.append(tensor.numel())
            return reduce(tensor)

        distributed.sum_over_ranks = counted
        loaded = load_model(model_dir)
        kill_at = run.get("kill_at_step")

        def crash(record: dict, kill_at=kill_at) -> None:
            if rank == 0 and record["step"] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

        outputs = RunOutputs(show_progress=False, checkpoint_dir=run.get("checkpoint_dir"),
                             on_step=crash if kill_at else None)
        config = UnlearnConfig.model_validate(run["config"])
        result = run_unlearning(loaded.model, loaded.tokenizer, forget, retain, config, max_length=spec["max_length"],
                                seed=spec["seed"], outputs=outputs, holdout=holdout)
        if rank == 0:
            torch.save(result.model.state_dict(), Path(out_dir) / f"{name}.pt")
            (Path(out_dir) / f"{name}.json").write_text(json.dumps(
                {"diagnostics": result.diagnostics, "resumed_from": result.resumed_from,
                 "all_reduces": all_reduces, "stop": result.stop}))
        if run.get("replay_fixed"):
            fixed = config.model_copy(update={"steps": result.steps, "stop": config.stop.model_copy(
                update={"rule": "none"})})
            loaded = load_model(model_dir)
            replay = run_unlearning(loaded.model, loaded.tokenizer, forget, retain, fixed,
                                    max_length=spec["max_length"], seed=spec["seed"],
                                    outputs=RunOutputs(show_progress=False), holdout=holdout)
            if rank == 0:
                torch.save(replay.model.state_dict(), Path(out_dir) / f"{name}_fixed.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:5])
