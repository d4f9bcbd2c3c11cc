"""The registry's own check: a candidate may serve only if it forgot every processed request.

The flow unlearns each batch from the model that serves, with every earlier request's
records out of the retain set, and the gate re-measures those requests; a reproduction
(``dvc repro``: register called without a batch id) starts from the target model and
unlearns only the request in ``params.yaml``. If requests were processed since, promoting
it would put their records back into the served model. :func:`coverage_check` turns that
into a gate check that fails unless every processed request's records are in the
candidate's forget set.
"""

from __future__ import annotations

from typing import Collection, Mapping

from components.artifacts import GateCheck, Resolution

METRIC = "uncovered_processed_requests"
SETTING = "registry.processed_requests"  # not a params.yaml key: the registry's own check
MAX_NAMED = 20


def uncovered_requests(resolution: Resolution | None, processed: Mapping[str, Collection[str]],
                       *, reproduction: bool) -> list[str]:
    """Ids of processed requests the candidate did not forget, sorted.

    ``resolution`` is the candidate's batch; ``processed`` maps every processed request id to the
    record ids it erased (``Inbox.earlier()``). A request is covered when all its records are in the
    candidate's forget set; in a batch of the flow also when the batch resolved it (``request_ids``)
    or re-checked it (``earlier_requests``).
    """
    forgotten = set(resolution.forget_ids) if resolution else set()
    resolved = set() if reproduction or resolution is None else set(resolution.request_ids) | set(
        resolution.earlier_requests)
    return sorted(request_id for request_id, record_ids in processed.items()
                  if request_id not in resolved and not set(record_ids) <= forgotten)


def _check(value: float | None, passed: bool, reason: str | None) -> GateCheck:
    return GateCheck(metric=METRIC, op="<=", threshold=0.0, value=value, passed=passed, setting=SETTING, reason=reason)


def coverage_check(resolution: Resolution | None, processed: Mapping[str, Collection[str]] | None,
                   *, reproduction: bool) -> GateCheck | None:
    """The check, or None when there is nothing to decide (a flow batch given no ``processed``).

    A reproduction given no ``processed`` fails closed: it cannot show that it covers them.
    """
    if processed is None:
        if not reproduction:
            return None
        reason = ("a reproduction (register without a batch id) may move the serving alias only when it "
                  "forgets every processed request, and the processed requests were not given: nothing promoted. "
                  "Pass them (the inbox's processed requests, Inbox.earlier()) or process requests with the flow")
        return _check(None, False, reason)
    missing = uncovered_requests(resolution, processed, reproduction=reproduction)
    if not missing:
        return _check(0.0, True, None)
    named = ", ".join(missing[:MAX_NAMED]) + (f" and {len(missing) - MAX_NAMED} more" if len(missing) > MAX_NAMED else "")
    if reproduction:
        where, fix = "this reproduction", ("process new requests with the flow (it starts from the champion), "
                                           "or include them in the reproduction's request")
    else:
        where, fix = "this batch", "resolve the batch with every processed request as an earlier request"
    reason = (f"{len(missing)} processed request(s) not forgotten by {where}: {named}. A model that never "
              f"forgot them must not serve: {fix}")
    return _check(float(len(missing)), False, reason)
