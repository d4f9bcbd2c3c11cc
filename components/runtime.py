"""Process-wide settings every entry point applies once: CPU threads and offline hub access."""

from __future__ import annotations

import os
import sys

from components.config import Config


def apply_threads(config: Config) -> None:
    """Use ``threads`` CPU threads for torch in this process (``null`` keeps torch's default).

    Before torch is imported this only sets ``OMP_NUM_THREADS`` and ``MKL_NUM_THREADS``, which torch reads
    when it loads, so a stage that never needs torch (``register``) does not pay for importing it. The two
    variables also reach what else reads them (numpy's BLAS, child processes): ``threads`` is the process's.
    """
    if config.threads is None:
        return
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(config.threads)
    else:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(config.threads)


def offline_by_default() -> None:
    """Read models from local directories and the local cache unless the user opted in to the hub."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
