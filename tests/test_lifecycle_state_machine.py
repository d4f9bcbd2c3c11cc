"""The request lifecycle under random interleavings (issue 21, item 2): hypothesis drives add, cancel,
retry, batches whose gate passes or fails, a crash at each named fault point of the flow, a DVC lock
taken by another command mid-run, a person's add, cancel and retry while a run holds the run lock, a
lost result note and an unreadable inbox file, and after every step checks the invariants of docs/guarantees.md (each listed there with this test):

- every request is in exactly one place (its file, followed by inode, in inbox/, processed/, failed/,
  rejected/ or cancelled/; a file in the inbox whose request is certified counts as erased, not pending);
- an erased request is never in failed/ or cancelled/, stays erased (a lost note, a moved alias or a
  crash never makes the pipeline forget it), and `cancel` refuses it;
- no batch's retain set holds a record of a request erased before that batch, and every such request
  is re-checked by the batch ("earlier" requests);
- one model version per batch; the serving alias is on the newest version, which certifies or names
  every erasure; the certificate chain verifies.

What is real and what is doubled, and why. One `blur process` through Prefect, DVC and MLflow takes
seconds; 200 examples of up to 20 steps each must run in about a minute. So each step runs the flow's
own body (``process_requests.fn``: the same code, in the same order, with the same crash points) over
the real inbox (real files, locks, journal and moves), the real ledger, the real resolver and
``prepare`` stage, and real hash-chained certificates, with these doubles:

- Prefect: tasks are called as plain functions (no retries, no task runs), the run logger is a plain
  logger, artifacts are dropped and no global concurrency slot is taken (the run lock file serialises
  the runs, as without a Prefect server). The lifecycle does not depend on Prefect's bookkeeping.
- The training steps: no oracle, a copy-free unlearn (one small ``.safetensors`` file) and the metrics of
  ``tests/stub_stages.py`` (evaluate); ``prepare`` skips training the demo tokenizer.
- DVC: the folder is not a DVC repository; ``dvc add`` is a double returning each file's md5 (what
  DVC records; the erasure proofs' ``dvc add`` before a push does nothing), moves are renames and a
  push does nothing. "DVC lock held" makes them raise ``VersioningError`` from a chosen fault point
  on, like an operator's ``dvc push`` starting mid-run (a failed push then fails the run, settled).
- MLflow: :class:`RegistryDouble` stands for the registry behind ``register``, ``find-champion``,
  ``record-erasure`` (retention ``delete``, ``log_certificate_to_mlflow``'s version check kept),
  ``registry_erasures`` and ``promoted_batch``. It behaves like the real one where the lifecycle
  relies on it: a retried register resumes its batch's run and version, the alias moves after the
  version exists (``register`` crash point in between), certificate tags stay on a purged version's run.
- A crash is ``Crash`` (a ``BaseException``, so no ``except Exception`` handler of the flow runs, as with
  SIGKILL) raised at a named point of ``components.faults.POINTS``.

The same lifecycle with every real component (a forked `blur process` SIGKILLed at each point, Prefect
test server, DVC, MLflow on SQLite): ``tests/test_fault_injection.py``; the DVC-lock window through
the real flow: ``tests/test_erasure_invariants.py::test_a_certified_request_left_in_the_inbox_stays_erased_through_later_batches``.

Profiles (tests/conftest.py): the suite runs 200 examples; nightly runs 2000:
``pytest tests/test_lifecycle_state_machine.py --hypothesis-profile nightly``.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import stat
import tempfile
import uuid
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule, run_state_machine_as_test

from components.artifacts import GateCheck, GateDecision, Resolution
from components.config import Config, load_config
from components.data import versioning
from components.data.inbox import NOTE_SUFFIXES, Inbox, InboxError
from components.data.requests import RequestError
from components.data.world import load_world
from components.faults import POINTS
from components.paths import Paths
from pipeline_repo import write_params

ROOT_USER = os.geteuid() == 0  # chmod 000 does not stop root from reading: root gets the PermissionError by inode
WORLD = {"world.n_subjects": 6, "world.n_holdout_subjects": 2, "world.facts_per_subject": 8}
PARAMS = {**WORLD, "flow.max_batch_requests": 2, "flow.max_batch_failures": 2, "registry.retention": "delete"}
FOLDERS = ("inbox", "processed", "failed", "rejected", "cancelled")
DATES = [f"2026-11-{day:02d}T09:00:00Z" for day in (1, 5, 10, 20, 28)]


OUTCOMES: Counter[str] = Counter()  # what the examples reached, counted over a whole test


def event(text: str) -> None:
    """Count an outcome (:data:`OUTCOMES`), and report it to hypothesis's statistics inside a test."""
    from hypothesis import event as record
    from hypothesis.control import _current_build_context

    OUTCOMES[text] += 1
    if _current_build_context.value is not None:
        record(text)


class Crash(BaseException):
    """The process died at a fault point (a BaseException: no ``except Exception`` of the flow runs)."""


# --------------------------------------------------------------------------- the registry double


@dataclass
class Version:
    number: int
    run_id: str
    batch_id: str
    requests: list[str]
    source: Path
    tags: dict[str, str] = field(default_factory=dict)
    deleted: bool = False


class RegistryDouble:
    """An in-process stand-in for the MLflow registry of one pipeline root (see the module docstring)."""

    name = "blur-demo"
    alias_name = "champion"

    def __init__(self, root: Path):
        self.root = root
        self.runs: dict[str, dict[str, str]] = {}  # run id -> tags (a purged version's run keeps them)
        self.versions: dict[int, Version] = {}
        self.alias: int | None = None
        self.served: list[int] = []  # every version the alias was moved to, in order
        self.gate_passes = True
        self.hook = lambda point: None  # the machine's fault points

    # what components.erasure.ledger.registry_erasures reads
    def erasures(self, root=None) -> dict[str, str]:
        found = {key.removeprefix("certificate."): f"run {run}" for run, tags in self.runs.items()
                 for key in tags if key.startswith("certificate.")}
        if self.alias is not None:
            for request_id in self.versions[self.alias].requests:
                found.setdefault(request_id, f"version {self.alias} (alias)")
        return found

    # the flow's find-champion task
    def champion(self, config, repo, **_) -> dict | None:
        if self.alias is None:
            return None
        version = self.versions[self.alias]
        return {"version": str(version.number), "run_id": version.run_id, "model_dir": str(version.source)}

    # the flow's register task: gate, version (resumed by batch id), then the alias
    def register(self, ctx, *, tracking_root=None, tags=None, dvc_hashes=None) -> GateDecision:
        paths = ctx.paths
        batch_id = tags["batch_id"]
        run_id = next((run for run, t in self.runs.items() if t.get("batch_id") == batch_id), None)
        if run_id is None:
            run_id = uuid.uuid4().hex
            self.runs[run_id] = {"batch_id": batch_id}
        passed = self.gate_passes
        check = GateCheck(metric="forget_quality", op=">=", threshold=0.1, value=0.4 if passed else 0.01,
                          passed=passed, setting="gate.min_forget_quality",
                          reason=None if passed else "forget_quality 0.01 < 0.1")
        previous = None if self.alias is None else str(self.alias)
        decision = GateDecision(passed=passed, checks=(check,), model_name=self.name, run_id=run_id,
                                champion_version=previous)
        self.runs[run_id]["gate"] = "passed" if passed else "failed"
        if passed:
            mine = [v for v in self.versions.values() if v.run_id == run_id]
            if mine:
                version = mine[0]
            else:
                number = max(self.versions, default=0) + 1
                source = self.root / "registry-double" / str(number)
                shutil.copytree(paths.unlearned, source)
                requests = sorted(Resolution.load(paths.resolution).forget_ids_by_request)
                version = self.versions.setdefault(number, Version(number, run_id, batch_id, requests, source))
            self.hook("register")  # a version exists, the alias has not moved
            if self.alias != version.number:
                self.alias = version.number
                self.served.append(version.number)
            decision = decision.completed(version=str(version.number), alias=self.alias_name,
                                          champion_version=str(version.number))
        decision.save(paths.gate)
        return decision

    # components.registry.promotion.promoted_batch, read from this registry
    def promoted_batch(self, config, repo: Paths, champion, request_ids) -> str | None:
        if champion is None:
            return None
        version = self.versions[int(champion["version"])]
        if not set(version.requests) & set(request_ids):
            return None
        folder = repo.batch(config.flow.runs_dir, version.batch_id)
        done = all(p.exists() for p in (folder.gate, folder.metrics, folder.resolution))
        return version.batch_id if done else None

    # the flow's record-erasure task: retention `delete`, then one certificate per request, logged
    def record_erasure(self, config, repo: Paths, paths: Paths, *, gate: GateDecision, metrics, requests,
                       batch_id: str) -> dict:
        from components.erasure.certificates import (CertificateError, ErasureEvidence, _read, issue_certificate,
                                                     weights_sha256)

        number = int(gate.version)
        purged = [str(v.number) for v in self.versions.values() if v.number < number and not v.deleted]
        for version in self.versions.values():
            if version.number < number:
                version.deleted = True
                shutil.rmtree(version.source, ignore_errors=True)
        weights = weights_sha256(paths.unlearned)
        issued = {}
        for request in requests:
            path = issue_certificate(repo.root, ErasureEvidence(
                request_id=request.request_id, request_sha256=request.request_sha256, forget_ids=request.forget_ids,
                model_name=gate.model_name, model_version=str(number), weights_sha256=weights, metrics=metrics,
                gate=gate, received_at=request.received_at, batch_id=batch_id, run_id=gate.run_id,
                versions_purged=purged))
            certificate = _read(path)  # log_certificate_to_mlflow's check: the certificate names this version
            if str(certificate["model"]["version"]) != str(number):
                raise CertificateError(f"{path.name} certifies version {certificate['model']['version']}, "
                                       f"not version {number}")
            self.versions[number].tags[f"certificate.{request.request_id}"] = certificate["certificate_hash"]
            self.runs[gate.run_id][f"certificate.{request.request_id}"] = certificate["certificate_hash"]
            issued[request.request_id] = certificate["certificate_hash"]
        return {"versions_purged": purged, "certificates": issued}


# --------------------------------------------------------------------------- the flow's steps, doubled


class Plain:
    """A Prefect task as a plain call (``with_options`` accepted and ignored)."""

    def __init__(self, function):
        self.function = function

    def __call__(self, *args, **kwargs):
        return self.function(*args, **kwargs)

    def with_options(self, **_):
        return self


@dataclass
class Harness:
    """What the patched flow calls into: the current example's machine."""

    machine: "LifecycleMachine | None" = None
    unreadable: set[int] = field(default_factory=set)  # inodes chmod 000 made unreadable; root is refused them by hand

    def crash_point(self, name: str) -> None:
        self.machine.fault(name)


HARNESS = Harness()


def _track(root, files):
    """`dvc add` as DVC records it (each file's md5), or the lock error while another DVC command runs."""
    HARNESS.machine.dvc_step("add")
    return {f.name: versioning.file_md5(f) for f in files}


def _unlearn(run, *, start=None, show_progress=False) -> dict:
    paths = run.paths
    paths.unlearned.mkdir(parents=True, exist_ok=True)
    (paths.unlearned / "model.safetensors").write_bytes(os.urandom(16))
    return {"unlearned_by": "test double"}


def _evaluate(run, *, show_progress=True):
    """tests/stub_stages.py's metrics; the batch's retain set and re-checked requests are recorded."""
    from stub_stages import stub_evaluate

    paths = run.paths
    metrics = stub_evaluate(run)
    with (paths.reports / "per_item" / "unlearned_retain.csv").open() as handle:
        retain = {row["record_id"] for row in csv.DictReader(handle)}
    rechecked = set(Resolution.load(paths.resolution).earlier_requests)
    HARNESS.machine.batch_trained(retain, rechecked, set(Resolution.load(paths.resolution).forget_ids_by_request))
    return metrics


@pytest.fixture
def patched_flow(monkeypatch):
    """``flows.pipeline`` with the doubles of the module docstring, routed to ``HARNESS.machine``."""
    import importlib

    import components.data.inbox as inbox_module
    import flows.pipeline as pipeline

    prepare_module = importlib.import_module("components.stages.prepare")  # the package exports a function so named

    def registry(method):
        return lambda *args, **kwargs: getattr(HARNESS.machine.registry, method)(*args, **kwargs)

    def move(root, source, destination):
        HARNESS.machine.dvc_step("move")
        return real_move(root, source, destination)

    def push(root):  # `dvc push` with no remote configured: nothing to do, unless another DVC command holds the lock
        HARNESS.machine.dvc_step("push")
        return False

    def track_proofs(paths):  # `dvc add` of the result notes and certificates before each push
        HARNESS.machine.dvc_step("add")
        return []

    if ROOT_USER:  # what chmod 000 gives everyone but root: PermissionError on open, following the file (inode)
        real_open = Path.open

        def refuse(self, *args, **kwargs):
            try:
                inode = os.stat(self).st_ino
            except OSError:
                inode = None
            if inode is not None and inode in HARNESS.unreadable:
                raise PermissionError(13, "Permission denied", str(self))
            return real_open(self, *args, **kwargs)

        monkeypatch.setattr(Path, "open", refuse)

    real_move = versioning.move
    monkeypatch.setattr(versioning, "move", move)
    monkeypatch.setattr(versioning, "push", push)
    monkeypatch.setattr(versioning, "track_proofs", track_proofs)
    monkeypatch.setattr(inbox_module, "crash_point", HARNESS.crash_point)
    monkeypatch.setattr(pipeline, "crash_point", HARNESS.crash_point)
    monkeypatch.setattr(prepare_module, "_prepare_model_inputs", lambda ctx, records: ctx)
    monkeypatch.setattr(pipeline, "get_run_logger", lambda: logging.getLogger("lifecycle"))
    # no Prefect concurrency slot, as without a Prefect server: else, once another test on this process has
    # started the session's test server, every step would take and renew one over HTTP (8x the CPU)
    monkeypatch.setattr(pipeline, "_server_slot", lambda config: nullcontext())
    monkeypatch.setattr(pipeline, "create_markdown_artifact", lambda **_: None)
    monkeypatch.setattr(pipeline, "create_table_artifact", lambda **_: None)
    monkeypatch.setattr(pipeline, "registry_erasures", registry("erasures"))
    monkeypatch.setattr(pipeline, "promoted_batch", registry("promoted_batch"))
    for name, function in {
        "track_requests": _track, "target_model": lambda *a, **k: None, "batch_models": lambda *a, **k: {},
        "validate_batch": lambda *a, **k: None, "unlearn_batch": _unlearn, "evaluate_batch": _evaluate,
        "find_champion": registry("champion"), "find_registry_erasures": registry("erasures"),
        "register_batch": registry("register"),
        "record_erasure": registry("record_erasure"), "check_request": pipeline.check_request.fn,
        "prepare_batch": pipeline.prepare_batch.fn, "purge_batch_copies": pipeline.purge_batch_copies.fn,
    }.items():
        monkeypatch.setattr(pipeline, name, Plain(function))
    yield pipeline.process_requests.fn
    HARNESS.machine = None


# --------------------------------------------------------------------------- the machine


@dataclass
class Request:
    """One file the machine handed in: its inode follows it through every move."""

    request_id: str | None  # None: malformed, no usable id
    inode: int
    records: frozenset[str] = frozenset()


class LifecycleMachine(RuleBasedStateMachine):
    """Random sequences of what people, runs and faults do to one pipeline root (module docstring)."""

    process = None  # process_requests.fn with the doubles, set by the test

    def __init__(self, overrides: dict | None = None):
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="lifecycle-"))
        write_params(self.root, {**PARAMS, **(overrides or {})})
        self.config = load_config(self.root / "params.yaml")
        self.world = load_world(self.config.world, self.config.seed, self.root).records  # the root's, fixed
        self.paths = Paths(self.root)
        self.inbox = Inbox(self.paths)
        self.outside = self.root / "handed-in"
        self.outside.mkdir()
        self.registry = RegistryDouble(self.root)
        self.registry.hook = self.fault
        HARNESS.machine = self
        HARNESS.unreadable = set()
        self.requests: list[Request] = []
        self.erased: set[str] = set()  # every request any source ever said was erased: never shrinks
        self.crash_at: str | None = None
        self.lock_from: str | None = None
        self.dvc_locked = False
        self.counter = 0
        self.mid_run = None  # what a person does at a fault point while a run is under way: (point) -> None

    def teardown(self):
        """Liveness: with no faults and a passing gate, a few runs empty the inbox."""
        try:
            self.crash_at = self.lock_from = None
            self.registry.gate_passes = True
            for _ in range(len(self.inbox.files()) + 2):
                if not self.inbox.files():
                    break
                self._run()
                self.check_all()
            assert self.inbox.files() == [], "requests still wait after fault-free runs with a passing gate"
        finally:
            HARNESS.machine = None
            for path in self.root.rglob("*"):
                if not path.is_symlink() and path.is_file() and not os.access(path, os.R_OK):
                    path.chmod(stat.S_IRUSR | stat.S_IWUSR)
            shutil.rmtree(self.root, ignore_errors=True)

    # ------------------------------------------------------------------ what the flow calls into

    def fault(self, point: str) -> None:
        if self.mid_run is not None:
            self.mid_run(point)
        if point == self.lock_from:
            self.dvc_locked = True
        if point == self.crash_at:
            raise Crash(point)

    def dvc_step(self, command: str) -> None:
        if self.dvc_locked:
            raise versioning.VersioningError(f"dvc {command} failed: Unable to acquire lock")

    def batch_trained(self, retain: set[str], rechecked: set[str], own: set[str]) -> None:
        """A batch is training: nothing erased before it is in its retain set, and each is re-checked."""
        self._observe()
        erased_records = {r for q in self.requests if q.request_id in self.erased - own for r in q.records}
        assert not retain & erased_records, "a batch's retain set holds records of a request erased before it"
        assert self.erased - own <= rechecked, \
            f"erased requests {sorted(self.erased - own - rechecked)} are not re-checked by the batch"

    # ------------------------------------------------------------------ helpers

    def _new_id(self) -> str:
        self.counter += 1
        return f"req-{self.counter}"

    def _hand_in(self, name: str, data: bytes) -> Path:
        path = self.inbox.paths.inbox / name
        path.write_bytes(data)
        return path

    def _run(self) -> None:
        try:
            summary = type(self).process(root=str(self.root))
            event(f"run: {'processed' if summary['processed'] else 'failed' if summary['failed'] else 'nothing done'}")
        finally:
            self.dvc_locked = False
            self._observe()

    def _observe(self) -> None:
        """Add to :attr:`erased` what the certificates, the alias and the notes say now."""
        from components.erasure.ledger import certified_requests

        self.erased |= set(certified_requests(self.root))
        if self.registry.alias is not None:
            self.erased |= set(self.registry.versions[self.registry.alias].requests)
        self.erased |= {p.name.removesuffix(".result.json") for p in self.paths.processed.glob("*.result.json")}

    def _place(self, request: Request) -> str:
        """The one folder that holds the request's file. A file still in the inbox whose settle was
        interrupted after its note was written (the journal) counts as where the journal moves it."""
        found = [p for folder in FOLDERS for p in (self.paths.requests / folder).iterdir()
                 if not p.is_symlink() and p.is_file() and p.stat().st_ino == request.inode]
        assert len(found) == 1, f"request {request.request_id or request.inode} is in {found or 'no folder'}"
        if found[0] == self.inbox._interrupted_source():
            return self.inbox._read_journal()["destination"].parent.name
        return found[0].parent.name

    def _ids(self) -> list[str]:
        return sorted(r.request_id for r in self.requests if r.request_id)

    # ------------------------------------------------------------------ rules: people

    @rule(subject=st.integers(0, WORLD["world.n_subjects"] - 1), received=st.sampled_from(DATES))
    def add_valid_request(self, subject, received):
        """`blur request add` of a request naming one subject of the world."""
        world = self.world
        name = list(dict.fromkeys(r.subject for r in world))[subject]
        request_id = self._new_id()
        source = self.outside / f"{request_id}.json"
        source.write_text(json.dumps({"request_id": request_id, "received_at": received, "subjects": [name]}))
        added = self.inbox.add(source, timeout=1)
        records = frozenset(r.record_id for r in world if r.subject == name)
        self.requests.append(Request(request_id, added.stat().st_ino, records))

    @rule(kind=st.sampled_from(["not json", "unknown subject", "no id", "path as id"]))
    def add_malformed_request(self, kind):
        """A malformed file: `blur request add` refuses it; dropped into the inbox by hand, a run rejects it."""
        request_id = self._new_id()
        data = {"not json": b"{oops " + request_id.encode(),
                "unknown subject": json.dumps({"request_id": request_id, "received_at": DATES[0],
                                               "subjects": ["Nobody Known"]}).encode(),
                "no id": json.dumps({"received_at": DATES[0], "subjects": [request_id]}).encode(),
                "path as id": json.dumps({"request_id": f"../{request_id}", "received_at": DATES[0],
                                          "subjects": ["x"]}).encode()}[kind]
        source = self.outside / f"{request_id}.json"
        source.write_bytes(data)
        if kind != "unknown subject":  # well-formed but unresolvable: only the run finds out
            with pytest.raises(RequestError):
                self.inbox.add(source, timeout=1)
        path = self._hand_in(f"{request_id}-by-hand.json", data)
        self.requests.append(Request(None, path.stat().st_ino))

    @rule(subject=st.integers(0, WORLD["world.n_subjects"] - 1))
    def add_unreadable_file(self, subject):
        """A request file the service cannot read (chmod 000): quarantined, never blocking the others."""
        world = self.world
        name = list(dict.fromkeys(r.subject for r in world))[subject]
        request_id = self._new_id()
        path = self._hand_in(f"{request_id}.json", json.dumps(
            {"request_id": request_id, "received_at": DATES[0], "subjects": [name]}).encode())
        path.chmod(0)
        if ROOT_USER:
            HARNESS.unreadable.add(path.stat().st_ino)
        self.requests.append(Request(None, path.stat().st_ino))  # never read: it cannot be erased
        event("an unreadable file handed in")

    @precondition(lambda self: self._ids())
    @rule(data=st.data())
    def cancel(self, data):
        """`blur request cancel ID` of any request handed in."""
        self.cancel_request(data.draw(st.sampled_from(self._ids())))

    def cancel_request(self, request_id: str) -> None:
        """What `blur request cancel` does (it reads no registry): an erased request is refused and stays
        where it is, and so is one a batch took and has not decided (a run under way, or one that stopped
        mid-batch, whose alias may have moved already); a pending one moves to cancelled/, any other is
        not found."""
        request = next(r for r in self.requests if r.request_id == request_id)
        self._observe()
        erased = request_id in self.erased
        before = self._place(request)
        taken = self.inbox.running()
        try:
            self.inbox.cancel(request_id, timeout=1)
        except InboxError as error:
            if "was taken into" in str(error):
                assert before == "inbox" and request_id in taken.request_ids, f"cancel of {request_id}: {error}"
                event(f"cancel: refused, taken by an undecided batch{' (erased)' if erased else ''}")
            else:
                assert erased and "already erased" in str(error), f"cancel of {request_id} refused: {error}"
                event(f"cancel: refused, erased ({before})")
            assert self._place(request) in (before, "processed"), "a refused cancel moved the file"
            return
        except FileNotFoundError:
            assert before != "inbox" and not erased, f"{request_id} ({before}/) was not found to cancel"
            event("cancel: not pending")
            return
        assert not erased, f"{request_id} was erased, yet cancelled"
        assert self._place(request) == "cancelled"
        event("cancel: cancelled")

    @precondition(lambda self: self.erased)
    @rule(data=st.data())
    def cancel_an_erased_request(self, data):
        """`blur request cancel ID` of a request erased so far: always refused, wherever its file is."""
        self.cancel_request(data.draw(st.sampled_from(sorted(self.erased))))

    @rule(data=st.data(), every=st.booleans())
    def retry(self, data, every):
        """`blur request retry ID` or `--all`: a failed request goes back to the inbox."""
        failed = [r for r in self.requests if r.request_id and self._place(r) == "failed"]
        if every:
            moved, refused = self.inbox.retry_all(timeout=1)
            assert set(moved) | set(refused) == {r.request_id for r in failed}
            assert all(self._place(r) == "inbox" for r in failed if r.request_id in moved)
        elif failed:
            request = data.draw(st.sampled_from(failed))
            self.inbox.retry(request.request_id, timeout=1)
            assert self._place(request) == "inbox"

    @rule(data=st.data())
    def delete_a_result_note(self, data):
        """Someone deletes `processed/<id>.result.json`: the erasure must stay known."""
        notes = sorted(self.paths.processed.glob("*.result.json"))
        if notes:
            self._observe()
            data.draw(st.sampled_from(notes)).unlink()
            event("a result note deleted")

    # ------------------------------------------------------------------ rules: runs and faults

    @rule(gate_passes=st.booleans())
    def process_batch(self, gate_passes):
        """`blur process`: one batch, its gate passing or failing."""
        self.registry.gate_passes = gate_passes
        self._run()

    @rule(point=st.sampled_from(POINTS), gate_passes=st.booleans())
    def crash_at_a_fault_point(self, point, gate_passes):
        """`blur process` killed at a named point (components.faults.POINTS), or ending before it."""
        self.registry.gate_passes, self.crash_at = gate_passes, point
        try:
            self._run()
        except Crash:
            event(f"crashed at {point}")
        finally:
            self.crash_at = None

    @rule(point=st.sampled_from([p for p in POINTS if p != "settle"]), gate_passes=st.booleans(),
          subject=st.integers(0, WORLD["world.n_subjects"] - 1), data=st.data())
    def a_person_acts_while_a_batch_runs(self, point, gate_passes, subject, data):
        """While a run holds the run lock (at a named point outside the file moves), a person adds a request,
        cancels one and retries every failed one: each works at once (never "busy"), what a batch took is
        not cancelled, and what is added or retried waits for the next batch."""
        acted: list[str] = []

        def person(at: str) -> None:
            if at != point or acted:
                return
            acted.append(at)
            self.add_valid_request(subject=subject, received=data.draw(st.sampled_from(DATES)))
            self.retry(data, every=True)
            if self._ids():
                self.cancel_request(data.draw(st.sampled_from(self._ids())))

        self.registry.gate_passes, self.mid_run = gate_passes, person
        try:
            self._run()
        finally:
            self.mid_run = None
        if acted:
            event("a person acted mid-batch")

    @rule(point=st.sampled_from(POINTS), gate_passes=st.booleans())
    def dvc_lock_held(self, point, gate_passes):
        """Another DVC command (an operator's `dvc push`) takes the repository lock at a named point of a
        run: every later `dvc add`/`move`/`push` of the run fails (as once the retries of
        components/data/versioning.py run out); a failed push fails the run after its batch settled."""
        self.registry.gate_passes, self.lock_from = gate_passes, point
        try:
            self._run()
        except versioning.VersioningError as error:
            assert "Unable to acquire lock" in str(error)
            event(f"DVC lock held from {point}: the run failed")
        finally:
            self.lock_from = None

    # ------------------------------------------------------------------ invariants

    @invariant()
    def check_all(self):
        self._observe()
        self.every_request_in_exactly_one_place()
        self.an_erasure_is_never_undone()
        self.each_erasure_served_once_and_the_alias_on_the_newest()

    def every_request_in_exactly_one_place(self):
        for request in self.requests:
            place = self._place(request)
            if request.request_id in self.erased:
                assert place in ("processed", "inbox"), f"erased {request.request_id} is in {place}/"

    def an_erasure_is_never_undone(self):
        known = self.inbox.erased_ids(self.registry.erasures())
        assert self.erased <= known, f"the pipeline forgot the erasure of {sorted(self.erased - known)}"

    def each_erasure_served_once_and_the_alias_on_the_newest(self):
        """One version per batch, in the form that can fail: no request was unlearned into two versions
        that served (a resumed batch registers no second version, a certified one is not unlearned again).
        The alias is on a live version no older than any certificate's, and the chain verifies."""
        from components.erasure.certificates import verify_chain
        from components.erasure.ledger import certified_requests

        served = [request for number in self.registry.served for request in self.registry.versions[number].requests]
        assert len(served) == len(set(served)), f"a request was erased by two served versions: {sorted(served)}"
        certified = certified_requests(self.root)
        if certified:
            newest = max(int(c.model_version) for c in certified.values())
            assert self.registry.alias is not None and self.registry.alias >= newest, \
                "the alias is behind the newest certified erasure"
            assert not self.registry.versions[self.registry.alias].deleted, "the alias is on a purged version"
            assert all(c.model_version in {str(n) for n in self.registry.served} for c in certified.values()), \
                "a certificate names a version that never served"
        assert verify_chain(self.root) == []


def test_a_request_the_champion_erased_stays_erased_when_an_older_request_is_taken_before_it(patched_flow):
    """Found by the state machine. R's batch died after the alias moved, before its certificates (R is
    erased only by the champion's `requests` tag). An older request S arrives; with one request per
    batch S was taken alone, its version took the alias, and R's erasure vanished from every source:
    `cancel R` then succeeded and R's records could return to the next retain set. A request the
    registry holds as erased is now taken beyond the batch limit, and its batch is finished first."""
    LifecycleMachine.process = staticmethod(patched_flow)
    machine = LifecycleMachine({"flow.max_batch_requests": 1})
    try:
        machine.add_valid_request(subject=1, received=DATES[3])  # R: req-1
        machine.crash_at_a_fault_point(point="alias", gate_passes=True)
        assert machine.registry.erasures() == {"req-1": "version 1 (alias)"} and not machine.inbox.certified_ids()
        machine.add_valid_request(subject=2, received=DATES[0])  # S: req-2, older
        machine.process_batch(gate_passes=True)
        assert "req-1" in machine.inbox.erased_ids(machine.registry.erasures()), "R's erasure was forgotten"
        with pytest.raises(InboxError, match="already erased"):
            machine.inbox.cancel("req-1", timeout=1)
        assert machine.inbox.certified_ids() == {"req-1"}, "R's batch was finished first"
    finally:
        machine.teardown()


def test_the_request_lifecycle_keeps_every_invariant_under_random_interleavings(patched_flow):
    """Hypothesis runs the profile's examples (suite: 200; nightly: 2000) of :class:`LifecycleMachine`."""
    LifecycleMachine.process = staticmethod(patched_flow)
    OUTCOMES.clear()
    run_state_machine_as_test(LifecycleMachine)
    print("\n".join(f"{count:6d}  {outcome}" for outcome, count in sorted(OUTCOMES.items())))
    reached = {outcome.split(" (")[0].split(" at ")[0].split(" from ")[0] for outcome in OUTCOMES}
    assert {"run: processed", "run: failed", "crashed", "DVC lock held", "cancel: cancelled",
            "cancel: refused, erased", "cancel: refused, taken by an undecided batch", "a result note deleted",
            "a person acted mid-batch"} <= reached, f"the examples never reached {reached}"
