"""Multi-process training under ``torchrun``: process group, per-rank batch order, small collectives.

Launch: ``torchrun --nproc_per_node N -m retina_deploy.cli train ...`` (multi-node: add ``--nnodes``,
``--node_rank``, ``--rdzv_endpoint``). torchrun sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; without
them (or with ``WORLD_SIZE=1``) everything here is a no-op. The batch size is per process: the
effective batch is ``batch_size * WORLD_SIZE``.

The batch order of an epoch is a pure function of ``(seed, epoch)``: every rank computes the same
permutation and takes its own slice, so no sampler state needs saving and a resumed run can skip the
batches it already did.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as torch_dist

from retina_deploy.core.errors import ConfigError, RetinaDeployError

T = TypeVar("T")
# Rank 0 validates alone while the others wait at a collective; validation of a large set can take long.
PROCESS_GROUP_TIMEOUT = timedelta(hours=1)


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job: rank in [0, world_size), local_rank = GPU index on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def dist_info_from_env() -> DistInfo:
    """Read torchrun's ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK`` (absent: a single process)."""
    values = {}
    for name, default in (("WORLD_SIZE", 1), ("RANK", 0), ("LOCAL_RANK", 0)):
        raw = os.environ.get(name)
        try:
            values[name] = default if raw is None else int(raw)
        except ValueError as e:
            raise ConfigError(f"environment variable {name}={raw!r} is not an integer") from e
    info = DistInfo(rank=values["RANK"], world_size=values["WORLD_SIZE"], local_rank=values["LOCAL_RANK"])
    if info.world_size < 1 or not 0 <= info.rank < info.world_size or info.local_rank < 0:
        raise ConfigError(f"inconsistent torchrun environment: RANK={info.rank}, WORLD_SIZE={info.world_size}")
    return info


def init_process_group(info: DistInfo, device: torch.device) -> None:
    """Join the job's process group (NCCL on CUDA, gloo on CPU); nothing when not distributed."""
    if not info.is_distributed or torch_dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    torch_dist.init_process_group(backend=backend, timeout=PROCESS_GROUP_TIMEOUT, **kwargs)


def destroy_process_group(info: DistInfo) -> None:
    if info.is_distributed and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.is_distributed:
        torch_dist.barrier()


def all_reduce_(tensor: torch.Tensor, info: DistInfo, op: str = "mean") -> torch.Tensor:
    """Reduce ``tensor`` in place across ranks ("mean" or "max"); unchanged when not distributed."""
    if info.is_distributed:
        torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.MAX if op == "max" else torch_dist.ReduceOp.SUM)
        if op == "mean":
            tensor /= info.world_size
    return tensor


def run_on_main(info: DistInfo, fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only; every rank gets its return value, or raises its RetinaDeployError.

    Used for checks and writes of the run folder, so that a bad ``--out`` fails on all ranks with
    the same message instead of leaving the other ranks waiting at the next collective.
    """
    if not info.is_distributed:
        return fn()
    payload: list[object] = [None]
    if info.is_main:
        try:
            payload[0] = ("ok", fn())
        except RetinaDeployError as e:
            payload[0] = ("error", type(e).__name__, str(e))
            torch_dist.broadcast_object_list(payload, src=0)
            raise
    torch_dist.broadcast_object_list(payload, src=0)
    status = payload[0]
    if status[0] == "error":
        import retina_deploy.core.errors as errors

        raise getattr(errors, status[1], ConfigError)(f"(rank 0) {status[2]}")
    return status[1]


def iters_per_epoch(num_items: int, batch_size: int, world_size: int = 1) -> int:
    """Batches per rank per epoch: ceil(num_items / (batch_size * world_size)); the last ones wrap around."""
    return math.ceil(num_items / (batch_size * world_size))


def epoch_batches(
    num_items: int, *, batch_size: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1
) -> list[list[int]]:
    """Dataset indices of every batch rank ``rank`` trains on in ``epoch``: [iters_per_epoch][batch_size].

    A permutation drawn from (seed, epoch) is repeated to fill ``iters_per_epoch * batch_size *
    world_size`` slots, so every batch is full and every rank has as many batches (DDP needs both);
    the few repeated images are the permutation's first ones. Global batch j holds slots
    [j * B * W, (j + 1) * B * W); rank r takes its r-th block of B, so ranks' shards are disjoint
    apart from the wrap-around.
    """
    if num_items < 1:
        raise ConfigError(f"cannot draw batches from {num_items} items")
    steps = iters_per_epoch(num_items, batch_size, world_size)
    order = np.random.default_rng([seed, epoch, 0xBA7C]).permutation(num_items)
    slots = np.resize(order, steps * batch_size * world_size).reshape(steps, world_size, batch_size)
    return slots[:, rank, :].tolist()


class BatchList(torch.utils.data.Sampler[list[int]]):
    """A DataLoader ``batch_sampler`` over a precomputed list of batches (see ``epoch_batches``)."""

    def __init__(self, batches: list[list[int]]) -> None:
        self.batches = batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)
