"""After full runs with deletion requests, the text those requests erase appears nowhere in
what the pipeline keeps about its runs: the MLflow database and artifact store, the Prefect
database and logs (of every flow run so far in this session), the console log, and the
reports. Request ids and hashes only.

The runs searched: `blur process` on a fresh repository (the production path, with a
misspelt request rejected in the same run) and the two concurrent `blur process` runs.
Every file is searched as bytes for each string in UTF-8 and UTF-16 (and as JSON and HTML
would escape it), inside gzip and zip files, and every value of every table of every
SQLite database (also what is still in its write-ahead log).
"""

from __future__ import annotations

import gzip
import html
import io
import json
import shutil
import sqlite3
import tempfile
import zipfile
from pathlib import Path
from typing import Iterator

import pytest

from reliability_runs import batch_dir, forgotten_subject, misspelt_request

pytestmark = pytest.mark.slow


# --------------------------------------------------------------------------- the search


def _encodings(text: str) -> set[bytes]:
    forms = {text, json.dumps(text)[1:-1], html.escape(text), html.escape(text, quote=False)}
    return {form.encode(codec) for form in forms for codec in ("utf-8", "utf-16-le", "utf-16-be")}


def _sqlite_values(path: Path) -> Iterator[tuple[str, bytes]]:
    with tempfile.TemporaryDirectory() as folder:
        for part in path.parent.glob(path.name + "*"):  # the database, its -wal and -shm
            shutil.copy(part, Path(folder) / part.name)
        connection = sqlite3.connect(Path(folder) / path.name)
        connection.text_factory = bytes
        try:
            tables = [row[0].decode() for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")]
            for table in tables:
                for row in connection.execute(f'SELECT * FROM "{table}"'):
                    for value in row:
                        if isinstance(value, bytes):
                            yield f"{path} (table {table})", value
        finally:
            connection.close()


def _contents(path: Path) -> Iterator[tuple[str, bytes]]:
    data = path.read_bytes()
    yield str(path), data
    if data[:2] == b"\x1f\x8b":
        yield f"{path} (gunzipped)", gzip.decompress(data)
    if data[:4] == b"PK\x03\x04":
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for name in archive.namelist():
                yield f"{path}!{name}", archive.read(name)
    if data[:16] == b"SQLite format 3\x00":
        yield from _sqlite_values(path)


def find(texts: set[str], roots: list[Path]) -> list[tuple[str, str]]:
    """(where, text) for every text found under the roots."""
    patterns = {text: _encodings(text) for text in texts}
    found = []
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for file in files:
            for where, blob in _contents(file):
                found += [(where, text) for text, forms in patterns.items() if any(f in blob for f in forms)]
    return found


# --------------------------------------------------------------------------- what is searched, for what


def _prefect_database() -> Path:
    import prefect.settings

    url = str(prefect.settings.PREFECT_SERVER_DATABASE_CONNECTION_URL.value())
    assert url.startswith("sqlite"), url
    return Path(url.split(":///", 1)[1])


def _stores(repo: Path, logs: list[Path]) -> list[Path]:
    """Where one repository's runs are recorded (the Prefect database is shared)."""
    roots = [repo / "mlflow.db", repo / "mlartifacts", repo / ".prefect", repo / "reports", *logs,
             *(batch / "reports" for batch in sorted((repo / "runs").glob("batch-*")))]
    return [root for root in roots if root.exists()]


def _erased_texts(repo: Path) -> set[str]:
    """Every question and answer (paraphrased and perturbed too) of the batch's forget set,
    the name of the author erased as a whole, and the misspelt name of the rejected request."""
    from components.config import load_config
    from components.data.world import load_world

    texts = {forgotten_subject(), *misspelt_request()["subjects"]}
    erased = {record_id for result in (repo / "data" / "requests" / "processed").glob("*.result.json")
              for record_id in json.loads(result.read_text())["forget_ids"]}
    config = load_config(repo / "params.yaml")
    for record in load_world(config.world, config.seed, repo).records:
        if record.record_id in erased:
            texts |= {record.question, record.answer, record.paraphrased_answer, *record.perturbed_answers}
    return texts


@pytest.fixture(scope="module")
def searched(reference_run, concurrent_run):
    single, pair = reference_run, concurrent_run
    texts = _erased_texts(single["repo"])
    prefect_db = _prefect_database()
    roots = (_stores(single["repo"], [single["log"]]) + _stores(pair["repo"], pair["logs"])
             + sorted(prefect_db.parent.glob(prefect_db.name + "*")))
    return {"repo": single["repo"], "texts": texts, "roots": roots, "prefect_db": prefect_db,
            "found": find(texts, roots)}


def test_the_search_covers_every_store_and_many_erased_strings(searched):
    names = {root.name for root in searched["roots"]}
    assert {"mlflow.db", "mlartifacts", "reports", "blur-process.log", searched["prefect_db"].name} <= names
    assert len(searched["texts"]) >= 40


def test_the_search_finds_the_erased_text_where_it_legitimately_is(searched):
    """The rejected request with its reason; the batch's prepared forget set was removed once
    its candidate was promoted (registry.retention: delete)."""
    rejected = searched["repo"] / "data" / "requests" / "rejected"
    assert set(misspelt_request()["subjects"]) <= {text for _, text in find(searched["texts"], [rejected])}
    assert not (batch_dir(searched["repo"]) / "data").exists()
    assert len(searched["texts"]) >= 40


def test_the_stores_record_request_ids_and_hashes(searched):
    where = {Path(place.split(" (")[0]).name for place, _ in find({"req-alpha", "req-beta"}, searched["roots"])}
    assert {"mlflow.db", searched["prefect_db"].name, "requests.json", "run_report.md"} <= where


def test_no_erased_text_in_mlflow_prefect_logs_or_reports(searched):
    assert searched["found"] == []


# --------------------------------------------------------------------------- inbox file names


@pytest.fixture(scope="module")
def named_inbox_run(tmp_path_factory, prefect_server, tiny_model_dir):
    """Inbox files named after people, all refused (one unreadable, one a link, one naming a
    subject nobody has), through one flow run."""
    from flows.pipeline import process_requests
    from pipeline_repo import make_pipeline_repo

    repo = make_pipeline_repo(tmp_path_factory.mktemp("names") / "repo", {
        "model.base": str(tiny_model_dir), "flow.retries": 0, "flow.concurrency_limit": "blur-test-names"})
    inbox = repo / "data" / "requests" / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    (inbox / "jane-doe-unreadable.json").write_bytes(b'{"request_id": "req-jane", ')
    (inbox / "mary-major-unknown.json").write_text(json.dumps(
        {"request_id": "req-mary", "received_at": "2026-11-28T09:00:00Z", "subjects": ["Nobody Known"]}))
    (inbox / "john-roe-link.json").symlink_to(repo / "params.yaml")
    summary = process_requests(root=str(repo))
    return {"repo": repo, "summary": summary}


def test_inbox_file_names_never_reach_prefect(named_inbox_run):
    summary = named_inbox_run["summary"]
    assert len(summary["rejected"]) == 3 and "req-mary" in summary["rejected"]
    names = {"jane-doe-unreadable", "mary-major-unknown", "john-roe-link"}
    assert not [name for name in names if name in json.dumps(summary)]
    prefect_db = _prefect_database()
    assert find(names, sorted(prefect_db.parent.glob(prefect_db.name + "*"))) == []
    rejected = named_inbox_run["repo"] / "data" / "requests" / "rejected"
    assert {p.name for p in rejected.glob("*.reason.txt")} == {f"{name}.json.reason.txt" for name in names}
    assert (rejected / "john-roe-link.json").is_symlink()


# --------------------------------------------------------------------------- record ids leave keyed


def _unkeyed_ids(repo: Path) -> set[str]:
    """What a person's guess could be checked against, computed without the deployment's key: each erased
    record's id, each request's ids digest (what a certificate held before format 2), the batch's forget
    digest, the erased subject's hash (Great Expectations' ``subject_hash``), and each processed request
    file's sha256 and DVC md5 and the request's content hash (what certificates and MLflow held before
    format 3: whoever can reproduce a request file could compute them)."""
    from components.data.records import content_hash
    from components.data.requests import read_request
    from components.data.versioning import file_md5
    from components.erasure.certificates import file_sha256, ids_digest

    processed = repo / "data" / "requests" / "processed"
    notes = [json.loads(p.read_text()) for p in processed.glob("*.result.json")]
    ids = {record_id for note in notes for record_id in note["forget_ids"]}
    files = [p for p in processed.glob("*.json") if not p.name.endswith(".result.json")]
    assert files, "the processed request files are there to hash"
    hashes = {h for p in files for h in (file_sha256(p), file_md5(p), read_request(p).fingerprint())}
    return ids | {ids_digest(note["forget_ids"]) for note in notes} | {ids_digest(ids), content_hash(forgotten_subject())} | hashes


def test_record_ids_and_their_digests_leave_the_machine_only_keyed(reference_run):
    """Issue 21, privacy: what leaves the machine (MLflow's database and artifacts, certificates included;
    the Prefect database, which a Prefect server holds elsewhere) names erased records only by ids keyed
    with the deployment's secret. The local per-item reports and Data Docs keep the plain ids (they stay on
    the machine, git-ignored, never logged; docs/guarantees.md says why)."""
    repo = reference_run["repo"]
    unkeyed = _unkeyed_ids(repo)
    assert len(unkeyed) >= 10
    prefect_db = _prefect_database()
    leaving = [root for root in (repo / "mlflow.db", repo / "mlartifacts") if root.exists()]
    leaving += sorted(prefect_db.parent.glob(prefect_db.name + "*"))
    assert {root.name for root in leaving} >= {"mlflow.db", "mlartifacts"}
    found = find(unkeyed, leaving)
    assert found == [], found
    local = [batch / "reports" / "per_item" for batch in sorted((repo / "runs").glob("batch-*"))]
    assert find(unkeyed, local), "the local per-item reports keep the plain ids (the search would find them)"
