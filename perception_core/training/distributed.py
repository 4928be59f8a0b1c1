"""torchrun / DistributedDataParallel helpers.

`torchrun --nproc_per_node=N -m perception_core.cli train --config ...` sets RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT; `init_distributed` reads them and starts a process group:
gloo on CPU, nccl on GPU (one GPU per process). Without them everything runs as a single process
and the helpers below are no-ops. Only rank 0 logs and writes checkpoints.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data.distributed import DistributedSampler


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def default_device(local_rank: int = 0) -> torch.device:
    return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")


def init_distributed(device: str | None = None) -> DistInfo:
    """Joins the process group described by torchrun's environment variables, if any.

    device: "cpu", "cuda" or None (CUDA when available). Under DDP on CUDA each process uses the
    GPU of its LOCAL_RANK.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    if device is None:
        chosen = default_device(local_rank)
    elif device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' requested but CUDA is not available; use --device cpu")
        chosen = torch.device(f"cuda:{local_rank}")
    else:
        chosen = torch.device(device)
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if chosen.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size)
    return DistInfo(rank, world_size, local_rank, chosen)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def wrap_model(model: nn.Module, info: DistInfo, sync_batchnorm: bool = True) -> nn.Module:
    """DDP wrapper under torchrun (SyncBatchNorm on CUDA only: it has no CPU kernel); the model
    itself otherwise. find_unused_parameters: the text-to-image attention of the last pixel decoder
    block produces text tokens nothing reads, so its parameters get no gradient."""
    if not info.distributed:
        return model
    if sync_batchnorm and info.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=True)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def all_true(flag: bool, info: DistInfo) -> bool:
    """True only if `flag` is True on every rank (all ranks take the same branch)."""
    if not info.distributed:
        return flag
    tensor = torch.tensor([0.0 if flag else 1.0], device=info.device)
    dist.all_reduce(tensor)
    return tensor.item() == 0.0


def mean_over_ranks(values: dict[str, float], info: DistInfo) -> dict[str, float]:
    """Averages scalar metrics over ranks (for logging); same keys on every rank."""
    if not info.distributed or not values:
        return values
    keys = sorted(values)
    tensor = torch.tensor([float(values[key]) for key in keys], dtype=torch.float64, device=info.device)
    dist.all_reduce(tensor)
    return {key: value / info.world_size for key, value in zip(keys, tensor.tolist())}


class SeededDistributedSampler(DistributedSampler):
    """DistributedSampler (shuffled by (seed, epoch), sharded by rank, tail dropped) that yields
    `(index, (seed, epoch, index))`: the dataset seeds the sample's augmentation with that tuple.

    `set_epoch(epoch, skip_batches)` starts the epoch after `skip_batches * batch_size` samples of
    this rank, to resume mid-epoch exactly where a run stopped.
    """

    def __init__(self, dataset_length: int, info: DistInfo, seed: int, batch_size: int, shuffle: bool = True):
        super().__init__(range(dataset_length), num_replicas=info.world_size, rank=info.rank,
                         shuffle=shuffle, seed=seed, drop_last=True)
        self.batch_size = batch_size
        self.skip = 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        super().set_epoch(epoch)
        self.skip = skip_batches * self.batch_size

    def batches_per_epoch(self) -> int:
        return self.num_samples // self.batch_size

    def __iter__(self) -> Iterator[tuple[int, tuple[int, int, int]]]:
        for position, index in enumerate(super().__iter__()):
            if position >= self.skip:
                yield int(index), (self.seed, self.epoch, int(index))

    def __len__(self) -> int:
        return self.num_samples - self.skip
