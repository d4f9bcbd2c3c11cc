"""Load and save Hugging Face causal LMs and tokenizers (local directories or hub names)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


class ModelLoadError(RuntimeError):
    """A model directory or name could not be loaded; says which and why."""


@dataclass
class LoadedModel:
    """A causal LM with the tokenizer it was trained with."""

    model: torch.nn.Module
    tokenizer: object
    source: str


def load_model(source: str | Path, *, device: str = "cpu") -> LoadedModel:
    """Load a model and tokenizer with ``AutoModelForCausalLM`` / ``AutoTokenizer``.

    ``source`` is a local directory or a hub name; with ``HF_HUB_OFFLINE=1`` only the
    local cache is consulted.
    """
    source = str(source)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"could not load a causal LM from '{source}': {error}") from error
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, source=source)


def save_model(model: torch.nn.Module, tokenizer, directory: str | Path) -> Path:
    """Write model weights (safetensors), config and tokenizer with ``save_pretrained``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


MODEL_REF_FILE = "model-ref.json"


def write_model_ref(directory: str | Path, source: str | None) -> Path:
    """Make ``directory`` stand for a model stored elsewhere (or for no model at all).

    Used when ``model.base`` / ``model.oracle`` name an existing model: the pipeline's
    model folders then hold a small reference instead of a multi-gigabyte copy.
    """
    import json

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MODEL_REF_FILE).write_text(json.dumps({"source": source}, indent=2) + "\n")
    return directory


def resolve_model_source(directory: str | Path) -> str | None:
    """The real location of the model a pipeline folder stands for (None: no model)."""
    import json

    seen: set[str] = set()
    source: str | None = str(directory)
    while source is not None and (Path(source) / MODEL_REF_FILE).exists():  # a reference may name another
        if source in seen:
            raise ModelLoadError(f"model references form a loop at '{source}'")
        seen.add(source)
        source = json.loads((Path(source) / MODEL_REF_FILE).read_text())["source"]
    return source


def load_model_dir(directory: str | Path, *, device: str = "cpu") -> LoadedModel | None:
    """Load the model a pipeline folder holds or refers to; None when it stands for no model."""
    source = resolve_model_source(directory)
    return None if source is None else load_model(source, device=device)
