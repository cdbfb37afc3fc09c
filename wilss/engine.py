"""The training loop shared by step 0 and the weak steps: optimiser plumbing and progress reporting.

Loops are generators of ``Progress`` so the CLI can print them, the UI can stream them, and the caller can stop
between iterations by simply not asking for the next one.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from wilss.config import OptimConfig
from wilss.runtime import PLAIN, Precision


@dataclass
class Snapshot:
    """What the update currently thinks of one training image (all arrays at the image's size)."""

    index: int
    image: np.ndarray           # HxWx3 uint8
    cams: np.ndarray            # NxHxW float32 in [0, 1]: localizer softmax mass of each new class
    pseudo_label: np.ndarray    # HxW uint8 model class ids (argmax of the Eq. 5-7 target)
    prediction: np.ndarray      # HxW uint8 model class ids (argmax of the current model)


@dataclass
class Progress:
    iteration: int                      # 1-based, after the optimiser step
    total_iterations: int
    epoch: int
    phase: str                          # 'pretrain', 'warmup' (localizer only) or 'joint'
    losses: dict[str, float]
    lr: float                           # learning rate of the first parameter group
    elapsed_s: float
    snapshots: list[Snapshot] = field(default_factory=list)

    @property
    def eta_s(self) -> float:
        return self.elapsed_s / max(self.iteration, 1) * (self.total_iterations - self.iteration)


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/'auto' -> CUDA when available, else CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def make_loader(dataset: Dataset, cfg: OptimConfig, device: torch.device) -> DataLoader:
    """Shuffled, seeded loader; drops the last partial batch only when there is more than one batch."""
    if len(dataset) == 0:
        raise ValueError("cannot train on zero images")
    generator = torch.Generator().manual_seed(cfg.seed)
    batch_size = min(cfg.batch_size, len(dataset))
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=len(dataset) > batch_size,
                      num_workers=cfg.num_workers, generator=generator, pin_memory=device.type == "cuda",
                      persistent_workers=cfg.num_workers > 0)


def make_sgd(groups: list[dict], cfg: OptimConfig) -> torch.optim.SGD:
    return torch.optim.SGD(groups, lr=groups[0]["lr"], momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                           nesterov=cfg.nesterov)


def poly_schedule(optimizer: torch.optim.Optimizer, *, total: int, power: float,
                  start: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """Constant learning rate for ``start`` iterations, then ``(1 - progress) ** power`` decay to 0."""
    span = max(total - start, 1)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: 1.0 if it < start else max(0.0, 1.0 - (it - start) / span) ** power)


StepFn = Callable[[tuple, str], dict[str, torch.Tensor]]


def run_loop(*, loader: DataLoader, epochs: int, step: StepFn, phase_of: Callable[[int], str],
             optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
             snapshot: Callable[[int], list[Snapshot]] | None = None,
             precision: Precision | None = None) -> Iterator[Progress]:
    """Run ``epochs`` over ``loader``: ``step(batch, phase)`` returns named losses, whose sum is minimised.

    ``snapshot(iteration)`` may return snapshots to attach to that iteration's progress (or an empty list).
    ``precision`` (``wilss.runtime``) does the backward pass and the step (gradient scaling in fp16); default plain.
    """
    precision = precision or Precision(PLAIN, torch.device("cpu"))
    total = epochs * len(loader)
    iteration, start = 0, time.perf_counter()
    for epoch in range(epochs):
        phase = phase_of(epoch)
        for batch in loader:
            losses = step(batch, phase)
            loss = sum(losses.values())
            optimizer.zero_grad(set_to_none=True)
            precision.backward(loss)
            # One device sync per iteration for all loss values, once the backward pass is queued.
            values = dict(zip(losses, torch.stack([v.detach().float() for v in losses.values()]).tolist()))
            if not math.isfinite(sum(values.values())):
                raise FloatingPointError(f"loss became {sum(values.values())} at iteration {iteration + 1} "
                                         f"({values}); lower the learning rates")
            precision.step(optimizer)
            scheduler.step()
            iteration += 1
            yield Progress(iteration=iteration, total_iterations=total, epoch=epoch, phase=phase,
                           losses=values,
                           lr=optimizer.param_groups[0]["lr"], elapsed_s=time.perf_counter() - start,
                           snapshots=snapshot(iteration) if snapshot else [])


def last(progress: Iterator[Progress]) -> Progress | None:
    """Drain a loop, returning its final progress (for callers that do not watch)."""
    final = None
    for final in progress:
        pass
    return final


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


def batches_per_epoch(num_images: int, batch_size: int) -> int:
    batch = min(batch_size, num_images)
    return num_images // batch if num_images > batch else 1
