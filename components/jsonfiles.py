"""JSON files the stages write (atomically, so a reader (DVC, a crashed run's resume) never sees half a file) and read."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON to ``path`` (through a temporary file and a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_json(path: str | Path) -> Any:
    """The JSON content of ``path`` (UTF-8)."""
    return json.loads(Path(path).read_text(encoding="utf-8"))
