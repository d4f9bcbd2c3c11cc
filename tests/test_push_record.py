"""A failed ``dvc push`` is recorded, shown and retried, not only logged."""

from __future__ import annotations

import sys

from components.paths import Paths
from pipeline_repo import make_flow_repo, run


def test_failed_push_is_recorded_then_cleared_by_a_later_push(tmp_path):
    from components.data.versioning import pending_push, push_or_record

    repo = make_flow_repo(tmp_path / "repo")
    paths = Paths(repo)
    tracked = repo / "data" / "requests" / "tiny-request.json"
    run([sys.executable, "-m", "dvc", "add", "--quiet", str(tracked.relative_to(repo))], repo)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the remote folder should be")
    run([sys.executable, "-m", "dvc", "remote", "modify", "local", "url", str(blocker)], repo)

    assert push_or_record(paths) is not None
    first = pending_push(paths)
    assert first and first["since"] and first["error"]
    assert push_or_record(paths) is not None and pending_push(paths)["since"] == first["since"]

    run([sys.executable, "-m", "dvc", "remote", "modify", "local", "url", str(tmp_path / "remote")], repo)
    assert push_or_record(paths) is None
    assert pending_push(paths) is None
