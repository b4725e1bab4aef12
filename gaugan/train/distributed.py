"""Data-parallel training over processes started by ``torchrun`` (DDP).

The paper trained on 8 GPUs with synchronised BatchNorm in SPADE (docs/SPADE.md section 1);
the official code used DataParallel and a vendored SyncBN. Here: one process per device,
``torch.distributed`` with NCCL on CUDA and gloo on CPU, torch's own ``SyncBatchNorm``,
and a sampler that splits every *global* batch over the ranks so that N processes see
exactly the batches one process would see with the same global batch size.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler

from gaugan.config import ConfigError
from gaugan.seeding import epoch_permutation


@dataclass(frozen=True)
class DistributedContext:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(requested: str, local_rank: int = 0, setting: str = "train.device") -> torch.device:
    """``auto`` -> CUDA when available; ``cuda`` without a GPU, or another name, is an error naming ``setting``."""
    if requested not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"{setting}: got {requested!r}, expected cpu, cuda or auto")
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{setting}: got 'cuda' but no CUDA device is available; use 'cpu' or 'auto'")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed(requested_device: str) -> DistributedContext:
    """Join the process group described by torchrun's environment (single process without it).

    torchrun sets RANK, LOCAL_RANK and WORLD_SIZE (and MASTER_ADDR/PORT); without them this
    is a plain one-process run and no process group is created.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(requested_device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(
            backend=backend, rank=rank, world_size=world_size, timeout=datetime.timedelta(minutes=30),
            device_id=device if device.type == "cuda" else None,
        )
    return DistributedContext(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def local_batch_size(global_batch_size: int, world_size: int) -> int:
    """train.batch_size is global; every rank takes an equal share."""
    if global_batch_size % world_size != 0:
        raise ConfigError(
            f"train.batch_size: the global batch size {global_batch_size} is not divisible by the "
            f"{world_size} processes; choose a multiple of {world_size}"
        )
    return global_batch_size // world_size


def check_sync_batchnorm(param_free_norm: str, context: DistributedContext) -> None:
    """SPADE's 'syncbatch' norm is torch.nn.SyncBatchNorm (built by gaugan.models): across
    processes torch synchronises it on GPUs only, so a multi-process CPU run must choose
    another norm instead of failing inside the first forward pass."""
    if param_free_norm == "syncbatch" and context.is_distributed and context.device.type != "cuda":
        raise ConfigError(
            "generator.param_free_norm: 'syncbatch' needs CUDA devices when training with several "
            f"processes (torch's SyncBatchNorm has no CPU implementation; this run has {context.world_size} "
            "CPU processes); use 'instance' (exact with any process count) or 'batch' (per-process statistics)"
        )


def wrap_ddp(module: nn.Module, context: DistributedContext) -> nn.Module:
    """DDP wrapper on multi-process runs; the module itself otherwise."""
    if not context.is_distributed:
        return module
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=device_ids)


def all_gather_objects(value: Any, context: DistributedContext) -> list[Any]:
    if not context.is_distributed:
        return [value]
    gathered: list[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def barrier(context: DistributedContext) -> None:
    if context.is_distributed:
        dist.barrier()


class GlobalBatchSampler(Sampler[int]):
    """Deterministic order of sample indices for one rank (use as ``make_loader``'s ``sampler``).

    The epoch's permutation is :func:`gaugan.seeding.epoch_permutation` of (seed, epoch),
    the data pipeline's one seeding scheme. Global batch ``b`` is
    ``perm[b*B:(b+1)*B]`` (B the global batch size; the incomplete last batch is dropped, as
    the official training loader does); rank r takes the r-th contiguous slice of it. So any
    number of processes trains on exactly the global batches one process would see.
    """

    def __init__(
        self, num_samples: int, global_batch_size: int, rank: int, world_size: int, seed: int, shuffle: bool = True
    ) -> None:
        self.num_samples = num_samples
        self.global_batch_size = global_batch_size
        self.local_batch_size = local_batch_size(global_batch_size, world_size)
        self.rank = rank
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    @property
    def batches_per_epoch(self) -> int:
        return self.num_samples // self.global_batch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.num_samples))
        return epoch_permutation(self.num_samples, self.seed, self.epoch)

    def __iter__(self) -> Iterator[int]:
        order = self.epoch_order()
        begin = self.rank * self.local_batch_size
        for batch in range(self.batches_per_epoch):
            start = batch * self.global_batch_size + begin
            yield from order[start:start + self.local_batch_size]

    def __len__(self) -> int:
        return self.batches_per_epoch * self.local_batch_size
