"""Unlearning: forget losses, retain losses, combiners and the one training loop.

A method is three names from ``params.yaml``, looked up in three tables:
``unlearn.forget_loss`` in :data:`FORGET_LOSSES`, ``unlearn.retain_loss`` in
:data:`RETAIN_LOSSES` and ``unlearn.combiner`` in :data:`COMBINERS`.

``run`` (:func:`run_unlearning`: prepare data, build the model and its wrappers, train,
finish) sits over ``loop`` (:func:`train_bilevel`), ``combine``, ``losses``, ``batches``
(deterministic micro-batches), ``modules`` (the loss model, LoRA, the frozen references),
``optim``, ``checkpoint`` and ``distributed`` (torchrun, DDP, FSDP2).
"""

from components.unlearning.checkpoint import StaleCheckpointWarning
from components.unlearning.combine import COMBINERS, blur_combine
from components.unlearning.loop import UnlearningDivergedError, train_bilevel
from components.unlearning.losses import FORGET_LOSSES, RETAIN_LOSSES, LossContext
from components.unlearning.run import RunOutputs, UnlearnResult, run_unlearning

__all__ = [
    "COMBINERS",
    "FORGET_LOSSES",
    "RETAIN_LOSSES",
    "RunOutputs",
    "LossContext",
    "StaleCheckpointWarning",
    "UnlearnResult",
    "UnlearningDivergedError",
    "blur_combine",
    "run_unlearning",
    "train_bilevel",
]
