"""Which requests are erased, read from sources that survive a lost note.

A request counts as erased once it has a certificate in ``data/certificates`` or once the
registry says its erasure was made: a ``certificate.<request_id>`` tag on a passed run (the
run keeps it when retention deletes the version), or the ``requests`` tag of the version the
serving alias points to (the alias moved, certificates not yet issued). The result notes in
``processed/`` are a third source, but the only one that says which records a request
erased; when a note is missing, the records are recovered by resolving the request's own
bytes against the world again, and checked against its certificate's ids digest.

Nothing here forgets an erasure: a source that cannot be read fails closed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Collection

from pydantic import BaseModel, ConfigDict

from components.artifacts import ArtifactError, Certificate
from components.paths import Paths

if TYPE_CHECKING:
    from components.config import Config
    from components.data.inbox import Inbox

CERTIFICATE_TAG = "certificate."
REQUESTS_TAG = "requests"


class CertifiedRequest(BaseModel):
    """What a certificate file says about one erased request (ids and hashes; None if unreadable)."""

    model_config = ConfigDict(frozen=True)

    request_id: str
    readable: bool = True
    format: str | None = None  # 2 keys its ids digest, 3 its file hashes too (certificates.certified_*)
    content_sha256: str | None = None  # the request file's sha256 as the certificate holds it (keyed in format 3)
    ids_digest: str | None = None
    n_records: int | None = None
    batch_id: str | None = None
    model_name: str | None = None
    model_version: str | None = None
    run_id: str | None = None
    certificate_hash: str | None = None
    erased_forget_prob: float | None = None  # the unlearned forget_prob its certificate recorded (its own records)


def certified_requests(root: str | Path) -> dict[str, CertifiedRequest]:
    """Every request with a certificate file, by request id. An unreadable certificate counts
    as erased under its file name's id (fail closed: it was issued, so its request was erased)."""
    found: dict[str, CertifiedRequest] = {}
    for path in Paths(Path(root)).certificate_files():
        certificate = _read_certificate(path)
        found[certificate.request_id] = certificate
    return found


def _read_certificate(path: Path) -> CertifiedRequest:
    """One certificate file as :class:`CertifiedRequest` (its stem and readable=False when it does not
    load as a :class:`~components.artifacts.Certificate`; :func:`~components.erasure.certificates.verify_chain`
    names what is wrong with it)."""
    try:
        certificate = Certificate.load(path)
    except (OSError, ArtifactError):
        return CertifiedRequest(request_id=path.stem, readable=False)
    request, forget, model = certificate.request, certificate.forget_set, certificate.model
    return CertifiedRequest(
        request_id=request.request_id, format=certificate.format, content_sha256=request.content_sha256, ids_digest=forget.ids_digest,
        n_records=forget.n_records, batch_id=forget.batch_id, model_name=model.name, model_version=model.version,
        run_id=model.run_id, certificate_hash=certificate.certificate_hash,
        erased_forget_prob=_erased_level(certificate))


def _erased_level(certificate: Certificate) -> float | None:
    """The forget_prob the request was erased to: of its own records where the certificate recorded it,
    else (a certificate issued before that) of its batch's whole forget set."""
    evidence = certificate.evidence
    if evidence.request_forget_prob is not None:
        return evidence.request_forget_prob
    return evidence.metrics.get("forget_prob", {}).get("unlearned")


def registry_erasures(root: str | Path) -> dict[str, str]:
    """Request ids the MLflow registry holds as erased, with where it says so (for messages).

    Reads the ``certificate.<id>`` tags of every run and the ``requests`` tag of every version
    an alias points to. An embedded SQLite store that does not exist yet holds nothing; a store
    that exists but cannot be read raises (:class:`~components.registry.TrackingUnavailableError`).
    """
    from components.registry import connect, tracking_store

    store = tracking_store(root)
    if not store.exists():
        return {}
    client = connect(store)
    found: dict[str, str] = {}
    experiments = [e.experiment_id for e in client.search_experiments()]
    for run in all_runs(client, experiments):
        for key in run.data.tags:
            if key.startswith(CERTIFICATE_TAG):
                found.setdefault(key[len(CERTIFICATE_TAG):], f"tag {key} of MLflow run {run.info.run_id}")
    for model in client.search_registered_models():
        for alias, version in (client.get_registered_model(model.name).aliases or {}).items():
            tags = client.get_model_version(model.name, str(version)).tags
            for request_id in filter(None, (tags.get(REQUESTS_TAG) or "").split(",")):
                found.setdefault(request_id, f"{model.name} version {version} (alias '{alias}')")
    return found


def all_runs(client, experiments: list[str]) -> list:
    """Every run of ``experiments``, page by page (deleted runs included: their tags still count)."""
    from mlflow.entities import ViewType

    runs, token = [], None
    while experiments:
        page = client.search_runs(experiments, run_view_type=ViewType.ALL, max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            break
    return runs


class LedgerError(RuntimeError):
    """An erased request's records cannot be determined; the message says which and what to restore."""


def erased_forget_ids(config: "Config", repo: Paths, inbox: "Inbox", *,
                      registry: Collection[str] | None = None) -> dict[str, list[str]]:
    """The record ids of every erased request, by request id: what no retain set may hold.

    The notes in ``processed/`` first; every request erased by its certificate or by the
    registry (``registry``: ids from :func:`registry_erasures`, read here when None) but
    without a note is recovered from its request file (resolved against the world, checked
    against the certificate's ids digest). Raises :class:`LedgerError` (fail closed) when a
    request's file is gone or its records do not match its certificate.
    """
    registry = registry_erasures(repo.root) if registry is None else registry
    missing = inbox.erased_without_note(registry)
    recovered = {request_id: _recover(config, repo, request_id, source) for request_id, source in missing.items()}
    return inbox.earlier(recovered=recovered)


def _recover(config: "Config", repo: Paths, request_id: str, source: Path | None) -> list[str]:
    """The record ids an erased request without a note names, from its request file."""
    from components.data.requests import RequestError, read_request, resolve_request
    from components.data.world import load_world
    from components.context import run_context

    what = (f"request '{request_id}' was erased (it has a certificate or a registry tag) but its result note "
            "in data/requests/processed/ is missing")
    if source is None:
        raise LedgerError(f"{what}, and so is its request file: restore the note or the file "
                          "(git or `dvc checkout`) before processing more requests")
    config = run_context(config, repo).config
    try:
        request = read_request(source)
        world = load_world(config.world, config.seed, repo.root)
        forget_ids = [record.record_id for record in resolve_request(request, world.records).forget]
    except RequestError:
        raise LedgerError(f"{what}, and its request file no longer resolves against the world: restore the "
                          "note (git or `dvc checkout`) before processing more requests") from None
    certificate = certified_requests(repo.root).get(request_id)
    if certificate is not None and certificate.readable and certificate.ids_digest != _digest(repo, certificate,
                                                                                              forget_ids, what):
        raise LedgerError(f"{what}, and its request file resolves to other records than its certificate names: "
                          "restore the note (git or `dvc checkout`) before processing more requests")
    return forget_ids


def _digest(repo: Paths, certificate: CertifiedRequest, forget_ids: list[str], what: str) -> str:
    """The ids digest ``certificate`` would hold for ``forget_ids`` (keyed from format 2, with the key as it
    is: never a new one); :class:`LedgerError` when the key it needs is gone."""
    from components.erasure.certificates import FORMAT_1, certified_ids_digest

    key = _stored_key(repo, certificate.format != FORMAT_1, f"{what}, and its certificate's ids digest",
                      "or the note (git or `dvc checkout`), ")
    return certified_ids_digest(certificate.format or FORMAT_1, forget_ids, key)


def same_request_file(repo: Paths, certificate: CertifiedRequest, path: Path) -> bool:
    """Whether ``path`` holds the bytes ``certificate`` certified (its ``request.content_sha256``: plain in
    formats 1 and 2, keyed in format 3, checked with the key as it is: never a new one). :class:`LedgerError`
    (fail closed) when the key it needs is gone: a file that cannot be matched is neither settled as erased
    nor processed again."""
    from components.erasure.certificates import FORMAT, FORMAT_1, certified_file_hash, file_sha256

    key = _stored_key(repo, certificate.format == FORMAT,
                      f"request '{certificate.request_id}' waits in the inbox with a deletion certificate, whose "
                      "request file hash", "")
    return certificate.content_sha256 == certified_file_hash(certificate.format or FORMAT_1, file_sha256(path), key)


def _stored_key(repo: Paths, needed: bool, what: str, or_restore: str) -> bytes | None:
    """The deployment's record-id secret as it is (never created here: a new key matches nothing);
    :class:`LedgerError` naming it when ``needed`` and it is gone."""
    from components.erasure.safe import stored_record_id_key

    key = stored_record_id_key(repo)
    if key is None and needed:
        raise LedgerError(f"{what} is keyed by the deployment's secret ({repo.record_id_key.relative_to(repo.root)}), "
                          f"which is missing: restore the key from its backup, {or_restore}before processing more "
                          "requests")
    return key
