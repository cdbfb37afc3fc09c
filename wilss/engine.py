"""The training loop shared by step 0 and the weak steps: optimiser plumbing and progress reporting.

Loops are generators of ``Progress`` so the CLI can print them, the UI can stream them, and the caller can stop
between iterations by simply not asking for the next one.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from wilss.config import OptimConfig
from wilss.distributed import ResumableDistributedSampler, ResumableRandomSampler, World, per_process_batch
from wilss.optim import SGD, PolySchedule
from wilss.runtime import PLAIN, Precision, resolve_device  # noqa: F401 (callers import it from here)


@dataclass
class Snapshot:
    """What the update currently thinks of one training image (all arrays at the image's size)."""

    index: int
    image: np.ndarray           # HxWx3 uint8
    cams: np.ndarray            # NxHxW float32 in [0, 1]: localizer softmax mass of each new class
    pseudo_label: np.ndarray    # HxW uint8 model class ids (argmax of the Eq. 5-7 target)
    prediction: np.ndarray      # HxW uint8 model class ids (argmax of the current model)
    pseudo_confidence: np.ndarray | None = None  # HxW float32 in [0, 1]: the Eq. 5-7 target at its argmax


@dataclass
class Progress:
    iteration: int                      # 1-based, after the optimiser step
    total_iterations: int
    epoch: int
    phase: str                          # 'pretrain', 'warmup' (localizer only), 'joint', or 'mib' (masks)
    losses: dict[str, float]
    lr: float                           # learning rate of the first parameter group
    elapsed_s: float
    snapshots: list[Snapshot] = field(default_factory=list)
    first_iteration: int = 0            # iterations done before this run started (a resumed run)

    @property
    def eta_s(self) -> float:
        done = max(self.iteration - self.first_iteration, 1)
        return self.elapsed_s / done * (self.total_iterations - self.iteration)


def make_loader(dataset: Dataset, cfg: OptimConfig, device: torch.device, world: World = World()) -> DataLoader:
    """Shuffled, seeded loader; drops the last partial batch only when there is more than one batch.

    Its sampler can resume part-way through an epoch (``resume_at``). In a process group (``world``), each process
    loads its share ``cfg.batch_size / world_size`` of every global batch, in ``DistributedSampler`` order.
    """
    if len(dataset) == 0:
        raise ValueError("cannot train on zero images")
    generator = torch.Generator().manual_seed(cfg.seed)
    if not world.distributed:
        sampler, share = ResumableRandomSampler(dataset, generator=generator), len(dataset)
        batch_size = min(cfg.batch_size, share)
    else:
        sampler = ResumableDistributedSampler(dataset, world=world, seed=cfg.seed)
        share = sampler.num_samples
        batch_size = min(per_process_batch(cfg.batch_size, world), share)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=share > batch_size,
                      num_workers=cfg.num_workers, generator=generator, pin_memory=device.type == "cuda",
                      persistent_workers=cfg.num_workers > 0)


def make_sgd(groups: list[dict], cfg: OptimConfig) -> SGD:
    """SGD with momentum (``wilss.optim``: torch.optim.SGD's step, without importing ``torch._dynamo``)."""
    return SGD(groups, lr=groups[0]["lr"], momentum=cfg.momentum, weight_decay=cfg.weight_decay,
               nesterov=cfg.nesterov)


def poly_schedule(optimizer: SGD, *, total: int, power: float, start: int = 0) -> PolySchedule:
    """Constant learning rate for ``start`` iterations, then ``(1 - progress) ** power`` decay to 0."""
    return PolySchedule(optimizer, total=total, power=power, start=start)


StepFn = Callable[[tuple, str], dict[str, torch.Tensor]]


def run_loop(*, loader: DataLoader, epochs: int, step: StepFn, phase_of: Callable[[int], str],
             optimizer: SGD, scheduler: PolySchedule,
             snapshot: Callable[[int], list[Snapshot]] | None = None, start: int = 0,
             precision: Precision | None = None) -> Iterator[Progress]:
    """Run ``epochs`` over ``loader``: ``step(batch, phase)`` returns named losses, whose sum is minimised.

    ``snapshot(iteration)`` may return snapshots to attach to that iteration's progress (or an empty list).
    ``start``: iterations already done (a resumed run); the loader's sampler skips the part-done epoch's batches
    (``resume_at``). Each epoch begins with ``sampler.set_epoch(epoch)`` when the sampler has it.
    ``precision`` (``wilss.runtime``) does the backward pass and the step (gradient scaling in fp16); default plain.
    """
    precision = precision or Precision(PLAIN, torch.device("cpu"))
    total = epochs * len(loader)
    iteration, first, start_s = start, start, time.perf_counter()
    for epoch in range(start // len(loader), epochs):
        if hasattr(loader.sampler, "set_epoch"):  # DistributedSampler reshuffles per epoch; ours marks the epoch
            loader.sampler.set_epoch(epoch)
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
                           lr=optimizer.param_groups[0]["lr"], elapsed_s=time.perf_counter() - start_s,
                           snapshots=snapshot(iteration) if snapshot else [], first_iteration=first)


def set_training(model: torch.nn.Module, training: bool, *, frozen_encoder: bool = False,
                 frozen_bn: bool = False) -> None:
    """``model.train(training)``, its encoder kept in eval mode when frozen (ILT's option): a frozen encoder's
    batch-norm statistics stay those of the old model, so its weights and buffers are left bit-identical. With
    ``frozen_bn`` only the encoder's batch-norm layers stay in eval mode (its weights train)."""
    model.train(training)
    if frozen_encoder:
        model.encoder.eval()
    elif frozen_bn:
        for module in model.encoder.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()


def finished_model(model: torch.nn.Module) -> torch.nn.Module:
    """A finished run's network for its checkpoint, in eval mode on the CPU: on the CPU the run's own (nothing trains
    it any more, and what reads it after, the app's Review tab, reads it in eval mode too), elsewhere a CPU copy.
    One model less in memory for each session whose update the app keeps for review."""
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    return model.eval() if on_cpu else copy.deepcopy(model).cpu().eval()


def freeze_encoder(model: torch.nn.Module) -> None:
    """No gradients for ``model.encoder`` (and eval mode): ILT's frozen feature extractor."""
    model.encoder.requires_grad_(False).eval()


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
