"""The request inbox: pending, processed, rejected and failed requests as folders of files.

A request file is never deleted: it moves from ``inbox/`` to ``processed/`` (with a result
file), ``rejected/`` (invalid; with a reason file) or ``failed/`` (valid, but unlearning
failed or did not pass the gate; with a reason file, retriable). One lock file serialises
every process that changes the inbox, so each request is processed exactly once.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock

from components.data.requests import REQUEST_ID_PATTERN, DeletionRequest, RequestError, read_request
from components.paths import Paths

RESULT_SUFFIX = ".result.json"
REASON_SUFFIX = ".reason.txt"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _free_name(folder: Path, name: str) -> Path:
    """``folder/name``, or ``name`` with a counter if taken: rejected files never overwrite."""
    candidate = folder / name
    stem, suffix = Path(name).stem, Path(name).suffix
    counter = 1
    while candidate.exists() or Path(str(candidate) + ".dvc").exists():
        candidate = folder / f"{stem}.{counter}{suffix}"
        counter += 1
    return candidate


@dataclass(frozen=True)
class Pending:
    """A request file in the inbox that parsed and is not a duplicate."""

    path: Path
    request: DeletionRequest


class Inbox:
    """The folders under ``data/requests/`` and the moves between them."""

    def __init__(self, paths: Paths):
        self.paths = paths
        self.failed = paths.failed
        for folder in (paths.inbox, paths.processed, paths.rejected, paths.failed):
            folder.mkdir(parents=True, exist_ok=True)

    def lock(self, timeout: float = -1) -> FileLock:
        """The inbox lock; hold it while taking and finishing a batch."""
        return FileLock(str(self.paths.requests / ".inbox.lock"), timeout=timeout)

    # ------------------------------------------------------------------ listing

    def files(self) -> list[Path]:
        """Request files waiting in the inbox, oldest name first (DVC files excluded)."""
        return sorted(
            p for p in self.paths.inbox.iterdir()
            if p.is_file() and not p.name.startswith(".") and not p.name.endswith(".dvc")
        )

    def processed_results(self) -> list[dict]:
        return [json.loads(p.read_text()) for p in sorted(self.paths.processed.glob(f"*{RESULT_SUFFIX}"))]

    def earlier(self) -> dict[str, list[str]]:
        """Record ids erased by every processed request, by request id."""
        return {result["request_id"]: result["forget_ids"] for result in self.processed_results()}

    @staticmethod
    def _with_reason(folder: Path) -> list[str]:
        """Names (without the suffix) of the reason files in ``folder``."""
        return sorted(p.name[: -len(REASON_SUFFIX)] for p in folder.glob(f"*{REASON_SUFFIX}") if p.is_file())

    def known_ids(self) -> set[str]:
        """Request ids already processed or failed (a new request with one is a duplicate)."""
        return {result["request_id"] for result in self.processed_results()} | set(self._with_reason(self.failed))

    def status(self) -> dict[str, list[str]]:
        return {
            "pending": [p.name for p in self.files()],
            "processed": [r["request_id"] for r in self.processed_results()],
            "rejected": self._with_reason(self.paths.rejected),
            "failed": self._with_reason(self.failed),
        }

    # ------------------------------------------------------------------ intake

    def check(self, path: Path, known: set[str] | None = None) -> DeletionRequest:
        """Parse a request file and refuse ids seen before (``known``: :meth:`known_ids`, if
        already read); raises :class:`RequestError`."""
        if path.suffix != ".json":
            raise RequestError([f"request files must be .json files, got '{path.name}'"], source=path.name)
        request = read_request(path)
        if request.request_id in (self.known_ids() if known is None else known):
            raise RequestError(
                [f"duplicate request_id '{request.request_id}': a request with this id was already "
                 "processed or failed; give the new request its own id"],
                source=path.name,
            )
        return request

    def add(self, path: Path, request: DeletionRequest | None = None) -> Path:
        """Validate a request file and copy it into the inbox as ``<request_id>.json``.

        ``request``: what :meth:`check` already returned for ``path``, if it was called.
        The original file is left where it was. A duplicate id, also among pending
        requests, is refused.
        """
        request = request or self.check(path)
        pending_ids = {self._peek_id(p) for p in self.files()}
        if request.request_id in pending_ids:
            raise RequestError([f"duplicate request_id '{request.request_id}': already waiting in the inbox"],
                               source=path.name)
        destination = self.paths.inbox / f"{request.request_id}.json"
        try:  # exclusive create: never replace a waiting file, even an unreadable one or one just added
            with path.open("rb") as source, destination.open("xb") as copy:
                shutil.copyfileobj(source, copy)
        except FileExistsError:
            raise RequestError([f"the inbox already has a file {destination.name}: wait until it is processed, "
                                "or give the new request its own id"], source=path.name) from None
        return destination

    @staticmethod
    def _peek_id(path: Path) -> str | None:
        try:
            return read_request(path).request_id
        except RequestError:
            return None

    def take(self) -> tuple[list[Pending], list[tuple[Path, RequestError]]]:
        """Split the inbox into valid pending requests and invalid ones (with their errors)."""
        valid: list[Pending] = []
        invalid: list[tuple[Path, RequestError]] = []
        seen: set[str] = set()
        known = self.known_ids()
        for path in self.files():
            try:
                request = self.check(path, known)
                if request.request_id in seen:
                    raise RequestError(
                        [f"duplicate request_id '{request.request_id}': another file in this batch has it"],
                        source=path.name,
                    )
                seen.add(request.request_id)
                valid.append(Pending(path, request))
            except RequestError as error:
                invalid.append((path, error))
        return valid, invalid

    # ------------------------------------------------------------------ outcomes

    def _settle(self, path: Path, folder: Path, note_suffix: str, note: str, name: str | None = None) -> Path:
        from components.data import versioning

        destination = _free_name(folder, name or path.name)
        versioning.move(self.paths.root, path, destination)
        Path(str(destination.with_suffix("")) + note_suffix).write_text(note, encoding="utf-8")
        return destination

    def reject(self, path: Path, error: RequestError) -> Path:
        """Move an invalid request to ``rejected/`` with a reason file beside it."""
        note = f"rejected at {_now()}\n" + "\n".join(f"- {reason}" for reason in error.reasons) + "\n"
        return self._settle(path, self.paths.rejected, REASON_SUFFIX, note)

    def fail(self, pending: Pending, reason: str) -> Path:
        """Move a valid request whose unlearning failed to ``failed/`` (retriable)."""
        note = f"failed at {_now()}\n{reason}\nRetry with: blur request retry {pending.request.request_id}\n"
        return self._settle(pending.path, self.failed, REASON_SUFFIX, note,
                            name=f"{pending.request.request_id}.json")

    def complete(self, pending: Pending, result: dict) -> Path:
        """Move a request to ``processed/`` with its result (ids, counts, hashes; no text)."""
        result = {"request_id": pending.request.request_id, "processed_at": _now(), **result}
        return self._settle(pending.path, self.paths.processed, RESULT_SUFFIX,
                            json.dumps(result, indent=2) + "\n", name=f"{pending.request.request_id}.json")

    def retry(self, request_id: str) -> Path:
        """Move a failed request back to the inbox."""
        from components.data import versioning

        if not REQUEST_ID_PATTERN.match(request_id):  # '../processed/x' must not reach another folder
            raise FileNotFoundError(f"no failed request with id '{request_id}': request ids are letters, "
                                    "digits, '-' or '_'")
        source = self.failed / f"{request_id}.json"
        if not source.exists():
            raise FileNotFoundError(f"no failed request with id '{request_id}' in {self.failed}")
        waiting = self.paths.inbox / source.name
        if waiting.exists() or Path(f"{waiting}.dvc").exists():
            raise FileExistsError(f"the inbox already has a file {source.name}: wait until it is processed, "
                                  f"then retry '{request_id}'")
        destination = versioning.move(self.paths.root, source, waiting)
        reason = self.failed / f"{request_id}{REASON_SUFFIX}"
        if reason.exists():
            reason.rename(_free_name(self.failed, f"{request_id}.retried.txt"))
        return destination
