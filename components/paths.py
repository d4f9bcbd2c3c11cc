"""Where each stage reads and writes, relative to one root folder (the repository by default).

The DVC pipeline uses the defaults; the Prefect flow and the tests point a :class:`Paths`
at another root so runs never collide.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


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

    @property
    def prepared(self) -> Path:
        return self.root / "data" / "prepared"

    @property
    def world(self) -> Path:
        return self.prepared / "world.jsonl"

    @property
    def holdout(self) -> Path:
        return self.prepared / "holdout.jsonl"

    @property
    def forget(self) -> Path:
        return self.prepared / "forget.jsonl"

    @property
    def retain(self) -> Path:
        return self.prepared / "retain.jsonl"

    @property
    def earlier(self) -> Path:
        """Forget sets of earlier processed requests, one JSONL per request id."""
        return self.prepared / "earlier"

    @property
    def tokenizer(self) -> Path:
        """The demo tokenizer, trained in ``prepare`` so every data check runs before training."""
        return self.prepared / "tokenizer"

    @property
    def settings(self) -> Path:
        """Settings derived from the data (``model.max_length: auto``)."""
        return self.prepared / "settings.json"

    @property
    def resolution(self) -> Path:
        return self.prepared / "resolution.json"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def target(self) -> Path:
        return self.models / "target"

    @property
    def oracle(self) -> Path:
        return self.models / "oracle"

    @property
    def unlearned(self) -> Path:
        return self.models / "unlearned"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints" / "unlearn"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def requests(self) -> Path:
        return self.root / "data" / "requests"

    @property
    def inbox(self) -> Path:
        return self.requests / "inbox"

    @property
    def processed(self) -> Path:
        return self.requests / "processed"

    @property
    def rejected(self) -> Path:
        return self.requests / "rejected"

    @property
    def failed(self) -> Path:
        return self.requests / "failed"


def resolve_local(path: str, root: Path) -> str:
    """Resolve a relative path against the pipeline root; hub names pass through unchanged."""
    candidate = Path(root) / path
    return str(candidate.resolve()) if not Path(path).is_absolute() and candidate.exists() else path
