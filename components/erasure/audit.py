"""The audit behind ``blur certificate --verify``: the local chain checked against the other records.

The certificate chain in ``data/certificates`` can be deleted or shortened as a whole, and a
chain that is consistent with itself proves nothing then ("intact: 0 certificates"). So every
erasure is looked up in three places that must agree:

* the chain itself (:func:`~components.erasure.certificates.verify_chain`);
* the processed results (``data/requests/processed/*.result.json``): each needs its certificate;
* the registry: each ``certificate.<request_id>`` tag on an MLflow run needs a local certificate
  with the same hash, and each certificate's model version must be in the registry, or be
  recorded on its run as purged by retention (``erasure_purged``).

A problem anywhere fails the audit; :class:`AuditReport` is what ``--json`` prints.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from components.paths import Paths

CERTIFICATE_TAG = "certificate."


class RequestAudit(BaseModel):
    """What each record says about one erased request."""

    request_id: str
    certificate: bool = Field(description="a certificate file in data/certificates")
    result: bool = Field(description="a result file in data/requests/processed")
    registry_tag: bool = Field(description="a certificate.<request_id> tag on an MLflow run")
    model_version: str | None = None
    version_in_registry: bool | None = Field(default=None, description="None: the registry was not checked")


class AuditReport(BaseModel):
    """The audit's outcome: ``intact`` iff ``problems`` is empty."""

    intact: bool
    certificates: int
    head: str
    registry_checked: bool
    problems: list[str]
    requests: list[RequestAudit]


class _RegistryView(BaseModel):
    """The registry's side: certificate tags by request id, and the versions that exist or were purged."""

    tags: dict[str, dict[str, str]] = {}  # request id -> run id -> certificate hash
    versions: set[tuple[str, str]] = set()  # (model name, version) registered now
    purged: set[tuple[str, str]] = set()  # (run id, version) that retention recorded as purged


def audit(root: str | Path, *, registry: bool = True) -> AuditReport:
    """Check the chain at ``root`` against the processed results and (``registry``) MLflow."""
    from components.data.inbox import Inbox
    from components.erasure.certificates import CertificateError, chain_head
    from components.erasure.ledger import certified_requests

    paths = Paths(Path(root))
    problems = _chain_problems(paths)
    certified = certified_requests(paths.root)
    results = {r.request_id for r in Inbox(paths).processed_results()} if paths.processed.is_dir() else set()
    view = _registry_view(paths.root) if registry else None
    if view is None and registry and (certified or results):
        problems.append("the MLflow registry holds no store at this root: the certificates cannot be checked "
                        "against it (run with --local-only to check the chain alone)")
    rows = []
    for request_id in sorted(set(certified) | results | set(view.tags if view else ())):
        row, found = _audit_request(request_id, certified.get(request_id), request_id in results, view)
        rows.append(row)
        problems += found
    try:
        head = chain_head(paths.root).certificate_hash
    except CertificateError:  # verify_chain named the unreadable head
        head = None
    return AuditReport(intact=not problems, certificates=len(certified), head=str(head),
                       registry_checked=view is not None, problems=problems, requests=rows)


def _chain_problems(paths: Paths) -> list[str]:
    from components.erasure.certificates import verify_chain

    return verify_chain(paths.root)


def _audit_request(request_id: str, certificate, has_result: bool,
                   view: _RegistryView | None) -> tuple[RequestAudit, list[str]]:
    """One request's row and its problems."""
    problems = []
    tags = view.tags.get(request_id, {}) if view else {}
    row = RequestAudit(request_id=request_id, certificate=certificate is not None, result=has_result,
                       registry_tag=bool(tags), model_version=certificate.model_version if certificate else None)
    if certificate is None:
        where = " and ".join(w for w, found in (("a processed result", has_result), ("an MLflow tag", bool(tags)))
                             if found)
        problems.append(f"{request_id}: {where} but no certificate in data/certificates "
                        "(the chain was deleted or shortened)")
        return row, problems
    if view is None:
        return row, problems
    if not certificate.readable:
        return row, problems  # verify_chain names the unreadable file
    digest = certificate.certificate_hash
    if not tags:
        problems.append(f"{request_id}: certificate has no certificate.{request_id} tag in MLflow "
                        "(it was not logged, or was issued by hand)")
    elif digest not in tags.values():
        problems.append(f"{request_id}: certificate hash differs from the certificate.{request_id} tag in MLflow "
                        "(the certificate was edited or replaced)")
    key = (str(certificate.model_name), str(certificate.model_version))
    in_registry = key in view.versions
    purged = (str(certificate.run_id), str(certificate.model_version)) in view.purged
    row = row.model_copy(update={"version_in_registry": in_registry})
    if not in_registry and not purged:
        problems.append(f"{request_id}: certifies {key[0]} version {key[1]}, which is not in the registry "
                        "and was not purged by retention")
    return row, problems


def _registry_view(root: Path) -> _RegistryView | None:
    """The registry's certificate tags, versions and purge records; None when there is no store."""
    from components.erasure.ledger import all_runs
    from components.registry import connect, tracking_store
    from components.registry.retention import PURGED_TAG

    store = tracking_store(root)
    if not store.exists():
        return None
    client = connect(store)
    view = _RegistryView()
    for run in all_runs(client, [e.experiment_id for e in client.search_experiments()]):
        tags = run.data.tags
        for key, value in tags.items():
            if key.startswith(CERTIFICATE_TAG):
                view.tags.setdefault(key[len(CERTIFICATE_TAG):], {})[run.info.run_id] = value
        purged = tags.get(PURGED_TAG, "")
        if " version " in purged:
            view.purged.add((run.info.run_id, purged.rsplit(" version ", 1)[1]))
    for model in client.search_registered_models():
        for version in client.search_model_versions(f"name='{model.name}'"):
            view.versions.add((model.name, str(version.version)))
    return view
