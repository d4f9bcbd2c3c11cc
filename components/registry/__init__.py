"""MLflow tracking and the model registry (the ``register`` stage after the gate).

- :mod:`.tracking`: where the store is (:func:`tracking_store`), reaching it, logging a run.
- :mod:`.promotion`: :func:`register_candidate` (the whole step, resumable per batch) and
  :func:`champion`.
- :mod:`.retention`: which older versions are kept; :mod:`.serving`: the logged model's code.

MLflow is imported only when a function that needs it runs.
"""

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
    "RegistryError",
    "TrackingStore",
    "TrackingUnavailableError",
    "champion",
    "champion_version",
    "connect",
    "register_candidate",
    "tracking_store",
]
