"""The inbox keeps every request in exactly one place, also when a process dies half-way.

Plain folders (no DVC) for the moves and notes; one real DVC repository for tracking.
A crash is a :class:`Crash` raised right before or right after one step of a settle.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from components.artifacts import SettlingJournal
from components.data import inbox as inbox_module
from components.data import versioning
from components.data.inbox import Inbox, InboxError, label
from components.data.requests import RequestError
from components.paths import Paths
from pipeline_repo import dvc_init


class Crash(Exception):
    """The process died here."""


def request_bytes(request_id: str, received_at: str = "2026-11-28T09:00:00Z", subject: str = "Ada") -> bytes:
    return json.dumps({"request_id": request_id, "received_at": received_at, "subjects": [subject]}).encode()


@pytest.fixture
def inbox(tmp_path) -> Inbox:
    return Inbox(Paths(tmp_path))


def put(inbox: Inbox, name: str, content: bytes) -> Path:
    path = inbox.paths.inbox / name
    path.write_bytes(content)
    return path


# --------------------------------------------------------------------------- notes


def test_reason_files_of_two_files_with_one_stem_do_not_collide(inbox):
    for name in ("a.txt", "a.json"):
        inbox.reject(put(inbox, name, b"{"), RequestError([f"problem of {name}"]))
    rejected = inbox.paths.rejected
    assert "problem of a.txt" in (rejected / "a.txt.reason.txt").read_text()
    assert "problem of a.json" in (rejected / "a.json.reason.txt").read_text()
    assert inbox.status(file_names=True)["files"]["rejected"] == ["a.json", "a.txt"]
    assert len(inbox.status()["rejected"]) == 2  # by a hash of the name: these files hold no request id


def test_a_rejected_file_named_like_a_reason_file_is_never_overwritten(inbox):
    inbox.reject(put(inbox, "x.reason.txt", b"a request named like a note"), RequestError(["not .json"]))
    inbox.reject(put(inbox, "x", b"another file"), RequestError(["not .json either"]))
    kept = sorted(p.name for p in inbox.paths.rejected.iterdir())
    contents = [(inbox.paths.rejected / name).read_bytes() for name in kept]
    assert b"a request named like a note" in contents and b"another file" in contents
    assert len([name for name in kept if name.endswith(".reason.txt")]) == 2
    assert inbox.status(file_names=True)["files"]["rejected"] == ["x", "x.reason.txt.file"]


def test_a_second_rejected_file_with_a_taken_name_gets_its_own_name_and_note(inbox):
    inbox.reject(put(inbox, "a.json", b"first"), RequestError(["first"]))
    inbox.reject(put(inbox, "a.json", b"second"), RequestError(["second"]))
    rejected = inbox.paths.rejected
    assert (rejected / "a.json").read_bytes() == b"first" and (rejected / "a.1.json").read_bytes() == b"second"
    assert "second" in (rejected / "a.1.json.reason.txt").read_text()


def test_a_truncated_result_file_is_reported_not_raised_and_blocks_earlier(inbox):
    put(inbox, "r.json", request_bytes("req-1"))
    (pending,), _ = inbox.take()
    inbox.complete(pending, {"forget_ids": ["abc"]})
    result = inbox.paths.processed / "req-1.result.json"
    result.write_text(result.read_text()[:20])
    put(inbox, "again.json", request_bytes("req-1"))

    status = inbox.status()
    valid, invalid = inbox.take()
    assert status["unreadable"] == ["req-1.result.json"] and status["processed"] == ["req-1"]
    assert valid == [] and "duplicate request_id 'req-1'" in str(invalid[0][1])
    with pytest.raises(InboxError, match="unreadable result file.*req-1.result.json"):
        inbox.earlier()


# --------------------------------------------------------------------------- crash-safe settle

STEPS = ["save", "_write_new", "move"]  # journal, note, move: the steps of a settle


def crash(monkeypatch, step: str, after: bool) -> None:
    module = {"move": versioning, "save": SettlingJournal}.get(step, inbox_module)
    original = getattr(module, step)

    def dying(*args, **kwargs):
        if not after:
            raise Crash(step)
        original(*args, **kwargs)
        raise Crash(step)

    monkeypatch.setattr(module, step, dying)


@pytest.mark.parametrize("after", [False, True], ids=["before", "after"])
@pytest.mark.parametrize("step", STEPS)
def test_a_crash_at_any_step_of_complete_leaves_the_request_pending_or_processed(inbox, monkeypatch, step, after):
    put(inbox, "jane-doe.json", request_bytes("req-1"))
    (pending,), _ = inbox.take()
    with monkeypatch.context() as patch:
        crash(patch, step, after)
        with pytest.raises(Crash):
            inbox.complete(pending, {"forget_ids": ["abc"]})

    settled = (inbox.paths.processed / "req-1.result.json").exists()
    assert settled == (step == "move" or (step == "_write_new" and after))  # once the note is there
    status = inbox.status()
    if settled:  # processed everywhere: earlier() has it, nothing pending
        assert inbox.earlier() == {"req-1": ["abc"]}
        assert status["pending"] == [] and status["processed"] == ["req-1"]
    else:  # still pending, and nothing else
        assert inbox.earlier() == {} and status["pending"] == ["req-1"] and status["processed"] == []
    valid, invalid = inbox.take()  # the next batch finishes what the crash interrupted
    assert invalid == [] and not inbox.journal.exists()
    if settled:
        assert valid == [] and (inbox.paths.processed / "req-1.json").exists()
        assert not list(inbox.paths.inbox.iterdir())
    else:
        assert [p.request.request_id for p in valid] == ["req-1"]


def test_the_journal_is_written_through_its_type_and_a_broken_one_is_named(inbox, monkeypatch):
    put(inbox, "jane-doe.json", request_bytes("req-1"))
    (pending,), _ = inbox.take()
    with monkeypatch.context() as patch:
        crash(patch, "_write_new", after=False)  # the journal is written, the note not yet
        with pytest.raises(Crash):
            inbox.complete(pending, {"forget_ids": ["abc"]})
    assert json.loads(inbox.journal.read_text()) == {"source": "inbox/jane-doe.json", "destination":
                                                     "processed/req-1.json", "note": "processed/req-1.result.json"}
    inbox.journal.write_text(json.dumps({"source": "inbox/jane-doe.json", "destination": "/tmp/elsewhere"}))
    with pytest.raises(InboxError, match=r"\.settling\.json does not hold a valid SettlingJournal: destination: "
                                         r"must be a path relative to data/requests; note: Field required"):
        inbox.take()


def test_a_crash_between_the_note_and_the_move_of_a_failure_keeps_it_failed(inbox, monkeypatch):
    put(inbox, "r.json", request_bytes("req-2"))
    (pending,), _ = inbox.take()
    with monkeypatch.context() as patch:
        crash(patch, "move", after=False)
        with pytest.raises(Crash):
            inbox.fail(pending, "gate failed")
    assert inbox.status()["failed"] == ["req-2"] and inbox.status()["pending"] == []
    assert inbox.take() == ([], [])
    assert (inbox.failed / "req-2.json").exists()


def test_a_crash_in_retry_between_its_two_steps_leaves_the_request_failed(inbox, monkeypatch):
    put(inbox, "r.json", request_bytes("req-3"))
    (pending,), _ = inbox.take()
    inbox.fail(pending, "gate failed")
    with monkeypatch.context() as patch:
        crash(patch, "move", after=False)
        with pytest.raises(Crash):
            inbox.retry("req-3")
    assert inbox.status()["failed"] == ["req-3"] and inbox.status()["pending"] == []
    assert inbox.retry("req-3") == inbox.paths.inbox / "req-3.json"
    assert inbox.status()["failed"] == [] and inbox.status()["pending"] == ["req-3"]


# --------------------------------------------------------------------------- intake


def test_a_symbolic_link_in_the_inbox_is_rejected_without_being_followed(inbox, tmp_path):
    secret = tmp_path / "elsewhere.json"
    secret.write_bytes(request_bytes("req-link"))
    (inbox.paths.inbox / "link.json").symlink_to(secret)
    (inbox.paths.inbox / "dangling.json").symlink_to(tmp_path / "missing")
    valid, invalid = inbox.take()
    assert valid == [] and sorted(p.name for p, _ in invalid) == ["dangling.json", "link.json"]
    assert all("symbolic link" in str(error) for _, error in invalid)
    assert label(inbox.paths.inbox / "link.json").startswith("file-")
    for path, error in invalid:
        moved = inbox.reject(path, error)
        assert moved.is_symlink()
    assert secret.read_bytes() == request_bytes("req-link")


def test_take_returns_at_most_the_limit_oldest_first(inbox):
    put(inbox, "a.json", request_bytes("req-new", "2026-11-28T12:00:00Z"))
    put(inbox, "b.json", request_bytes("req-old", "2026-11-28T08:00:00"))  # no zone: UTC
    put(inbox, "c.json", request_bytes("req-mid", "2026-11-28T10:00:00+00:00"))
    valid, invalid = inbox.take(limit=2)
    assert [p.request.request_id for p in valid] == ["req-old", "req-mid"] and invalid == []
    assert [p.request.request_id for p in inbox.take()[0]] == ["req-old", "req-mid", "req-new"]


def test_of_two_files_with_one_id_the_older_is_taken(inbox):
    put(inbox, "a.json", request_bytes("req-1", "2026-11-28T12:00:00Z"))
    put(inbox, "b.json", request_bytes("req-1", "2026-11-28T08:00:00Z"))
    valid, invalid = inbox.take()
    assert [p.path.name for p in valid] == ["b.json"] and [p.name for p, _ in invalid] == ["a.json"]


def test_label_names_a_file_by_its_request_id_or_a_hash_never_by_its_name(inbox):
    assert label(put(inbox, "jane-doe.json", request_bytes("req-7"))) == "req-7"
    assert label(put(inbox, "jane-doe.json", b'{"request_id": "req-8", "subjects": "not a list"}')) == "req-8"
    for content in (b"{not json", json.dumps({"request_id": "jane doe"}).encode(), b'["req-7"]'):
        name = label(put(inbox, "jane-doe.json", content))
        assert name.startswith("file-") and "jane" not in name


def test_request_add_waits_for_the_inbox_lock_and_says_it_is_busy(inbox, tmp_path):
    new = tmp_path / "new.json"
    new.write_bytes(request_bytes("req-9"))
    with inbox.lock():
        with pytest.raises(InboxError, match="the inbox is busy"):
            inbox.add(new, timeout=0.2)
    assert inbox.files() == []
    assert inbox.add(new) == inbox.paths.inbox / "req-9.json"


def test_request_add_never_shows_a_half_copied_file(inbox, tmp_path, monkeypatch):
    new = tmp_path / "new.json"
    new.write_bytes(request_bytes("req-9"))

    def copy_half(source, target):
        target.write(source.read(10))
        assert inbox.files() == [], "nothing is visible while the copy is written"
        raise Crash("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(inbox_module.shutil, "copyfileobj", copy_half)
        with pytest.raises(Crash):
            inbox.add(new)
    assert inbox.files() == [] and list(inbox.paths.inbox.iterdir()) == []
    inbox.add(new)
    assert (inbox.paths.inbox / "req-9.json").read_bytes() == request_bytes("req-9")


def test_cancel_moves_a_pending_request_out_of_the_inbox(inbox):
    put(inbox, "jane-doe.json", request_bytes("req-c"))
    moved = inbox.cancel("req-c")
    assert moved == inbox.cancelled / "jane-doe.json" and inbox.files() == []
    assert inbox.status()["cancelled"] == ["req-c"]  # by id: the file name can name a person
    assert inbox.status(file_names=True)["files"]["cancelled"] == ["jane-doe.json"]
    with pytest.raises(FileNotFoundError, match="no pending request with id 'req-c'"):
        inbox.cancel("req-c")


def test_retry_all_moves_every_failed_request_back(inbox):
    for request_id in ("req-a", "req-b"):
        put(inbox, f"{request_id}.json", request_bytes(request_id))
    for pending in inbox.take()[0]:
        inbox.fail(pending, "gate failed")
    put(inbox, "req-b.json", b"{a newer file with that name")
    moved, refused = inbox.retry_all()
    assert list(moved) == ["req-a"] and list(refused) == ["req-b"]
    assert "already has a file req-b.json" in refused["req-b"]
    assert inbox.status()["failed"] == ["req-b"]


# --------------------------------------------------------------------------- with DVC


@pytest.fixture
def dvc_inbox(tmp_path) -> Inbox:
    dvc_init(tmp_path, no_scm=True)
    return Inbox(Paths(tmp_path))


def test_a_rejected_file_is_dvc_tracked_before_it_moves(dvc_inbox, monkeypatch):
    path = put(dvc_inbox, "bad.json", b"{not json")
    with monkeypatch.context() as patch:
        def no_dvc(root, *args):
            raise versioning.VersioningError(f"dvc {args[0]} failed: the remote is down")
        patch.setattr(versioning, "_dvc", no_dvc)
        with pytest.raises(versioning.VersioningError):
            dvc_inbox.reject(path, RequestError(["invalid JSON"]))
    assert path.exists() and list(dvc_inbox.paths.rejected.iterdir()) == [], "nothing moved untracked"

    moved = dvc_inbox.reject(path, RequestError(["invalid JSON"]))
    assert versioning.tracked_hash(moved) == hashlib.md5(b"{not json").hexdigest()
    assert not Path(f"{path}.dvc").exists() and not path.exists()


def test_an_inbox_in_a_folder_of_a_dvc_repository_is_tracked(tmp_path):
    """A profile folder inside the repository (``pretrained/``) versions its requests in that repository."""
    dvc_init(tmp_path, no_scm=True)
    inbox = Inbox(Paths(tmp_path / "profile"))
    path = put(inbox, "bad.json", b"{not json")
    moved = inbox.reject(path, RequestError(["invalid JSON"]))
    assert versioning.tracked_hash(moved) == hashlib.md5(b"{not json").hexdigest()


# --------------------------------------------------------------------------- the CLI


def blur(*args: str, root: Path):
    from typer.testing import CliRunner

    from flows.cli import app

    return CliRunner().invoke(app, [*args, "--root", str(root)])


def test_blur_request_cancel_withdraws_a_pending_request(inbox):
    put(inbox, "jane-doe.json", request_bytes("req-c"))
    result = blur("request", "cancel", "req-c", root=inbox.paths.root)
    assert result.exit_code == 0, result.output
    assert inbox.files() == [] and (inbox.cancelled / "jane-doe.json").exists()
    again = blur("request", "cancel", "req-c", root=inbox.paths.root)
    assert again.exit_code == 1 and "no pending request with id 'req-c'" in again.output


def test_blur_request_retry_all_moves_every_failed_request_back(inbox):
    for request_id in ("req-a", "req-b"):
        put(inbox, f"{request_id}.json", request_bytes(request_id))
    for pending in inbox.take()[0]:
        inbox.fail(pending, "gate failed")
    result = blur("request", "retry", "--all", root=inbox.paths.root)
    assert result.exit_code == 0, result.output
    assert "req-a is pending again" in result.output and "req-b is pending again" in result.output
    assert inbox.status()["pending"] == ["req-a", "req-b"] and inbox.status()["failed"] == []
    assert blur("request", "retry", root=inbox.paths.root).exit_code == 2


def test_a_crash_inside_dvc_move_is_repaired_by_the_next_take(dvc_inbox, monkeypatch):
    """`dvc move` moves the file, then writes the new pointer, then removes the old one."""
    put(dvc_inbox, "r.json", request_bytes("req-d"))
    (pending,), _ = dvc_inbox.take()
    with monkeypatch.context() as patch:
        def file_moved_only(root, source, destination):
            source.rename(destination)  # the old pointer stays, no new one
            raise Crash("dvc move")
        patch.setattr(versioning, "move", file_moved_only)
        with pytest.raises(Crash):
            dvc_inbox.complete(pending, {"forget_ids": ["abc"]})
    assert dvc_inbox.earlier() == {"req-d": ["abc"]} and dvc_inbox.files() == []
    assert dvc_inbox.take() == ([], [])
    moved = dvc_inbox.paths.processed / "req-d.json"
    assert versioning.tracked_hash(moved) == hashlib.md5(request_bytes("req-d")).hexdigest()
    assert not (dvc_inbox.paths.inbox / "r.json.dvc").exists() and not dvc_inbox.journal.exists()


def test_a_pending_request_prints_as_its_id_only(inbox):
    put(inbox, "jane-doe.json", request_bytes("req-p", subject="Jane Doe"))
    (pending,), _ = inbox.take()
    shown = repr(pending) + str(pending)
    assert "req-p" in shown and "jane" not in shown.lower()



def test_the_smollm2_profile_can_version_its_requests_and_certificates():
    """DVC refuses to add a file whose pointer git ignores: the profile's inbox, processed results and
    certificates must not be ignored (``pretrained/.gitignore`` once ignored all of ``data/``)."""
    repo = Path(__file__).resolve().parents[1]
    pointers = [f"pretrained/data/requests/{folder}/r.json.dvc" for folder in ("inbox", "processed", "failed", "rejected")]
    pointers.append("pretrained/data/certificates/c.json")
    ignored = subprocess.run(["git", "check-ignore", *pointers], cwd=repo, capture_output=True, text=True).stdout
    assert ignored == "", f"git ignores: {ignored}"
    assert subprocess.run(["git", "check-ignore", "-q", "pretrained/runs/batch-1/x"], cwd=repo).returncode == 0


def test_take_takes_a_waiting_erased_request_beyond_the_limit_and_first(inbox):
    """A request already erased (certificate or the champion's tag) whose file still waits is taken
    whatever the limit: its batch is settled before any other moves the alias (issue 21)."""
    put(inbox, "a.json", request_bytes("req-old", "2026-11-28T08:00:00Z"))
    put(inbox, "b.json", request_bytes("req-erased", "2026-11-28T12:00:00Z"))
    valid, _ = inbox.take(limit=1, erased={"req-erased"})
    assert [p.request.request_id for p in valid] == ["req-erased", "req-old"]
    assert [p.request.request_id for p in inbox.take(limit=1)[0]] == ["req-old"]
