"""Named points where the process can be made to die on purpose (SIGKILL, no clean-up), so the
tests reach each crash window of the flow for real. ``BLUR_KILL_AT=<point>`` arms one; unset,
every point does nothing."""

from __future__ import annotations

import os
import signal

POINTS = ("take", "track", "resolve", "unlearn", "evaluate", "register", "alias", "settle", "push")


def crash_point(name: str) -> None:
    """Die here, at once, when ``BLUR_KILL_AT`` names this point."""
    if os.environ.get("BLUR_KILL_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
