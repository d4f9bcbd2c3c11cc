"""Load and save Hugging Face causal LMs and tokenizers (local directories or hub names).

One loader for every stage: it honours ``model.dtype`` (auto = the checkpoint's own),
``model.device`` (auto = cuda when available), ``model.prompt`` (plain drops the tokenizer's
chat template, so "a tokenizer with a chat template is prompted with it" holds downstream)
and ``model.gradient_checkpointing``. Saving keeps the weights' dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from components.artifacts import ArtifactError, ModelRef
from components.modeling.encoding import ensure_pad_token
from components.paths import HF_CONFIG, ModelFiles

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PROMPTS = ("chat", "plain")


class ModelLoadError(RuntimeError):
    """A model directory or name could not be loaded; says which and why."""


@dataclass
class LoadedModel:
    """A causal LM with the tokenizer it was trained with."""

    model: torch.nn.Module
    tokenizer: object
    source: str


def model_options(model_config) -> dict[str, Any]:
    """The :func:`load_model` keywords a ``ModelConfig`` (``params.yaml`` ``model:``) sets."""
    return {"dtype": model_config.dtype, "device": model_config.device, "prompt": model_config.prompt,
            "gradient_checkpointing": model_config.gradient_checkpointing}


def resolve_device(device: str = "auto") -> torch.device:
    """``auto``: cuda when available, else cpu; ``cuda`` without a GPU is an error that says so."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"model.device is '{device}' but no CUDA device is available; "
                             "set model.device to auto or cpu")
    return resolved


def _torch_dtype(dtype: str) -> torch.dtype | str:
    if dtype == "auto":
        return "auto"
    if dtype not in DTYPES:
        raise ModelLoadError(f"model.dtype '{dtype}' is not one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load_model(source: str | Path, *, dtype: str = "auto", device: str = "auto", prompt: str = "chat",
               gradient_checkpointing: bool = False) -> LoadedModel:
    """Load a model and tokenizer with ``AutoModelForCausalLM`` / ``AutoTokenizer``, in eval mode.

    ``source`` is a local directory or a hub name; with ``HF_HUB_OFFLINE=1`` only the
    local cache is consulted. ``dtype="auto"`` keeps the checkpoint's dtype (its config's
    ``dtype``, else its weights'); ``prompt="plain"`` removes the tokenizer's chat template.
    """
    source = str(source)
    if prompt not in PROMPTS:
        raise ModelLoadError(f"model.prompt '{prompt}' is not one of {', '.join(PROMPTS)}")
    torch_dtype, target = _torch_dtype(dtype), resolve_device(device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"could not load a causal LM from '{source}': {error}") from error
    ensure_pad_token(tokenizer)
    if prompt == "plain":
        tokenizer.chat_template = None
    if gradient_checkpointing:
        _checkpoint_activations(model)
    model.to(target)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, source=source)


def _checkpoint_activations(model) -> None:
    """Recompute activations in the backward pass (transformers >= 5.x renamed the switch)."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False  # the cache is useless while training and conflicts with recompute


CONFIG_FILE = HF_CONFIG  # what marks a folder as a saved model (resolve.py, fetch.py): written last


def save_model(model: torch.nn.Module, tokenizer, directory: str | Path) -> Path:
    """Write weights (safetensors, in the dtype they are in), config and tokenizer.

    Crash-safe: everything is written into a hidden staging folder beside ``directory`` first,
    then moved in with ``config.json`` last (and an older ``config.json`` removed first), so a
    folder with a ``config.json`` always holds its whole model; a crash mid-save leaves a folder
    that later runs see as no model and rebuild, instead of failing to load it for ever.
    ``use_cache`` is saved on, whatever gradient checkpointing set while training, so the
    saved model generates with its KV cache.
    """
    import shutil
    import tempfile

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.saving-", dir=directory.parent))
    try:
        _save_pretrained(model, tokenizer, staging)
        _move_in_config_last(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


# Options a tokenizer records when it is loaded (HF_HUB_OFFLINE=1 sets local_files_only): how it was read
# here, not what it is. Saved, they would make the same tokenizer's files, and every cache keyed by them,
# differ between an offline and an online run.
LOAD_ONLY_KWARGS = ("is_local", "local_files_only", "gguf_file")


def save_tokenizer(tokenizer, directory: str | Path) -> None:
    """``save_pretrained`` of ``tokenizer`` without the options it was loaded with (:data:`LOAD_ONLY_KWARGS`)."""
    for key in LOAD_ONLY_KWARGS:
        tokenizer.init_kwargs.pop(key, None)
    tokenizer.save_pretrained(directory)


def _save_pretrained(model: torch.nn.Module, tokenizer, directory: Path) -> None:
    """``save_pretrained`` of the model (``use_cache`` on) and the tokenizer into ``directory``."""
    config = getattr(model, "config", None)
    use_cache = getattr(config, "use_cache", None)
    if use_cache is False:
        config.use_cache = True
    try:
        model.save_pretrained(directory)
    finally:
        if use_cache is False:
            config.use_cache = False
    save_tokenizer(tokenizer, directory)


def _move_in_config_last(staging: Path, directory: Path) -> None:
    """Move every file of ``staging`` into ``directory`` (each an atomic replace), ``config.json`` last."""
    import os

    (directory / CONFIG_FILE).unlink(missing_ok=True)  # the folder is no model until the new one is whole
    files = sorted((p for p in staging.rglob("*") if p.is_file()), key=lambda p: p.name == CONFIG_FILE)
    for path in files:
        target = directory / path.relative_to(staging)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)


MODEL_REF_FILE = ModelFiles(Path()).model_ref.name  # what a folder standing for a model elsewhere holds


def copy_model_dir(source: str | Path, destination: str | Path) -> Path:
    """Copy a saved model folder whole or not at all (copied beside, then renamed into place): a crash
    mid-copy leaves no folder that looks like a model."""
    import shutil

    destination = Path(destination)
    partial = destination.with_name(f".{destination.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(source, partial)
    shutil.rmtree(destination, ignore_errors=True)
    partial.rename(destination)
    return destination


def write_model_ref(directory: str | Path, source: str | None) -> Path:
    """Make ``directory`` stand for a model stored elsewhere (or for no model at all).

    Used when ``model.base`` / ``model.oracle`` name an existing model: the pipeline's
    model folders then hold a small reference instead of a multi-gigabyte copy.
    """
    directory = Path(directory)
    ModelRef(source=source).save(ModelFiles(directory).model_ref)
    return directory


def resolve_model_source(directory: str | Path) -> str | None:
    """The real location of the model a pipeline folder stands for (None: no model); a reference
    that does not load is a :class:`ModelLoadError` naming its file."""
    seen: set[str] = set()
    source: str | None = str(directory)
    while source is not None and ModelFiles(Path(source)).model_ref.exists():  # a reference may name another
        if source in seen:
            raise ModelLoadError(f"model references form a loop at '{source}'")
        seen.add(source)
        try:
            source = ModelRef.load(ModelFiles(Path(source)).model_ref).source
        except ArtifactError as error:
            raise ModelLoadError(f"{error}; run the stage that linked this model folder again") from None
    return source


def load_model_dir(directory: str | Path, **options: Any) -> LoadedModel | None:
    """Load the model a pipeline folder holds or refers to; None when it stands for no model.

    ``options`` are :func:`load_model`'s keywords (``**model_options(config.model)``).
    """
    source = resolve_model_source(directory)
    return None if source is None else load_model(source, **options)
