"""MLflow tracking, the promotion gate and the model registry (the ``register`` stage).

- :mod:`.gate`: :func:`evaluate_gate`, a pure function of the metrics and the thresholds.
- :mod:`.coverage`: the registry's own check that a candidate forgot every processed request.
- :mod:`.tracking`: where the store is (:func:`tracking_store`), reaching it, logging a run.
- :mod:`.promotion`: :func:`register_candidate` (the whole step, resumable per batch) and
  :func:`champion`.

MLflow is imported only when a function that needs it runs.
"""

from components.registry.gate import GateCheck, GateDecision, evaluate_gate
from components.registry.promotion import (
    AliasMovedError,
    Candidate,
    Champion,
    champion,
    champion_version,
    register_candidate,
)
from components.registry.tracking import (
    RegistryError,
    TrackingStore,
    TrackingUnavailableError,
    connect,
    tracking_store,
)

__all__ = [
    "AliasMovedError",
    "Candidate",
    "Champion",
    "GateCheck",
    "GateDecision",
    "RegistryError",
    "TrackingStore",
    "TrackingUnavailableError",
    "champion",
    "champion_version",
    "connect",
    "evaluate_gate",
    "register_candidate",
    "tracking_store",
]
