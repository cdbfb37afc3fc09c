"""Optional multi-process training (``torchrun``): world detection, samplers, DDP wrapping, reductions.

Nothing here starts a process group by itself: ``setup_from_env`` does so only when torchrun's variables (RANK,
WORLD_SIZE, LOCAL_RANK) are set, so the library, the tests and the UI run in one plain process. Library code asks
``current_world()``, which is "rank 0 of 1" unless a process group was initialised (by the CLI or by a caller).

Batch size convention: ``cfg.batch_size`` is the *global* batch; each of W processes loads ``batch_size / W``
images, so W processes take the same optimiser steps, with the same learning rates, as one.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterator, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, DistributedSampler, RandomSampler

from wilss.runtime import resolve_device

log = logging.getLogger(__name__)

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class World:
    """Where this process stands among the processes of one run (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    distributed: bool = False  # in a process group (torchrun), even one of a single process

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that prints, logs progress and writes files."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in TORCHRUN_VARS)


def current_world() -> World:
    """This process's place in the initialised process group, or ``World()`` when there is none."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(rank=dist.get_rank(), world_size=dist.get_world_size(),
                 local_rank=int(os.environ.get("LOCAL_RANK", dist.get_rank())), distributed=True)


def setup_from_env(device: str = "auto", *, timeout_min: float = 30.0) -> tuple[World, torch.device]:
    """Join torchrun's process group when launched by it (nccl on CUDA, gloo on CPU); else do nothing.

    ``device``: 'auto' or 'cuda' -> ``cuda:LOCAL_RANK`` under torchrun when CUDA is available, 'cpu' -> CPU.
    Returns the world and this process's device. Raises ValueError for a device that cannot be shared out.
    """
    if not launched_by_torchrun():
        return World(), resolve_device(device)
    local_rank = int(os.environ["LOCAL_RANK"])
    use_cuda = device in ("auto", "cuda") and torch.cuda.is_available()
    if device not in ("auto", "cuda", "cpu"):
        raise ValueError(f"--device {device} under torchrun: each process takes cuda:LOCAL_RANK; "
                         "use --device auto, cuda or cpu")
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=timedelta(minutes=timeout_min))
    world = current_world()
    log.info("process %d of %d (local rank %d), backend %s", world.rank, world.world_size, local_rank,
             dist.get_backend())
    return world, torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------------------ sampling
class ResumableRandomSampler(RandomSampler):
    """``RandomSampler`` (one process) that can restart part-way through an epoch.

    Draws exactly what ``DataLoader(shuffle=True, generator=g)`` draws, so results are unchanged. ``set_epoch``
    (called by ``run_loop`` before each epoch) records the generator state at the epoch start; ``resume_at``
    restores such a state and skips the samples already seen, without loading them.
    """

    def __init__(self, dataset: Dataset, *, generator: torch.Generator) -> None:
        super().__init__(dataset, generator=generator)
        self.epoch_state = generator.get_state()
        self._resume: Optional[tuple[int, torch.Tensor, int]] = None  # (epoch, generator state, samples to skip)
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        self._skip = 0
        if self._resume is not None and self._resume[0] == epoch:
            _, state, self._skip = self._resume
            self.generator.set_state(state)
        self.epoch_state = self.generator.get_state()

    def resume_at(self, epoch: int, *, skip: int, state: Optional[torch.Tensor] = None) -> None:
        self._resume = (epoch, state if state is not None else self.generator.get_state(), skip)

    def state(self, *, epoch_done: bool) -> dict:
        """What ``resume_at`` needs: the generator state at the start of this epoch, or of the next one."""
        return {"generator": self.generator.get_state() if epoch_done else self.epoch_state}

    def __iter__(self) -> Iterator[int]:
        # Drawn eagerly: RandomSampler draws one more (empty) permutation after its last index, which a lazy
        # iterator would postpone past the epoch-end snapshot; the draws themselves are the same.
        return iter(list(super().__iter__())[self._skip:])


class ResumableDistributedSampler(DistributedSampler):
    """``DistributedSampler`` (shuffled by seed + epoch) that can skip the samples of a part-done epoch."""

    def __init__(self, dataset: Dataset, *, world: World, seed: int) -> None:
        super().__init__(dataset, num_replicas=world.world_size, rank=world.rank, shuffle=True, seed=seed)
        self._resume: Optional[tuple[int, int]] = None
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self._skip = self._resume[1] if self._resume is not None and self._resume[0] == epoch else 0

    def resume_at(self, epoch: int, *, skip: int, state: Optional[torch.Tensor] = None) -> None:
        self._resume = (epoch, skip)

    def state(self, *, epoch_done: bool) -> dict:
        return {}  # the order follows from seed and epoch alone

    def __iter__(self) -> Iterator[int]:
        return iter(list(super().__iter__())[self._skip:])


def per_process_batch(batch_size: int, world: World) -> int:
    if batch_size % world.world_size:
        raise ValueError(f"the batch size {batch_size} is the global batch of all {world.world_size} processes: "
                         f"give a multiple of {world.world_size} (--batch-size)")
    return batch_size // world.world_size


# ------------------------------------------------------------------------------------------------ training
def wrap_for_training(module: nn.Module, *, world: World, device: torch.device, sync_bn: bool = False,
                      find_unused_parameters: bool = False) -> nn.Module:
    """``module`` itself in one process; else DistributedDataParallel over it, so gradients are averaged.

    ``sync_bn``: batch-norm statistics over the global batch (CUDA only: SyncBatchNorm has no CPU kernel).
    ``find_unused_parameters``: some parameters get no gradient in some iterations (WILSON's warm-up).
    """
    if world.world_size == 1:
        if sync_bn:
            log.warning("--sync-bn has no effect in a single process")
        return module
    if sync_bn:
        if device.type != "cuda":
            raise ValueError("--sync-bn needs CUDA GPUs (SyncBatchNorm has no CPU implementation)")
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)  # same Parameter objects, new BN modules
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids, output_device=device.index if ids else None,
                                               find_unused_parameters=find_unused_parameters)


def reduce_mean(values: dict[str, float], *, any_flag: bool = False) -> tuple[dict[str, float], bool]:
    """Means of ``values`` over all processes (the same keys everywhere), and whether any process set
    ``any_flag``. One small all-reduce; identity in a single process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values, any_flag
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    packed = torch.tensor([*values.values(), float(any_flag)], dtype=torch.float64, device=device)
    dist.all_reduce(packed)
    means = (packed[:-1] / dist.get_world_size()).tolist()
    return dict(zip(values, means)), bool(packed[-1] > 0)


def gather_objects(obj: object) -> list:
    """Every process's ``obj``, in rank order (``[obj]`` in a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_equal(value: int) -> bool:
    """Whether every process holds the same integer (a check before collective work that must agree)."""
    if not (dist.is_available() and dist.is_initialized()):
        return True
    values = gather_objects(int(value))
    return min(values) == max(values)
