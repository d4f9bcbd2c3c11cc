"""A Prefect server database with every migration applied, made once per test session and copied for each server.

A Prefect server migrates a new SQLite database when it starts: about 6 CPU-s here, half of its start-up. The suite
starts four servers on new databases: the test server of each xdist worker (``prefect_server``, tests/conftest.py),
the operator's `prefect server start` (tests/operator_server.py) and the embedded API of the killed and resumed
`blur process` (tests/test_crash_resume.py). Each now starts on a copy of one migrated database (:func:`template`);
the server still runs its migrations on start, and finds nothing left to do. xdist's controller starts building
the template in the background while the workers collect the tests (:func:`build_in_background`).

    python tests/prefect_database.py FOLDER     # build FOLDER/prefect-template.db unless it is there
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import tempfile
from contextlib import ExitStack, closing, contextmanager
from pathlib import Path
from typing import Iterator

NAME = "prefect-template.db"
LOG = "prefect-template.log"  # the background build's output


def template(folder: Path) -> Path:
    """``folder``'s migrated Prefect database, built now unless another process built it or is building it."""
    from session_target import built_once

    return built_once(folder / NAME, _build, timeout=600, log=folder / LOG)


def _build(partial: Path) -> None:
    """Migrate a new database the way a starting server does, then copy it whole (its write-ahead log included)."""
    import prefect.settings
    from prefect.server.database import provide_database_interface
    from prefect.server.database.dependencies import temporary_database_interface
    from prefect.utilities.asyncutils import run_coro_as_sync

    with tempfile.TemporaryDirectory() as scratch:
        migrated = Path(scratch) / "prefect.db"
        url = {prefect.settings.PREFECT_SERVER_DATABASE_CONNECTION_URL: f"sqlite+aiosqlite:///{migrated}"}
        with prefect.settings.temporary_settings(url), temporary_database_interface():
            run_coro_as_sync(provide_database_interface().create_db())
        copy_database(migrated, partial)
    with closing(sqlite3.connect(partial)) as database:
        assert database.execute("SELECT version_num FROM alembic_version").fetchone(), f"{partial} not migrated"


def copy_database(source: Path, destination: Path) -> Path:
    """A consistent copy of the SQLite database ``source`` (SQLite's backup, not a file copy)."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(source)) as reading, closing(sqlite3.connect(destination)) as writing:
        reading.backup(writing)
    return destination


def build_in_background(folder: Path) -> subprocess.Popen:
    """Start ``python tests/prefect_database.py FOLDER`` (it takes :func:`template`'s lock itself; its environment is
    the controller's, tests/conftest.py's settings included)."""
    folder.mkdir(parents=True, exist_ok=True)
    log = (folder / LOG).open("wb")
    try:
        return subprocess.Popen([sys.executable, __file__, str(folder)], stdout=log, stderr=subprocess.STDOUT)
    finally:
        log.close()


@contextmanager
def test_server(database: Path, timeout: int = 120) -> Iterator[None]:
    """Prefect's own test harness (``prefect_test_harness``), its server started on a copy of ``database``."""
    import prefect.settings
    from prefect.testing import utilities

    made = []

    def folder_with_the_database() -> str:  # the harness makes its folder, then names its database inside
        folder = tempfile.mkdtemp()
        made.append(copy_database(database, Path(folder) / "prefect-test.db"))
        return folder

    with ExitStack() as stack:
        original, utilities.mkdtemp = utilities.mkdtemp, folder_with_the_database
        try:
            stack.enter_context(utilities.prefect_test_harness(server_startup_timeout=timeout))
        finally:
            utilities.mkdtemp = original
        url = prefect.settings.PREFECT_SERVER_DATABASE_CONNECTION_URL.value()
        assert made and url.endswith(str(made[0])), f"the test harness no longer uses the copied database: {url}"
        yield


if __name__ == "__main__":
    template(Path(sys.argv[1]))
