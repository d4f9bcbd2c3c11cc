"""One look for the progress bars of long work (fine-tuning, unlearning, evaluation)."""

from __future__ import annotations

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def progress_bar(*, enabled: bool = True, status: bool = False, label: str = "[bold]{task.description}") -> Progress:
    """A rich progress bar: label, bar, done/total, elapsed; ``status`` adds a free-text field
    (tasks then need ``status=...`` in ``add_task``). Disabled bars print nothing."""
    columns = [TextColumn(label), BarColumn(), MofNCompleteColumn()]
    if status:
        columns.append(TextColumn("{task.fields[status]}"))
    columns.append(TimeElapsedColumn())
    return Progress(*columns, disable=not enabled, transient=False)
