"""Several processes, one run: joining the process group, DDP or FSDP2, and sharded state.

``torchrun`` starts one process per device; :func:`init_distributed` joins them. The loss
model is then wrapped by ``unlearn.distributed``:

- ``ddp``: ``DistributedDataParallel``; gradients are all-reduced, so every rank holds the
  whole gradient and BLUR's scalars are already global;
- ``fsdp``: FSDP2 (``torch.distributed.fsdp.fully_shard``) on every decoder layer and the
  root; gradients are reduce-scattered into ``DTensor`` shards, BLUR's scalars are summed
  over the shards of all ranks in one all-reduce (see :class:`components.unlearning.loop.Ranks`).

Checkpoints under FSDP hold *full* tensors (a choice over ``torch.distributed.checkpoint``'s
sharded files: one format for every run, readable without the process group): each sharded
weight and optimizer state is gathered (``DTensor.full_tensor``, one tensor at a time, kept
on rank 0's host) and written by rank 0 in the one-file format of a single-process run; on
resume every rank reads the file and keeps its own shard (``distribute_tensor`` without
communication), so the file must be on a file system all ranks see. The same gathering
gives rank 0 the plain model at the end. Rank 0 needs host memory for the whole model.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.distributed as dist

from components.config import UnlearnConfig
from components.unlearning.loop import Ranks
from components.unlearning.modules import decoder_layers


def init_distributed() -> tuple[int, str]:
    """Join the process group when launched by ``torchrun`` (one process per device); ``(rank, device)``."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if device != "cpu":
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if device != "cpu" else "gloo")
    return (dist.get_rank() if dist.is_initialized() else 0), device


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes (``0, 1`` outside ``torchrun``)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def sum_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """All-reduce (sum) ``tensor`` in place and return it."""
    dist.all_reduce(tensor)
    return tensor


def wrap(loss_model: torch.nn.Module, config: UnlearnConfig, device: torch.device,
         world_size: int) -> tuple[torch.nn.Module, Ranks]:
    """The module the losses call and how the ranks share a step (``unlearn.distributed``)."""
    if world_size == 1:
        return loss_model, Ranks()
    if config.distributed == "fsdp":
        return _fully_shard(loss_model, device, world_size)
    module = torch.nn.parallel.DistributedDataParallel(
        loss_model,
        device_ids=[device.index] if device.type == "cuda" else None,
        broadcast_buffers=False,
        gradient_as_bucket_view=True,
        find_unused_parameters=config.forget_loss == "rmu",  # RMU's loss uses the layers up to one
    )
    return module, Ranks(world_size=world_size, no_sync=module.no_sync, all_reduce=sum_over_ranks)


def _fully_shard(loss_model: torch.nn.Module, device: torch.device,
                 world_size: int) -> tuple[torch.nn.Module, Ranks]:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (world_size,))
    for layer in decoder_layers(loss_model.model):
        fully_shard(layer, mesh=mesh)
    fully_shard(loss_model, mesh=mesh)

    @contextmanager
    def no_sync() -> Iterator[None]:
        loss_model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            loss_model.set_requires_gradient_sync(True)

    return loss_model, Ranks(world_size=world_size, no_sync=no_sync, all_reduce=sum_over_ranks, sharded=True)


def is_sharded(tensor: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def full(tensor: torch.Tensor, keep: bool = True) -> torch.Tensor | None:
    """The whole tensor: itself if it is not a shard; else gathered from all ranks (a collective)
    and, where ``keep`` (rank 0), copied to the host - elsewhere dropped at once (``None``), so no
    rank holds more than one whole tensor at a time on the device."""
    if not is_sharded(tensor):
        return tensor
    whole = tensor.full_tensor()
    return whole.cpu() if keep else None


def full_optimizer_state(optimizer: torch.optim.Optimizer, keep: bool = True) -> dict:
    """``optimizer.state_dict()`` with every sharded state tensor gathered (a collective); see :func:`full`."""
    state = optimizer.state_dict()
    state["state"] = {index: {key: full(value, keep) if isinstance(value, torch.Tensor) else value
                              for key, value in entry.items()}
                      for index, entry in state["state"].items()}
    return state


def shard_like(value: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a full ``value`` laid out like ``param`` (no communication)."""
    if not is_sharded(param) or value.shape != param.shape:
        return value
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(value.to(param.device), param.device_mesh, param.placements, src_data_rank=None)


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of a tensor (its shard under FSDP, sharing the storage; else the tensor)."""
    return tensor.to_local() if is_sharded(tensor) else tensor


def copy_locals(destinations: list[torch.Tensor], sources: list[torch.Tensor]) -> None:
    """Copy each source into its destination, shard by shard (no communication)."""
    with torch.no_grad():
        for destination, source in zip(destinations, sources, strict=True):
            local(destination).copy_(local(source))


def load_weights(params: list[torch.Tensor], weights: list[torch.Tensor]) -> None:
    """Copy full ``weights`` into (possibly sharded) ``params``."""
    copy_locals(params, [shard_like(value, param) for param, value in zip(params, weights, strict=True)])


def load_full_state(params: list[torch.Tensor], weights: list[torch.Tensor], optimizer: torch.optim.Optimizer,
                    optimizer_state: dict) -> None:
    """Copy full ``weights`` into (possibly sharded) ``params`` and load the optimizer state alike."""
    load_weights(params, weights)
    optimizer_state["state"] = {index: {key: shard_like(value, params[index]) if isinstance(value, torch.Tensor)
                                        else value for key, value in entry.items()}
                                for index, entry in optimizer_state["state"].items()}
    optimizer.load_state_dict(optimizer_state)
