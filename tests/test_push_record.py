"""A failed ``dvc push`` is recorded, shown and retried, not only logged."""

from __future__ import annotations

from components.paths import Paths
from pipeline_repo import dvc_config, make_flow_repo


def test_failed_push_is_recorded_then_cleared_by_a_later_push(tmp_path):
    from components.data.versioning import pending_push, push_or_record, track

    repo = make_flow_repo(tmp_path / "repo")
    paths = Paths(repo)
    tracked = repo / "data" / "requests" / "tiny-request.json"
    track(repo, [tracked])
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the remote folder should be")
    dvc_config(repo, {}, remote=blocker)  # `dvc remote modify local url BLOCKER`

    assert push_or_record(paths) is not None
    first = pending_push(paths)
    assert first and first.since and first.error
    assert push_or_record(paths) is not None and pending_push(paths).since == first.since

    dvc_config(repo, {}, remote=tmp_path / "remote")
    assert push_or_record(paths) is None
    assert pending_push(paths) is None


class Crash(Exception):
    """The process died here."""


def test_a_crash_between_settling_and_pushing_leaves_the_marker_the_next_run_retries(
        tmp_path, prefect_server, migrated_mlflow_db, seed_target, monkeypatch):
    import pytest

    import flows.pipeline
    from components.data.versioning import pending_push
    from flows.pipeline import process_requests
    from pipeline_repo import request_json, tiny_subjects
    from stub_stages import stubbed_stages

    repo = make_flow_repo(tmp_path / "repo", mlflow_db=migrated_mlflow_db)
    seed_target(repo)
    inbox = repo / "data" / "requests" / "inbox"
    inbox.mkdir(parents=True)
    (inbox / "req-p.json").write_text(request_json("req-p", [tiny_subjects()[1]]))

    def die_before_push(name: str) -> None:
        if name == "push":
            raise Crash(name)

    with stubbed_stages():
        with monkeypatch.context() as patch:
            patch.setattr(flows.pipeline, "crash_point", die_before_push)
            with pytest.raises(Crash):
                process_requests(root=str(repo))
        assert (repo / "data" / "requests" / "processed" / "req-p.result.json").exists()
        assert pending_push(Paths(repo)), "settled but not pushed: the marker says so"
        process_requests(root=str(repo))  # an empty inbox: the next run pushes first
    assert pending_push(Paths(repo)) is None


def test_an_unreadable_push_record_still_says_a_push_is_pending(tmp_path):
    """A record that does not load (ArtifactError) is a pending push with nothing known: it is shown and
    retried, and the next failure writes a good record."""
    import json

    import pytest

    from components.artifacts import ArtifactError, PushPending
    from components.data.versioning import mark_push_pending, pending_push

    paths = Paths(tmp_path)
    paths.push_pending.parent.mkdir(parents=True)
    paths.push_pending.write_text(json.dumps({"since": 5, "error": "x"}))
    with pytest.raises(ArtifactError, match=r"push-pending\.json does not hold a valid PushPending: since"):
        PushPending.load(paths.push_pending)
    found = pending_push(paths)
    assert found and found.since is None and found.error is None
    mark_push_pending(paths, "batch b settled")
    written = json.loads(paths.push_pending.read_text())
    assert written["since"] and written["error"] == "batch b settled" and list(written) == ["since", "error"]
    mark_push_pending(paths, "again")
    assert pending_push(paths).since == written["since"]


def _in_remote(remote, md5: str) -> bool:
    """Whether DVC 3's local remote holds the file of this md5 (``files/md5/xx/rest``)."""
    return (remote / "files" / "md5" / md5[:2] / md5[2:]).is_file()


def test_a_failed_push_fails_the_run_once_settled_and_a_later_push_takes_the_proofs_to_the_remote(
        tmp_path, prefect_server, migrated_mlflow_db, seed_target, monkeypatch):
    """A run whose `dvc push` fails ends Failed, not Completed, after its batch is settled (certificate,
    result note, file in processed/); `blur process` says so and exits 1, also when only a previous
    run's push is retried. Once the remote works, the next run pushes the request file and what proves
    its erasure: the result note, the certificate, its rendering and the chain head."""
    from typer.testing import CliRunner

    from components.data.versioning import file_md5, pending_push, tracked_hash
    from flows.cli import app
    from flows.pipeline import PushFailedError, process_requests
    from pipeline_repo import request_json, tiny_subjects
    from stub_stages import stubbed_stages

    repo = make_flow_repo(tmp_path / "repo", mlflow_db=migrated_mlflow_db)
    seed_target(repo)
    paths = Paths(repo)
    paths.inbox.mkdir(parents=True)
    (paths.inbox / "jane-doe.json").write_text(request_json("req-p", [tiny_subjects()[1]]))
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the remote folder should be")
    dvc_config(repo, {}, remote=blocker)  # `dvc remote modify local url BLOCKER`
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))  # `blur` sets it when unset

    with stubbed_stages():
        state = process_requests(root=str(repo), return_state=True)
        assert state.is_failed(), f"a failed push ended the run {state.type}"
        error = state.result(raise_on_failure=False)
        assert isinstance(error, PushFailedError) and error.summary["processed"] == ["req-p"]
        assert "remote lags" in str(error) and "jane-doe" not in str(error)
        assert (paths.processed / "req-p.result.json").exists() and paths.certificate("req-p").exists()
        assert pending_push(paths)

        again = CliRunner().invoke(app, ["process", "--root", str(repo)])  # empty inbox, the push retried
        assert again.exit_code == 1 and "remote lags" in " ".join(again.output.split()), again.output

        dvc_config(repo, {}, remote=tmp_path / "remote")
        assert process_requests(root=str(repo), return_state=True).is_completed()
    assert pending_push(paths) is None
    proofs = paths.erasure_proofs()
    assert {p.name for p in proofs} == {"req-p.result.json", "req-p.json", "req-p.md", "chain.head.json"}
    request_file = [p for p in paths.processed.iterdir() if p.suffix == ".json" and p not in proofs]
    for path in proofs + request_file:
        assert tracked_hash(path) == file_md5(path), f"{path.name}: DVC has not recorded its bytes"
        assert _in_remote(tmp_path / "remote", file_md5(path)), f"{path.name} did not reach the remote"
