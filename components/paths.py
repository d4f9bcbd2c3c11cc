"""Where each stage reads and writes, relative to one root folder (the repository by default).

The DVC pipeline uses the defaults; the Prefect flow and the tests point a :class:`Paths`
at another root so runs never collide.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


def _under(parent: str | None, *parts: str) -> property:
    """A path property: ``parts`` below ``root`` (``parent`` None) or below another property."""
    return property(lambda self: (self.root if parent is None else getattr(self, parent)).joinpath(*parts))


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
    tokenizer = _under("prepared", "tokenizer")        # the demo tokenizer (trained in prepare)
    settings = _under("prepared", "settings.json")     # derived from the data (model.max_length: auto)
    resolution = _under("prepared", "resolution.json")
    # models and reports
    models = _under(None, "models")
    target = _under("models", "target")
    oracle = _under("models", "oracle")
    unlearned = _under("models", "unlearned")
    checkpoints = _under(None, "checkpoints", "unlearn")
    reports = _under(None, "reports")
    resources = _under("reports", "resources.json")    # each stage's time and memory; evaluate's cost
    # the request folders of the production flow
    requests = _under(None, "data", "requests")
    inbox = _under("requests", "inbox")
    processed = _under("requests", "processed")
    rejected = _under("requests", "rejected")
    failed = _under("requests", "failed")

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
