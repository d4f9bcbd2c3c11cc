"""The request inbox: pending, processed, rejected, failed and cancelled requests as folders of files.

A request file is never deleted: it moves from ``inbox/`` to ``processed/`` (with a result
file), ``rejected/`` (invalid; with a reason file), ``failed/`` (valid, but unlearning
failed or did not pass the gate; with a reason file, retriable) or ``cancelled/``. Two lock
files: the run lock, held by a batch from start to end, lets one run at a time take the inbox,
so each request is processed exactly once; the inbox lock is held only while files move (a
take, a settle, a person's add, cancel or retry), so those commands work while a batch trains.
What a batch took is recorded (:class:`~components.artifacts.RunningBatch`) until it ends, and
cannot be cancelled before.

Settling a request is crash-safe: the file is DVC-tracked first (in a DVC repository), the
move is written to a journal, the note (result or reason) is written atomically, then the
file moves and the journal goes. A request whose note exists counts as settled even while
its file still waits in the inbox (it is hidden there), and the next change of the inbox
finishes the move. So at every moment a request is either pending or settled, never
neither, and :meth:`Inbox.earlier` never loses a processed request.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Collection, Iterator, Mapping

from filelock import FileLock, Timeout

from pydantic import ValidationError

from components.artifacts import ArtifactError, ErasureRecord, RequestIdPeek, RunningBatch, SettlingJournal
from components.data import versioning
from components.data.records import content_hash
from components.data.requests import MAX_REQUEST_BYTES, DeletionRequest, RequestError, is_request_id, read_request
from components.faults import crash_point
from components.paths import REASON_SUFFIX, REQUEST_SUFFIX, RESULT_SUFFIX, RETRIED_SUFFIX, Paths

NOTE_SUFFIXES = (RESULT_SUFFIX, REASON_SUFFIX)
USER_LOCK_SECONDS = 60.0  # how long `blur request add/cancel/retry` wait while files move
MOVE_LOCK_SECONDS = 600.0  # how long a batch waits for a person's command to finish moving files
UNREADABLE_RECORD = "do not delete it: a request it took may be erased by the champion already"
_COUNTER = re.compile(r"\.\d+$")  # the ".1" that _free_name adds to a taken name


class InboxError(RuntimeError):
    """The inbox is busy, or holds something a person must look at (said in the message)."""


class Unversionable(RequestError):
    """An inbox file that cannot be versioned: unreadable, vanished, or over the size limit. It is
    quarantined in rejected/ (or skipped when gone) without `dvc add`, so it never blocks the others
    and a huge file is never hashed, cached and pushed."""


def unversionable_reason(path: Path) -> str | None:
    """Why the inbox file ``path`` cannot be versioned, or None when it can (a link is None: links
    are rejected without being read). Names the error class only, never the path."""
    if path.is_symlink():
        return None
    try:
        size = path.stat().st_size
        if size > MAX_REQUEST_BYTES:
            return (f"file is {size:,} bytes; requests are limited to {MAX_REQUEST_BYTES:,} bytes, so it was "
                    "quarantined without being versioned (name subjects instead of listing many records)")
        with path.open("rb"):
            pass
    except FileNotFoundError:
        return "the file vanished from the inbox while it was being taken"
    except OSError as error:
        return (f"the file cannot be read ({type(error).__name__}); make it readable by the pipeline "
                "and hand it in again")
    return None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _exists(path: Path) -> bool:
    """Also true for a symbolic link, dangling or not."""
    return os.path.lexists(path)


def _write_new(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, never replacing an existing file."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(text, encoding="utf-8")
    try:
        os.link(tmp, path)  # atomic, and fails if ``path`` exists
    finally:
        tmp.unlink()


def _id_note(destination: Path, suffix: str) -> Path:
    """processed/ and failed/ hold ``<request_id>.json``: the note is ``<request_id><suffix>``
    (ids have no dots, so names and notes map one-to-one)."""
    return destination.with_name(destination.name.removesuffix(REQUEST_SUFFIX) + suffix)


def _name_note(destination: Path, suffix: str) -> Path:
    """rejected/ and cancelled/ keep any file name: the note is the full name plus the suffix."""
    return destination.with_name(destination.name + suffix)


def _free_name(folder: Path, name: str, note_of: Callable[[Path, str], Path], suffix: str) -> Path:
    """``folder/name``, or ``name`` with a counter if the name, its DVC pointer or its note is
    taken. A name ending like a note gets ``.file`` added, so no file can pass for a note."""
    if name.endswith((*NOTE_SUFFIXES, ".dvc")):
        name += ".file"
    stem, ext = Path(name).stem, Path(name).suffix
    candidate, counter = folder / name, 1
    while any(_exists(p) for p in (candidate, Path(f"{candidate}.dvc"), note_of(candidate, suffix))):
        candidate = folder / f"{stem}.{counter}{ext}"
        counter += 1
    return candidate


def _id_of_note(name: str, suffix: str) -> str:
    """The request id a note in processed/ or failed/ is named after."""
    return _COUNTER.sub("", name.removesuffix(suffix))


def _seen_before(request: DeletionRequest, path: Path) -> RequestError:
    return RequestError([f"duplicate request_id '{request.request_id}': a request with this id was already "
                         "processed or failed; give the new request its own id"], source=path.name)


@dataclass(frozen=True)
class Pending:
    """A request file in the inbox that parsed and is not a duplicate. Its repr names the
    request id only: file names (``jane-doe.json``) stay out of logs and task parameters."""

    path: Path = field(repr=False)
    request: DeletionRequest

    @property
    def request_id(self) -> str:
        return self.request.request_id


def label(path: Path) -> str:
    """How an inbox file may be named in logs, results and artifacts: its request id when the
    file holds a well-formed one, else a hash of its name. File names (``jane-doe.json``)
    can name a person; request ids are what the pipeline records everywhere."""
    try:
        if not path.is_symlink() and path.stat().st_size <= 1_000_000:
            request_id = RequestIdPeek.of(path.read_bytes())
            if request_id is not None:
                return request_id
    except OSError:
        pass
    return "file-" + content_hash(path.name, length=12)


class Inbox:
    """The folders under ``data/requests/`` and the moves between them."""

    def __init__(self, paths: Paths):
        self.paths = paths
        self.failed = paths.failed
        self.cancelled = paths.cancelled
        self.journal = paths.settling
        for folder in (paths.inbox, paths.processed, paths.rejected, paths.failed, self.cancelled):
            folder.mkdir(parents=True, exist_ok=True)
        self._moving = self.lock()  # one instance: nested holds (a cancel's settle) are re-entrant

    def lock(self, timeout: float = -1) -> FileLock:
        """The inbox lock: held only while files move in or out of the inbox."""
        return FileLock(str(self.paths.inbox_lock), timeout=timeout)

    def run_lock(self, timeout: float = -1) -> FileLock:
        """The run lock: held by a batch from start to end, so one run at a time takes this inbox."""
        return FileLock(str(self.paths.run_lock), timeout=timeout)

    @contextmanager
    def _locked(self, timeout: float) -> Iterator[None]:
        """The inbox lock, re-entrant within this object: a clear error instead of waiting for ever."""
        try:
            self._moving.acquire(timeout=timeout)
        except Timeout:
            raise InboxError(f"the inbox is busy (files are being moved; waited {timeout:g} s): "
                             "try again in a moment") from None
        try:
            yield
        finally:
            self._moving.release()

    # ------------------------------------------------------------------ the batch under way

    def running(self) -> RunningBatch | None:
        """What the batch under way took (or a run that stopped mid-batch left), or None."""
        try:
            return RunningBatch.load(self.paths.running_batch)
        except FileNotFoundError:
            return None
        except ArtifactError as error:  # it cannot say what its run took: refuse every cancel (fail closed)
            raise InboxError(f"{error}: it records what a batch took and cannot be read, so no request can be "
                             f"cancelled until `blur process` takes the inbox again under a new record ({UNREADABLE_RECORD})"
                             ) from None

    def stopped_batch(self) -> RunningBatch | None:
        """The record of a batch whose run stopped before deciding it (crashed, killed, or raised): the
        record is there and no run holds the run lock. None when there is none, or while a run is under
        way. :class:`InboxError` when the record cannot be read. The next run takes the inbox again under
        its own record: each request the stopped batch took is taken again, or (beyond
        ``flow.max_batch_requests``) read from the registry as not erased, so nothing it may have erased
        becomes cancellable."""
        if self._is_running():
            return None
        return self.running()

    def name_batch(self, batch_id: str) -> None:
        """Record the id of the batch under way (chosen after the take), for `cancel`'s refusal."""
        taken = self.running()
        if taken is not None:
            taken.model_copy(update={"batch_id": batch_id}).save(self.paths.running_batch)

    @contextmanager
    def batch_run(self) -> Iterator[None]:
        """Around a run's batch: when it ends, its record goes (its requests were decided or wait again
        for the next run). A run that raises leaves the record, so what it took stays uncancellable until
        the next run decides it (the registry may hold it as erased: only that run reads it)."""
        yield
        self.paths.running_batch.unlink(missing_ok=True)

    def _is_running(self) -> bool:
        """Whether a run holds the run lock now."""
        probe = self.run_lock(timeout=0)
        try:
            probe.acquire()
        except Timeout:
            return True
        probe.release()
        return False

    # ------------------------------------------------------------------ listing

    def files(self) -> list[Path]:
        """Request files waiting in the inbox, oldest name first. DVC files, hidden files and a
        file whose settling was interrupted after its note was written are not waiting."""
        settled = self._interrupted_source()
        return sorted(
            p for p in self.paths.inbox.iterdir()
            if (p.is_symlink() or p.is_file()) and not p.name.startswith(".")
            and not p.name.endswith(".dvc") and p != settled
        )

    def _results(self) -> Iterator[tuple[Path, ErasureRecord | None]]:
        for path in sorted(self.paths.processed.glob(f"*{RESULT_SUFFIX}")):
            try:
                record = ErasureRecord.load(path)
            except (ValueError, OSError, ValidationError):
                record = None
            yield path, record if record is not None and "forget_ids" in record.model_fields_set else None

    def processed_results(self) -> list[ErasureRecord]:
        """The readable result files (see :meth:`unreadable` for the others)."""
        return [result for _, result in self._results() if result is not None]

    def unreadable(self) -> list[str]:
        """Result files that cannot be read (truncated, edited): a person must restore them."""
        return [path.name for path, result in self._results() if result is None]

    def earlier(self, recovered: Mapping[str, list[str]] | None = None) -> dict[str, list[str]]:
        """Record ids erased by every processed request, by request id.

        ``recovered``: the record ids of erased requests whose note is missing (see
        :func:`components.erasure.ledger.erased_forget_ids`, which fills it). Fails closed: with
        an unreadable result, or a certified request with neither a note nor a recovered entry,
        the erased records are unknown, and a retain set built without them could train on
        erased data again.
        """
        broken = self.unreadable()
        if broken:
            raise InboxError(f"unreadable result file(s) in {self.paths.processed}: {', '.join(broken)}; "
                             "restore them (git or `dvc checkout`) before processing more requests")
        recovered = dict(recovered or {})
        lost = sorted(set(self.erased_without_note()) - set(recovered))
        if lost:
            raise InboxError(f"request(s) {', '.join(lost)} have a deletion certificate but no result file in "
                             f"{self.paths.processed}; restore the result files (git or `dvc checkout`) "
                             "before processing more requests")
        return recovered | {result.request_id: result.forget_ids for result in self.processed_results()}

    def _noted_ids(self) -> set[str]:
        """Request ids with a result note in processed/ (readable or not)."""
        return ({r.request_id for r in self.processed_results()}
                | {_id_of_note(name, RESULT_SUFFIX) for name in self.unreadable()})

    def certified_ids(self) -> set[str]:
        """Request ids with a deletion certificate (``data/certificates``): erased, note or not."""
        from components.erasure.ledger import certified_requests

        return set(certified_requests(self.paths.root))

    def erased_ids(self, registry: Collection[str] = ()) -> set[str]:
        """Every request erased: a result note, a certificate, or the registry says so (``registry``)."""
        return self._noted_ids() | self.certified_ids() | set(registry)

    def erased_without_note(self, registry: Collection[str] = ()) -> dict[str, Path | None]:
        """Erased requests (certificate, or ``registry``) without a result note: each with the
        file that still holds its bytes (waiting in the inbox, or in processed/, failed/ or
        cancelled/), or None when none does."""
        missing = (self.certified_ids() | set(registry)) - self._noted_ids()
        if not missing:
            return {}
        holders: dict[str, Path] = {}
        for folder in (self.paths.processed, self.failed, self.cancelled):
            for path in Paths.request_files(folder):
                if not path.name.endswith(NOTE_SUFFIXES):
                    holders.setdefault(self._peek_id(path) or "", path)
        for path in self.files():
            holders.setdefault(self._peek_id(path) or "", path)
        return {request_id: holders.get(request_id) for request_id in sorted(missing)}

    def _processed_ids(self) -> set[str]:
        return self._noted_ids() | self.certified_ids()

    def _failed_ids(self) -> set[str]:
        """Failed requests: a reason file or a request file in failed/ (a retry renames the
        reason before it moves the file, so a crash between the two leaves it failed)."""
        reasons = {_id_of_note(p.name, REASON_SUFFIX) for p in self.failed.glob(f"*{REASON_SUFFIX}")}
        return reasons | {_COUNTER.sub("", p.stem) for p in Paths.request_files(self.failed)}

    @staticmethod
    def _with_reason(folder: Path) -> list[str]:
        """File names (without the suffix) of the reason files in ``folder``."""
        return sorted(p.name[: -len(REASON_SUFFIX)] for p in folder.glob(f"*{REASON_SUFFIX}") if p.is_file())

    def known_ids(self) -> set[str]:
        """Request ids already processed or failed (a new request with one is a duplicate)."""
        return self._processed_ids() | self._failed_ids()

    def status(self, *, file_names: bool = False) -> dict[str, Any]:
        """Each request once, in its true state, by request id (a file without a well-formed one by a hash
        of its name: :func:`label`), never by file name, which can name a person. An erased request whose
        file still waits in the inbox (certified, then its run died or `dvc move` failed) is processed, and
        listed in ``settling`` too: the next run moves its file. ``pending`` holds the other waiting files.
        ``file_names``: also ``files``, the names of the pending, rejected and cancelled files (what
        `blur status --show-files` prints for the operator, on this machine only)."""
        erased = self._processed_ids()
        waiting = {p: self._peek_id(p) for p in self.files()}
        pending = [p for p, request_id in waiting.items() if request_id not in erased]
        settled = {"rejected": self._with_reason(self.paths.rejected), "cancelled": self._with_reason(self.cancelled)}
        state: dict[str, Any] = {
            "pending": sorted(label(p) for p in pending),
            "settling": sorted({request_id for request_id in waiting.values() if request_id in erased}),
            "processed": sorted(erased),
            "rejected": sorted(label(self.paths.rejected / name) for name in settled["rejected"]),
            "failed": sorted(self._failed_ids()),
            "cancelled": sorted(label(self.cancelled / name) for name in settled["cancelled"]),
            "unreadable": self.unreadable(),
        }
        if file_names:
            state["files"] = {"pending": sorted(p.name for p in pending), **settled}
        return state

    # ------------------------------------------------------------------ intake

    def check(self, path: Path, known: set[str] | None = None) -> DeletionRequest:
        """Parse a request file and refuse ids seen before (``known``: :meth:`known_ids`, if
        already read); raises :class:`RequestError`."""
        if not Paths.is_request_file(path):
            raise RequestError([f"request files must be .json files, got '{path.name}'"], source=path.name)
        request = read_request(path)
        if request.request_id in (self.known_ids() if known is None else known):
            raise _seen_before(request, path)
        return request

    def add(self, path: Path, request: DeletionRequest | None = None, *,
            timeout: float = USER_LOCK_SECONDS) -> Path:
        """Validate a request file and copy it into the inbox as ``<request_id>.json``.

        ``request``: what :meth:`check` already returned for ``path``, if it was called.
        The original file is left where it was. Under the inbox lock, a duplicate id (also
        among pending requests) is refused, and the copy appears whole or not at all.
        """
        request = request or self.check(path)
        with self._locked(timeout):
            self._finish_interrupted()
            if request.request_id in self.known_ids():  # processed or failed since the check
                raise _seen_before(request, path)
            if request.request_id in {self._peek_id(p) for p in self.files()}:
                raise RequestError([f"duplicate request_id '{request.request_id}': already waiting in the inbox"],
                                   source=path.name)
            destination = self.paths.inbox / Paths.request_name(request.request_id)
            tmp = self.paths.inbox_upload(uuid.uuid4().hex)  # hidden: never taken half-written
            try:
                with path.open("rb") as source, tmp.open("xb") as copy:
                    shutil.copyfileobj(source, copy)
                os.link(tmp, destination)  # atomic; never replaces a waiting file
            except FileExistsError:
                raise RequestError([f"the inbox already has a file {destination.name}: wait until it is "
                                    "processed, or give the new request its own id"], source=path.name) from None
            finally:
                tmp.unlink(missing_ok=True)
        return destination

    @staticmethod
    def _peek_id(path: Path) -> str | None:
        if path.is_symlink():
            return None
        try:
            return read_request(path).request_id
        except RequestError:
            return None

    def _check_waiting(self, path: Path, known: set[str]) -> DeletionRequest:
        if path.is_symlink():  # never read through a link: it could point anywhere
            raise RequestError(["the file is a symbolic link, and links in the inbox are not followed; "
                                "put the request file itself into the inbox (blur request add)"], source=path.name)
        return self.check(path, known)

    def take(self, limit: int | None = None, erased: Collection[str] = (), *,
             claim: bool = False) -> tuple[list[Pending], list[tuple[Path, RequestError]]]:
        """Split the inbox into valid pending requests and invalid ones (with their errors).

        Finishes a settle a crash interrupted first. Never raises for one file: a file that
        cannot be versioned (unreadable, vanished, too big) comes back invalid with an
        :class:`Unversionable` error, for :meth:`quarantine`. The valid requests come oldest first
        (``received_at``, then file name); with ``limit``, at most that many are taken and
        the rest stay pending for the next batch. Of two files with one request id, the
        older is taken and the newer is invalid.

        ``erased``: ids already erased whose files still wait (the flow passes those the registry
        holds as erased without a certificate). They come first and beyond ``limit``: their batch
        must be settled before any other. Left waiting, a request erased only by the champion's tag
        would lose its erasure as soon as another batch moved the alias.

        ``claim``: record what was taken as the running batch's (:meth:`running`), under the same hold of
        the inbox lock, so a cancel either moved a file before the take or is refused after it.
        """
        with self._locked(MOVE_LOCK_SECONDS):
            valid, invalid = self._take(limit, erased)
            if claim:  # replaces a stopped batch's record (or one that cannot be read): this run decides them now
                RunningBatch(taken_at=_now(), request_ids=[p.request_id for p in valid],
                             files=[p.path.name for p in valid] + [path.name for path, _ in invalid],
                             pid=os.getpid(), host=socket.gethostname()).save(self.paths.running_batch)
        return valid, invalid

    def _take(self, limit: int | None,
              erased: Collection[str]) -> tuple[list[Pending], list[tuple[Path, RequestError]]]:
        self._finish_interrupted()
        known = self._noted_ids() | self._failed_ids()  # a certified request still waiting is taken (settled by the flow)
        parsed: list[Pending] = []
        invalid: list[tuple[Path, RequestError]] = []
        for path in self.files():
            reason = unversionable_reason(path)
            if reason is not None:
                invalid.append((path, Unversionable([reason], source=path.name)))
                continue
            try:
                parsed.append(Pending(path, self._check_waiting(path, known)))
            except RequestError as error:
                invalid.append((path, error))
            except OSError as error:  # it changed between the check and the read
                invalid.append((path, Unversionable([unversionable_reason(path) or
                                                     f"the file cannot be read ({type(error).__name__})"],
                                                    source=path.name)))
        valid: list[Pending] = []
        for pending in sorted(parsed, key=_age):
            if any(p.request.request_id == pending.request.request_id for p in valid):
                invalid.append((pending.path, RequestError(
                    [f"duplicate request_id '{pending.request.request_id}': another file in this batch has it"],
                    source=pending.path.name)))
            else:
                valid.append(pending)
        if limit is None:
            return valid, invalid
        erased = set(erased)
        return [p for p in valid if p.request_id in erased] + [p for p in valid if p.request_id not in erased][:limit], \
            invalid

    # ------------------------------------------------------------------ outcomes

    def _settle(self, path: Path, folder: Path, note: tuple[Callable[[Path, str], Path], str, str],
                name: str | None = None, *, track: bool = True) -> Path:
        """Move ``path`` into ``folder`` with its note, crash-safely (see the module docstring).

        ``note``: how the note is named, its suffix and its text; ``track``: `dvc add` it first.
        """
        with self._locked(MOVE_LOCK_SECONDS):
            return self._settle_locked(path, folder, note, name, track=track)

    def _settle_locked(self, path: Path, folder: Path, note: tuple[Callable[[Path, str], Path], str, str],
                       name: str | None, *, track: bool) -> Path:
        note_of, suffix, text = note
        if track and versioning.is_repo(self.paths.root) and not path.is_symlink():
            versioning.track(self.paths.root, [path])  # a tracking failure leaves the request pending
        destination = _free_name(folder, name or path.name, note_of, suffix)
        note_path = note_of(destination, suffix)
        SettlingJournal(source=self._relative(path), destination=self._relative(destination),
                        note=self._relative(note_path)).save(self.journal)
        _write_new(note_path, text)  # from here on the request counts as settled
        crash_point("settle")
        versioning.move(self.paths.root, path, destination)
        self.journal.unlink()
        return destination

    def _relative(self, path: Path) -> str:
        return str(path.relative_to(self.paths.requests))

    def _read_journal(self) -> dict[str, Path] | None:
        try:
            entry = SettlingJournal.load(self.journal)
        except FileNotFoundError:
            return None
        except ArtifactError as error:
            raise InboxError(f"{error}: finish the move it records by hand (the note, then the request file), "
                             "then delete it") from None
        return {key: self.paths.requests / getattr(entry, key) for key in ("source", "destination", "note")}

    def _interrupted_source(self) -> Path | None:
        """The inbox file of an interrupted settle whose note was written (it counts as settled)."""
        entry = self._read_journal()
        return entry["source"] if entry and _exists(entry["note"]) else None

    def _finish_interrupted(self) -> None:
        """Finish a settle a crash interrupted: move the file if its note was written (else
        the request simply stays pending), then drop the journal. Call under the lock."""
        entry = self._read_journal()
        if entry is None:
            return
        source, destination = entry["source"], entry["destination"]
        if _exists(entry["note"]) and _exists(source):
            versioning.move(self.paths.root, source, destination)
        stale = Path(f"{source}.dvc")
        if not _exists(source) and stale.exists() and _exists(destination):  # died inside `dvc move`
            if versioning.tracked_hash(destination) is None:
                versioning.track(self.paths.root, [destination])  # the bytes are in the cache already
            stale.unlink()
        self.journal.unlink()

    def reject(self, path: Path, error: RequestError) -> Path:
        """Move an invalid request to ``rejected/`` with a reason file beside it
        (``<file name>.reason.txt``)."""
        text = (f"rejected at {_now()} (logged as {label(path)})\n"
                + "\n".join(f"- {reason}" for reason in error.reasons) + "\n")
        return self._settle(path, self.paths.rejected, (_name_note, REASON_SUFFIX, text))

    def quarantine(self, path: Path, error: RequestError) -> Path | None:
        """Move a file that cannot be versioned (:class:`Unversionable`) to ``rejected/`` with its
        reason, without `dvc add`; None when the file is gone (nothing to move, nothing written)."""
        if not _exists(path):
            return None
        text = (f"quarantined at {_now()} (logged as {label(path)}), not versioned\n"
                + "\n".join(f"- {reason}" for reason in error.reasons) + "\n")
        try:
            return self._settle(path, self.paths.rejected, (_name_note, REASON_SUFFIX, text), track=False)
        except FileNotFoundError:  # vanished during the move: its note says why
            return None

    def fail(self, pending: Pending, reason: str, *, release: bool = False) -> Path:
        """Move a valid request whose unlearning failed to ``failed/`` (retriable).

        ``release``: the batch decided it without reaching the registry (or its gate failed), so it cannot
        have erased it: the batch record (:meth:`running`) lets it go in the same hold of the inbox lock,
        and once retried it can be cancelled although the run that failed it stopped (it raises, leaving
        its record). Without it the record keeps it, as for a request the run may have erased in the
        registry before it failed (the alias moved): only a run reads the registry."""
        text = f"failed at {_now()}\n{reason}\nRetry with: blur request retry {pending.request.request_id}\n"
        with self._locked(MOVE_LOCK_SECONDS):
            destination = self._settle_locked(pending.path, self.failed, (_id_note, REASON_SUFFIX, text),
                                              Paths.request_name(pending.request.request_id), track=True)
            if release:
                self._release(pending)
        return destination

    def _release(self, pending: Pending) -> None:
        """Drop a request its batch decided from the batch record (an unreadable record stays: fail closed)."""
        try:
            taken = self.running()
        except InboxError:
            return
        if taken is not None and pending.request.request_id in taken.request_ids:
            taken.model_copy(update={
                "request_ids": [r for r in taken.request_ids if r != pending.request.request_id],
                "files": [f for f in taken.files if f != pending.path.name]}).save(self.paths.running_batch)

    def complete(self, pending: Pending, result: ErasureRecord | Mapping[str, Any]) -> Path:
        """Move a request to ``processed/`` with its :class:`ErasureRecord` (ids, counts, hashes; no
        text); its request id and time are this request's and now."""
        fields = result.model_dump(exclude_unset=True) if isinstance(result, ErasureRecord) else dict(result)
        record = ErasureRecord.model_validate({"request_id": pending.request.request_id, "processed_at": _now()}
                                              | {k: v for k, v in fields.items() if k != "request_id"})
        return self._settle(pending.path, self.paths.processed,
                            (_id_note, RESULT_SUFFIX, json.dumps(record.model_dump(mode="json"), indent=2) + "\n"),
                            name=Paths.request_name(pending.request.request_id))

    # ------------------------------------------------------------------ a person's commands

    def cancel(self, request_id: str, *, registry: Collection[str] = (), timeout: float = USER_LOCK_SECONDS) -> Path:
        """Withdraw a pending request: its file (and DVC pointer) move to ``cancelled/``.

        An erased request is refused (:class:`InboxError`), also while its file still waits in
        the inbox: it has a result note or a certificate, or the registry says its erasure was
        made (``registry``: ids from :func:`components.erasure.ledger.registry_erasures`).
        Cancelling it would let its records back into the next retain set.
        """
        with self._locked(timeout):
            self._finish_interrupted()
            if request_id in self.erased_ids(registry):
                raise InboxError(f"request '{request_id}' is already erased (it has a result, a deletion "
                                 "certificate or a registry record): an erasure cannot be cancelled")
            matches = [p for p in self.files() if self._peek_id(p) == request_id] if is_request_id(request_id) else []
            if not matches:
                raise FileNotFoundError(f"no pending request with id '{request_id}' in {self.paths.inbox} "
                                        "(see `blur status`)")
            self._refuse_if_taken(request_id, matches)
            text = f"cancelled at {_now()}\n"
            for path in matches[1:]:
                self._settle(path, self.cancelled, (_name_note, REASON_SUFFIX, text))
            return self._settle(matches[0], self.cancelled, (_name_note, REASON_SUFFIX, text))

    def _refuse_if_taken(self, request_id: str, matches: list[Path]) -> None:
        """A request a batch took cannot be cancelled until that batch is decided: it may be unlearned,
        promoted and certified at any moment (and a run that stopped may have moved the alias already)."""
        taken = self.running()
        if taken is None or (request_id not in taken.request_ids and not {p.name for p in matches} & set(taken.files)):
            return
        batch = f"batch {taken.batch_id}" if taken.batch_id else "the batch taken at " + taken.taken_at
        if self._is_running():
            raise InboxError(f"request '{request_id}' was taken into {batch}, which is being processed now: "
                             "it cannot be cancelled until that batch is decided (see `blur status` after it)")
        raise InboxError(f"request '{request_id}' was taken into {batch}, whose run stopped before deciding it; "
                         "that run may have reached the registry and erased it (its model may serve already), which "
                         "only a run can tell: cancel reads no registry. It cannot be cancelled now. `blur process` "
                         "decides it: it settles it if it was erased, else it takes it again and processes it; if "
                         "that run sends it to failed/, `blur request retry` then `cancel` withdraws it")

    def retry(self, request_id: str, *, timeout: float = USER_LOCK_SECONDS) -> Path:
        """Move a failed request back to the inbox."""
        with self._locked(timeout):
            self._finish_interrupted()
            return self._retry(request_id)

    def retry_all(self, *, timeout: float = USER_LOCK_SECONDS) -> tuple[dict[str, Path], dict[str, str]]:
        """Move every failed request back to the inbox: (moved by id, refused by id with the reason)."""
        moved: dict[str, Path] = {}
        refused: dict[str, str] = {}
        with self._locked(timeout):
            self._finish_interrupted()
            for request_id in sorted(self._failed_ids()):
                try:
                    moved[request_id] = self._retry(request_id)
                except (FileNotFoundError, FileExistsError) as error:
                    refused[request_id] = str(error)
        return moved, refused

    def _retry(self, request_id: str) -> Path:
        if not is_request_id(request_id):  # '../processed/x' must not reach another folder
            raise FileNotFoundError(f"no failed request with id '{request_id}': request ids are letters, "
                                    "digits, '-' or '_'")
        source = self.failed / Paths.request_name(request_id)
        if not source.exists():
            raise FileNotFoundError(f"no failed request with id '{request_id}' in {self.failed}")
        waiting = self.paths.inbox / source.name
        if _exists(waiting) or _exists(Path(f"{waiting}.dvc")):
            raise FileExistsError(f"the inbox already has a file {source.name}: wait until it is processed, "
                                  f"then retry '{request_id}'")
        reason = self.failed / f"{request_id}{REASON_SUFFIX}"
        if reason.exists():  # first: a crash before the move leaves the request failed, not both
            reason.rename(_free_name(self.failed, f"{request_id}{RETRIED_SUFFIX}", _name_note, REASON_SUFFIX))
        return versioning.move(self.paths.root, source, waiting)


def _age(pending: Pending) -> tuple[datetime, str]:
    """Sort key, oldest first; a time without a zone is taken as UTC."""
    when = pending.request.received_at
    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)), pending.path.name
