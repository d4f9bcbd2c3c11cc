"""MLflow tracking: where the store is, connecting to it, and logging one pipeline run.

The embedded default is a SQLite file ``<root>/mlflow.db`` with artifacts in
``<root>/mlartifacts``; ``MLFLOW_TRACKING_URI`` (and ``MLFLOW_REGISTRY_URI``) point the
pipeline at any other store instead. Everything goes through an explicit
:class:`mlflow.MlflowClient`. Some MLflow paths read the process-wide tracking URI instead
of the client's: ``mlflow.pyfunc.log_model`` gets it set for the call only (and restored);
model versions are created from a storage location and downloads use one, never a
``models:/`` URI, which the SQL registry and the artifact resolver look up globally.

What is logged never includes forget-set text: config values (flattened), counts, hashes
and ids from :func:`components.erasure.safe.safe_request_summary`, numbers.

MLflow is imported lazily, so importing this module (and the gate) stays cheap.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence
from urllib.parse import urlsplit, urlunsplit

from components.paths import ModelFiles, Paths

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from components.artifacts import Metrics
    from components.config import Config

MODEL_NAME_IN_RUN = "model"
MODEL_DIR_ARTIFACT = "model_dir"
SERVING_CODE = Path(__file__).with_name("serving.py")
SERVING_PACKAGES = ("mlflow", "torch", "transformers", "tokenizers", "safetensors", "accelerate")


class RegistryError(RuntimeError):
    """The register step could not complete; the message says what was (and was not) done."""


class TrackingUnavailableError(RegistryError):
    """The MLflow tracking store could not be reached."""


# --------------------------------------------------------------------------- the store


@dataclass(frozen=True)
class TrackingStore:
    """Where runs, models and the registry live."""

    tracking_uri: str
    registry_uri: str
    artifact_location: str | None = None  # for experiments this pipeline creates; None: the store decides

    @classmethod
    def sqlite(cls, db_path: str | Path, artifact_dir: str | Path | None = None) -> "TrackingStore":
        """A SQLite file store with artifacts in ``artifact_dir`` (default: ``mlartifacts`` beside it)."""
        db_path = Path(db_path).resolve()
        artifacts = Path(artifact_dir).resolve() if artifact_dir else Paths(db_path.parent).mlflow_artifacts
        uri = f"sqlite:///{db_path}"
        return cls(uri, uri, artifacts.as_uri())

    def exists(self) -> bool:
        """False only for a local SQLite file not created yet: reading it would create an empty store."""
        prefix = "sqlite:///"
        return not self.tracking_uri.startswith(prefix) or Path(self.tracking_uri.removeprefix(prefix)).exists()

    @property
    def display_uri(self) -> str:
        """The tracking URI with any password masked, for messages."""
        return _mask(self.tracking_uri)

    def client(self) -> "MlflowClient":
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.registry_uri)


def _mask(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return uri


def tracking_store(root: str | Path = ".") -> TrackingStore:
    """``MLFLOW_TRACKING_URI`` when set, else ``sqlite:///<root>/mlflow.db`` + ``<root>/mlartifacts``."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return TrackingStore(uri, os.environ.get("MLFLOW_REGISTRY_URI") or uri, None)
    paths = Paths(Path(root).resolve())
    return TrackingStore.sqlite(paths.mlflow_db, paths.mlflow_artifacts)


def connect(store: TrackingStore) -> "MlflowClient":
    """A client for ``store``, after checking that the store answers (once: the flow's task
    retries the whole step).

    Raises :class:`TrackingUnavailableError` (naming the store and the cause) when it does
    not; nothing has been written then.
    """
    try:
        client = store.client()
        client.search_experiments(max_results=1)
    except Exception as error:
        raise TrackingUnavailableError(
            f"MLflow tracking store {store.display_uri} is unreachable: "
            f"{type(error).__name__}: {first_line(error)}. Nothing was logged or "
            "registered and no alias moved. Check MLFLOW_TRACKING_URI (start the tracking server, "
            "or fix the path of the SQLite file) and run the step again."
        ) from error
    return client


def is_unavailable(error: BaseException) -> bool:
    """Whether ``error`` (or what caused it) says the store could not be reached."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, (ConnectionError, TimeoutError)):
            return True
        kind = f"{type(error).__module__}.{type(error).__name__}"
        if kind.startswith(("requests.exceptions.", "urllib3.exceptions.")) or kind in (
                "sqlalchemy.exc.OperationalError", "sqlite3.OperationalError"):
            return True
        if type(error).__name__ == "MlflowException" and str(error).startswith("API request to"):
            return True
        error = error.__cause__ or error.__context__
    return False


def first_line(error: BaseException, limit: int = 300) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else "")[:limit]


def experiment_id(client: "MlflowClient", store: TrackingStore, name: str) -> str:
    """The id of experiment ``name``, created (with the store's artifact location) if missing."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            raise RegistryError(f"MLflow experiment '{name}' is deleted; restore it or set registry.experiment")
        return found.experiment_id
    try:
        return client.create_experiment(name, artifact_location=store.artifact_location)
    except MlflowException:  # created concurrently
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


# --------------------------------------------------------------------------- what is logged

_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-. /]")


def _key(name: str) -> str:
    return _KEY_CHARS.sub("_", str(name))[:250]


def _param_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple, dict)) or value is None or isinstance(value, bool):
        return json.dumps(value)
    return str(value)


def _flatten(tree: Mapping[str, Any], leaf: Callable[[Any], Any]) -> dict[str, Any]:
    """Leaves of nested mappings keyed by their dotted path, as ``leaf`` maps them (None: left out)."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                walk(f"{prefix}.{key}" if prefix else str(key), value)
            return
        value = leaf(node)
        if value is not None:
            flat[_key(prefix)] = value

    walk("", tree)
    return flat


PRIVATE_CONFIG_KEYS = ("request",)  # the request file's path: its name can be a person's (jane-doe.json)


def flatten_config(config: "Config | Mapping[str, Any]") -> dict[str, str]:
    """``{"unlearn.lr": "0.001", ...}``: every config value as an MLflow param, except the request
    file's path (:data:`PRIVATE_CONFIG_KEYS`): the run records the request by id and content hash
    (:func:`request_params`, :func:`request_tags`) instead."""
    data = config.model_dump(mode="json") if hasattr(config, "model_dump") else dict(config)
    data = {key: value for key, value in data.items() if key not in PRIVATE_CONFIG_KEYS}
    return _flatten(data, lambda value: _param_value(value)[:6000])


def _number(value: Any) -> float | None:
    """A diagnostic value as a float: numbers and bools (a step's flags), else None."""
    if isinstance(value, (bool, int, float)):
        return float(value)
    return None


def evaluation_metrics(metrics: "Metrics | Mapping[str, Any]") -> dict[str, float]:
    """The metrics' numbers keyed by path (``unlearned.forget_prob``, ``unlearned.earlier.<request>.forget_prob``):
    what MLflow logs; nulls are left out (:meth:`~components.artifacts.Metrics.numbers`)."""
    from components.artifacts import Metrics

    return Metrics.parse(metrics).numbers()


def diagnostic_series(diagnostics: Sequence[Mapping[str, Any]]) -> list[tuple[str, float, int]]:
    """(key, value, step) for every numeric field of every step record (``unlearn.xi`` ...)."""
    series = []
    for index, row in enumerate(diagnostics):
        step = row.get("step", index)
        step = int(step) if isinstance(step, (int, float)) and not isinstance(step, bool) else index
        for key, value in row.items():
            if key == "step":
                continue
            number = _number(value)
            if number is not None:
                series.append((_key(f"unlearn.{key}"), number, step))
    return series


def request_params(safe: Mapping[str, Any]) -> dict[str, str]:
    """Counts and digests of the forget set (no text) as params."""
    params = {"request.n_requests": str(len(safe.get("requests") or [])),
              "request.ids": ",".join(r["request_id"] for r in safe.get("requests") or [])[:6000]}
    params.update({f"request.{k}": str(v) for k, v in (safe.get("counts") or {}).items()})
    params.update({f"request.{k}": str(v) for k, v in (safe.get("digests") or {}).items()})
    return params


def request_tags(safe: Mapping[str, Any]) -> dict[str, str]:
    """Request ids and their hashes as run tags."""
    requests = safe.get("requests") or []
    tags = {"requests": ",".join(r["request_id"] for r in requests)[:8000]}
    for request in requests:
        prefix = f"request.{request['request_id']}"
        for field in ("request_hash", "dvc_md5", "received_at", "n_forget"):
            if request.get(field) is not None:
                tags[f"{prefix}.{field}"] = str(request[field])
    if safe.get("earlier_requests"):
        tags["earlier_requests"] = ",".join(safe["earlier_requests"])[:8000]
    return tags


def log_params_and_tags(client: "MlflowClient", run_id: str, params: Mapping[str, str],
                        tags: Mapping[str, str]) -> None:
    """Batched: MLflow takes at most 100 params/tags per call."""
    from mlflow.entities import Param, RunTag

    from components.chunks import batched

    entities = [Param(k, v) for k, v in params.items()]
    for chunk in batched(entities, 100):
        client.log_batch(run_id, params=chunk, synchronous=True)
    entities = [RunTag(k, str(v)[:8000]) for k, v in tags.items()]
    for chunk in batched(entities, 100):
        client.log_batch(run_id, tags=chunk, synchronous=True)


def log_metric_values(client: "MlflowClient", run_id: str, values: Sequence[tuple[str, float, int]],
                      *, model_id: str | None = None) -> None:
    """(key, value, step) triples in batches of 1000 (MLflow's per-call limit)."""
    from mlflow.entities import Metric

    from components.chunks import batched

    now = int(time.time() * 1000)
    entities = [Metric(key, value, now, step, model_id=model_id) for key, value, step in values]
    for chunk in batched(entities, 1000):
        client.log_batch(run_id, metrics=chunk, synchronous=True)


def log_text(client: "MlflowClient", run_id: str, text: str, artifact_file: str) -> None:
    client.log_text(run_id, text, artifact_file)


# --------------------------------------------------------------------------- the model


def serving_requirements() -> list[str]:
    """Pinned pip requirements of the logged model, from what is installed (no inference)."""
    requirements = []
    for package in SERVING_PACKAGES:
        try:
            version = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
        requirements.append(f"{package}=={version.split('+')[0]}")
    return requirements


_GLOBAL_URI_LOCK = threading.Lock()


@contextmanager
def _process_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's process-wide tracking URI at ``uri`` for the block, then restore it
    (the global and the ``MLFLOW_TRACKING_URI`` variable it also sets)."""
    import mlflow

    with _GLOBAL_URI_LOCK:
        env_before = os.environ.get("MLFLOW_TRACKING_URI")
        global_before = None
        if mlflow.is_tracking_uri_set():
            current = mlflow.get_tracking_uri()
            if current != env_before:
                global_before = current
        mlflow.set_tracking_uri(uri)
        try:
            yield
        finally:
            mlflow.set_tracking_uri(global_before)
            if env_before is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = env_before


def check_model_dir(model_dir: str | Path) -> Path:
    """The saved Hugging Face directory, or a :class:`RegistryError` saying what is missing."""
    model_dir = Path(model_dir)
    if not ModelFiles(model_dir).hf_config.is_file():
        raise RegistryError(
            f"{model_dir} is not a saved Hugging Face model directory (no config.json); "
            "run the unlearn stage first"
        )
    return model_dir


def log_model(client: "MlflowClient", store: TrackingStore, *, run_id: str, experiment_id: str,
              model_dir: str | Path, tags: Mapping[str, str] | None = None,
              params: Mapping[str, str] | None = None, max_new_tokens: int = 32) -> str:
    """Log ``model_dir`` as an MLflow pyfunc LoggedModel of the run; returns its ``model_id``.

    The LoggedModel is created explicitly in the run's experiment and linked to the run
    as an output, so no active run or experiment is needed; the model packages
    :mod:`components.registry.serving` as its code and the directory as artifact
    ``model_dir``, with pinned pip requirements (nothing inferred, nothing downloaded).
    """
    import mlflow
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus

    model_dir = check_model_dir(model_dir)
    model = client.create_logged_model(
        experiment_id=experiment_id, name=MODEL_NAME_IN_RUN, source_run_id=run_id,
        tags={k: str(v) for k, v in (tags or {}).items()},
        params=dict(params or {}), model_type="causal-lm",
    )
    try:
        with _process_tracking_uri(store.tracking_uri):
            # No input example: it would load and run the model at logging time. The
            # signature (list of strings in and out) comes from serving.py's type hints.
            mlflow.pyfunc.log_model(
                name=MODEL_NAME_IN_RUN,
                model_id=model.model_id,
                python_model=str(SERVING_CODE),
                artifacts={MODEL_DIR_ARTIFACT: str(model_dir)},
                pip_requirements=serving_requirements(),
                model_config={"max_new_tokens": max_new_tokens},
            )
        client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
        if client.get_logged_model(model.model_id).status != LoggedModelStatus.READY:
            client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    except Exception:
        try:
            client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
        except Exception:
            pass
        raise
    return model.model_id


def download_model_dir(store: TrackingStore, artifact_uri: str, dst: str | Path) -> Path:
    """Download the pyfunc model stored at ``artifact_uri`` (a model version's download URI)
    into ``dst`` (replaced); returns the Hugging Face directory inside it.

    Takes the storage location, not a ``models:/`` URI: MLflow resolves those through the
    process-wide registry URI, not the store given here."""
    import shutil

    import mlflow
    from mlflow.models import Model

    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dst.name}-", dir=dst.parent))
    try:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=artifact_uri, dst_path=str(staging), tracking_uri=store.tracking_uri,
        )
        artifacts = Model.load(local).flavors.get("python_function", {}).get("artifacts") or {}
        if MODEL_DIR_ARTIFACT not in artifacts:
            raise RegistryError(f"{artifact_uri} has no '{MODEL_DIR_ARTIFACT}' artifact; "
                                "was it logged by this pipeline?")
        if dst.exists():
            shutil.rmtree(dst)
        os.replace(local, dst)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dst / artifacts[MODEL_DIR_ARTIFACT]["path"]
