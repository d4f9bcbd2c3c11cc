"""Launched by tests/test_distributed_unlearning.py under torchrun: one rank of an unlearning run.

    python -m torch.distributed.run --standalone --nproc_per_node 2 \
        tests/distributed_unlearning_worker.py MODEL_DIR RECORDS_JSON CONFIGS_JSON OUT_DIR

For each named config, unlearns the model in MODEL_DIR with gloo/DDP; rank 0 writes
OUT_DIR/NAME.pt (the final weights) and OUT_DIR/NAME.json (the diagnostics).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from components.config import UnlearnConfig
from components.data.records import record_from_dict
from components.modeling.io import load_model
from components.unlearning import RunOutputs, run_unlearning


def main(model_dir: str, records_json: str, configs_json: str, out_dir: str) -> None:
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    records = json.loads(Path(records_json).read_text())
    forget = [record_from_dict(r) for r in records["forget"]]
    retain = [record_from_dict(r) for r in records["retain"]]
    spec = json.loads(Path(configs_json).read_text())
    for name, config in spec["configs"].items():
        loaded = load_model(model_dir)
        result = run_unlearning(loaded.model, loaded.tokenizer, forget, retain, UnlearnConfig.model_validate(config),
                                max_length=spec["max_length"], seed=spec["seed"], outputs=RunOutputs(show_progress=False))
        if dist.get_rank() == 0:
            torch.save(result.model.state_dict(), Path(out_dir) / f"{name}.pt")
            (Path(out_dir) / f"{name}.json").write_text(json.dumps(result.diagnostics))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:5])
