"""Shared fixtures: a tiny world and tiny trained models, built once per test session."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # the test servers report nothing anywhere


def _ram_tmpdir() -> None:
    """The suite's temporary files on a RAM disk where the machine has one (and TMPDIR names no other folder):
    pytest's tmp_path folders, Prefect's test databases and every subprocess's temporary files. The suite
    creates and removes tens of thousands of small files and SQLite commits; on an ext4 disk mounted with
    ``discard`` removing a folder alone took 3 ms (tests/test_lifecycle_state_machine.py: 61 -> 46 s wall).
    The files are as real (same moves, inodes, locks, permissions); only where they live changes."""
    import tempfile

    shm = "/dev/shm"
    if "TMPDIR" not in os.environ and os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK):
        os.environ["TMPDIR"] = shm
        tempfile.tempdir = None  # tempfile.gettempdir() reads TMPDIR again


_ram_tmpdir()

import absl.logging  # rouge_score's logger, imported by components.evaluation
import prefect.main  # noqa: F401  sets up Prefect's logging now (`import prefect` alone is lazy and does not)
import pytest

# Logging is reconfigured during the session (Prefect's setup_logging on the first `from prefect import flow`):
# logging.config.dictConfig closes every handler ever made, attached or not. absl's handler, made on
# import and bound to the sys.stderr of that moment (pytest's capture file), closes that stream unless it is the
# current sys.stderr; inside a CliRunner call it is not, so pytest's own capture file was closed and every later
# test on that process failed with "I/O operation on closed file" (seen under xdist, or whenever the first such
# reconfiguration happened inside a CLI test). Bound to sys.__stderr__, absl never closes it. Prefect's console
# handler is made above, outside any CliRunner call, so it never holds a CliRunner's temporary stream.
absl.logging.get_absl_handler().python_handler.stream = sys.__stderr__

# torch, transformers and the modeling code are imported by the fixtures that use them, not here: xdist's
# controller imports this file too and runs no test (8 CPU-s of imports there before, 1.7 now).
from components.config import Config, FinetuneConfig, TinyModelConfig

if TYPE_CHECKING:
    import torch

    from components.data.records import QARecord

TINY_SIZES = TinyModelConfig(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4)
MAX_LENGTH = 64


@dataclass
class TinySetup:
    """A small world split into forget/retain/holdout, a tokenizer and trained models."""

    world: list[QARecord]
    holdout: list[QARecord]
    forget: list[QARecord]
    retain: list[QARecord]
    tokenizer: object
    target: torch.nn.Module
    oracle: torch.nn.Module
    config: Config


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models train fastest on one thread, and far faster than on two when the cores are shared."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_setup() -> TinySetup:
    import torch

    from components.data.demo_world import generate_world
    from components.modeling.encoding import answer_texts
    from components.modeling.finetune import finetune
    from components.modeling.tiny_model import build_tiny_model
    from components.modeling.tokenizer import train_tokenizer

    torch.set_num_threads(1)  # tiny models; more threads only thrash when cores are shared
    world, holdout = generate_world(seed=1, n_subjects=8, n_holdout_subjects=2, facts_per_subject=8)
    forget_subject = world[0].subject
    forget = [r for r in world if r.subject == forget_subject]
    retain = [r for r in world if r.subject != forget_subject]
    texts = [t for r in world + holdout for t in (r.question, *answer_texts(r))]
    tokenizer = train_tokenizer(texts, vocab_size=400)
    recipe = FinetuneConfig(target_prob=0.8, max_epochs=80, lr=5e-3, batch_size=16, check_every=5)
    target = build_tiny_model(TINY_SIZES, tokenizer, MAX_LENGTH, seed=0)
    result = finetune(target, tokenizer, world, recipe, max_length=MAX_LENGTH, seed=0, show_progress=False)
    oracle = build_tiny_model(TINY_SIZES, tokenizer, MAX_LENGTH, seed=0)
    finetune(oracle, tokenizer, retain, recipe, max_length=MAX_LENGTH, seed=0, epochs=result.epochs,
             show_progress=False)
    config = Config().with_overrides({"model.max_length": MAX_LENGTH, "eval.relearn.lr": recipe.lr})
    return TinySetup(world, holdout, forget, retain, tokenizer, target, oracle, config)


pytest_plugins = ["registry_fixtures", "reliability_runs", "operator_server"]


@pytest.fixture(scope="session")
def seed_target(tmp_path_factory):
    """``seed_target(repo)`` copies the session's demo target of the tiny flow world into ``repo/models/target``
    (trained once per session, by whichever xdist worker asks first: tests/session_target.py)."""
    from session_target import copy_target

    return lambda repo: copy_target(repo, tmp_path_factory)


# The test files that take longest (measured: `pytest -n 2 --dist loadfile --durations=0`, 2026-12-07), heaviest
# first. With xdist's reordering by test count turned off (:func:`pytest_configure`), each worker gets the next
# whole work unit (a file, or a group of files: :func:`pytest_xdist_make_scheduler`) in collection order, so
# starting with these and ending with the many short files evens out the two workers. A stale list only costs
# balance, never a test (tests/test_suite_order.py checks the names).
HEAVIEST_FIRST = ("test_bad_requests.py", "test_dvc_pipeline.py", "test_work_pool.py", "test_user_model.py",
                  "test_distributed_unlearning.py", "test_torchrun_task.py", "test_erasure_invariants.py",
                  "test_flow.py", "test_fault_injection.py", "test_lifecycle_state_machine.py", "test_evaluation.py",
                  "test_eval_cache.py", "test_batch_failures.py", "test_registry.py")


def pytest_collection_modifyitems(config, items):
    """Files in :data:`HEAVIEST_FIRST` order, then the others as collected (a stable sort: each file's tests
    keep their order; every xdist worker sorts alike, so their collections stay identical)."""
    rank = {name: i for i, name in enumerate(HEAVIEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def pytest_collection_finish(session):
    """Everything alive once the tests are collected (the imported libraries: about a million objects) lives
    for the whole session: ``gc.freeze`` leaves it out of every later collection. A full collection then costs
    milliseconds instead of 0.3-0.5 s; the evaluator makes one after each model it frees (3 per evaluation), and
    Python makes its own as the session allocates. What gets freed is unchanged: the objects made later are
    collected as before."""
    import gc

    gc.freeze()


def pytest_configure(config):
    # the work units in collection order (:func:`pytest_collection_modifyitems`), not by their number of tests;
    # this overrides an explicit --loadscope-reorder
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


@pytest.hookimpl(optionalhook=True)  # an xdist hook: `-p no:xdist` still runs the suite
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadfile`` with the test files of the shared `blur process` runs (tests/reliability_runs.py) as one
    unit on one worker, and those of the operator's Prefect server (tests/operator_server.py) as another: each run
    or server is started once per session instead of once per worker that needs it."""
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    from operator_server import OPERATOR_SERVER_FILES
    from reliability_runs import SHARED_RUN_FILES

    class SharedRunsTogether(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            file = super()._split_scope(nodeid)
            name = file.rsplit("/", 1)[-1]
            if name in SHARED_RUN_FILES:
                return "the shared blur runs"
            return "the operator's Prefect server" if name in OPERATOR_SERVER_FILES else file

    return SharedRunsTogether(config, log)


@pytest.fixture(scope="session")
def prefect_database(tmp_path_factory):
    """The session's migrated Prefect database, to copy for each server started (tests/prefect_database.py)."""
    from prefect_database import template
    from session_target import shared_folder

    return template(shared_folder(tmp_path_factory))


@pytest.fixture(scope="session")
def prefect_server(prefect_database):
    """One Prefect test server (ephemeral API, a copy of the migrated database) for the whole session."""
    from prefect_database import test_server

    with test_server(prefect_database, timeout=120):
        yield


_TEMPLATE_BUILD = pytest.StashKey()


def pytest_sessionstart(session):
    """xdist's controller runs no test: it builds the migrated Prefect database meanwhile, while the workers
    collect (the first worker to need it waits for it, under its lock)."""
    if os.environ.get("PYTEST_XDIST_WORKER") or not session.config.pluginmanager.hasplugin("dsession"):
        return
    from prefect_database import build_in_background
    from session_target import shared_folder

    session.config.stash[_TEMPLATE_BUILD] = build_in_background(shared_folder(session.config._tmp_path_factory))


def pytest_unconfigure(config):
    build = config.stash.get(_TEMPLATE_BUILD, None)
    if build is not None and build.poll() is None:
        build.kill()
        build.wait()


# Hypothesis profiles (tests/test_lifecycle_state_machine.py): the suite's, and a larger one for nightly runs,
# chosen with `pytest --hypothesis-profile nightly` (docs/guarantees.md). No deadline: the shared CPU is slow.
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile("suite", max_examples=200, stateful_step_count=20, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("nightly", parent=settings.get_profile("suite"), max_examples=2000,
                          stateful_step_count=40)
settings.load_profile("suite")
