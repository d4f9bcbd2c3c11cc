"""A DVC command that meets another DVC command's repository lock (an operator's `dvc push`) is tried
again with back-off for a bounded time (components/data/versioning.py, ``LOCK_WAIT_SECONDS``); any
other DVC failure raises at once. The lock is DVC's own: ``Repo.lock`` (``.dvc/tmp/lock``), held by this
test process as a running DVC command holds it."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from components.data import versioning
from pipeline_repo import dvc_config, dvc_init

RETRIES = "components.data.versioning"


@pytest.fixture
def dvc_root(tmp_path) -> Path:
    dvc_init(tmp_path, no_scm=True)
    (tmp_path / "req-a.json").write_text('{"request_id": "req-a"}')
    versioning.track(tmp_path, [tmp_path / "req-a.json"])
    return tmp_path


@pytest.fixture
def dvc_lock(dvc_root, monkeypatch):
    """DVC's repository lock of ``dvc_root``, as a DVC command takes it (dvc.repo.Repo.lock, zc.lockfile); DVC's
    own wait for a held lock is cut from 3 s to 0.3 s, so each attempt meets it sooner (the retries are the subject)."""
    import dvc.lock
    from dvc.repo import Repo

    monkeypatch.setattr(dvc.lock, "DEFAULT_TIMEOUT", 0.3)
    lock = Repo(str(dvc_root)).lock
    yield lock
    if lock.is_locked:
        lock.unlock()


class ReleaseOnRetry(logging.Handler):
    """Releases the lock when the first retry is announced: the first attempt has then met the lock."""

    def __init__(self, lock):
        super().__init__(logging.INFO)
        self.dvc_lock, self.retries = lock, 0

    def emit(self, record: logging.LogRecord) -> None:
        self.retries += 1
        if self.dvc_lock.is_locked:
            self.dvc_lock.unlock()


def test_the_dvc_lock_message_is_the_one_dvc_raises():
    from dvc.lock import FAILED_TO_LOCK_MESSAGE

    assert FAILED_TO_LOCK_MESSAGE.startswith(versioning.DVC_LOCK_ERROR)


def test_a_move_that_meets_another_dvc_commands_lock_is_retried_and_moves(dvc_root, dvc_lock):
    source, destination = dvc_root / "req-a.json", dvc_root / "processed" / "req-a.json"
    dvc_lock.lock()
    handler = ReleaseOnRetry(dvc_lock)
    logging.getLogger(RETRIES).addHandler(handler)
    logging.getLogger(RETRIES).setLevel(logging.INFO)
    try:
        versioning.move(dvc_root, source, destination)
    finally:
        logging.getLogger(RETRIES).removeHandler(handler)
    assert handler.retries == 1, "the first `dvc move` met the lock and was tried again once"
    assert destination.exists() and not source.exists()
    assert versioning.tracked_hash(destination) == versioning.file_md5(destination)


def test_the_retries_are_bounded_and_the_error_says_the_lock_was_held(dvc_root, dvc_lock, caplog):
    caplog.set_level(logging.INFO, logger=RETRIES)
    dvc_lock.lock()
    with pytest.raises(versioning.VersioningError, match=r"Unable to acquire lock.*still held after 2 s"):
        versioning._dvc(dvc_root, "move", "req-a.json", "req-b.json", lock_wait=2)
    assert [r for r in caplog.records if "trying again" in r.getMessage()], "it was tried again before failing"
    assert (dvc_root / "req-a.json").exists() and not (dvc_root / "req-b.json").exists()


def test_another_dvc_failure_is_not_retried(dvc_root, caplog, tmp_path_factory):
    blocker = tmp_path_factory.mktemp("remote") / "not-a-folder"
    blocker.write_text("a file where the remote folder should be")
    dvc_config(dvc_root, {}, remote=blocker)  # `dvc remote add -d local BLOCKER`
    caplog.set_level(logging.INFO, logger=RETRIES)
    with pytest.raises(versioning.VersioningError, match="dvc push failed") as raised:
        versioning.push(dvc_root)
    assert "Not a directory" in str(raised.value), "DVC's reason, not its 'Having any troubles?' footer"
    assert "still held" not in str(raised.value)
    assert not [r for r in caplog.records if "trying again" in r.getMessage()]


def test_push_with_no_remote_does_nothing_and_says_so(dvc_root, tmp_path_factory):
    """``push`` is False with no default remote (its docstring's promise; the command line's `dvc remote default`
    fails there instead), and True once one is set."""
    assert versioning.push(dvc_root) is False
    dvc_config(dvc_root, {}, remote=tmp_path_factory.mktemp("remote"))
    assert versioning.push(dvc_root) is True
