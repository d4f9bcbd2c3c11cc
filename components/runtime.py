"""Process-wide settings every entry point applies once: CPU threads and offline hub access."""

from __future__ import annotations

import os

from components.config import Config


def apply_threads(config: Config) -> None:
    """Use ``threads`` CPU threads for torch in this process (``null`` keeps torch's default)."""
    if config.threads is not None:
        import torch

        torch.set_num_threads(config.threads)


def offline_by_default() -> None:
    """Read models from local directories and the local cache unless the user opted in to the hub."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
