"""How an update runs on a machine, apart from what it computes: precision, memory format, compilation, loading.

``RuntimeConfig`` is separate from ``UpdateConfig`` on purpose: it changes speed and memory, not the method. Its
``optimised(device)`` preset is the default of ``WeakUpdate`` (add-class and the app); ``PLAIN`` is the fp32 eager
reference path that ``python -m research bench`` compares it with. ``Precision`` is the object the training loop
receives: it owns the autocast context and the (optional) fp16 gradient scaler.
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Callable, ContextManager

import torch
from torch import nn

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16", "auto")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/'auto' -> CUDA when available, else CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass(frozen=True)
class RuntimeConfig:
    """``precision``: 'auto' (CUDA: bf16 where the GPU supports it, else fp16 with a GradScaler; CPU: fp32, since
    bf16 convolutions are ~100x slower on a CPU without AVX-512 bf16, see docs/performance.md), 'fp32', 'bf16' or
    'fp16'. ``channels_last``: NHWC activations (faster convolutions on both GPU and CPU). ``compile``: wrap the loss
    computation in ``torch.compile`` (CUDA; on CPU its compile time exceeds the whole demo). ``num_workers``:
    DataLoader workers, ``None`` = the ``UpdateConfig``'s own (0: augment in the main process).
    ``cudnn_benchmark``: CUDA only, pick the fastest convolution algorithms for the (fixed) crop size."""

    precision: str = "auto"
    channels_last: bool = True
    compile: bool = False
    num_workers: int | None = None
    cudnn_benchmark: bool = True  # fixed crop sizes: let cuDNN time its convolution algorithms once

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.num_workers is not None and self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")


PLAIN = RuntimeConfig(precision="fp32", channels_last=False, compile=False, cudnn_benchmark=False)


def optimised(device: torch.device) -> RuntimeConfig:
    """The default: mixed precision and channels-last; on CUDA, DataLoader workers so the GPU is never waiting for
    augmentation done on the CPU (the CPU path keeps 0: two cores are better spent on the convolutions)."""
    workers = min(8, os.cpu_count() or 1) if device.type == "cuda" else None
    return RuntimeConfig(precision="auto", channels_last=True, num_workers=workers)


class Precision:
    """Autocast context and gradient scaling for one device, built from a ``RuntimeConfig``."""

    def __init__(self, runtime: RuntimeConfig, device: torch.device) -> None:
        self.runtime, self.device = runtime, device
        self.dtype = resolve_dtype(runtime.precision, device)
        # fp16 has a narrow exponent: scale the loss so small gradients do not flush to zero. bf16 needs no scaler.
        self.scaler = torch.amp.GradScaler(device.type) if self.dtype == torch.float16 else None
        if device.type == "cuda":  # a process-wide switch; it changes speed, not results beyond float noise
            torch.backends.cudnn.benchmark = runtime.cudnn_benchmark

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.runtime.channels_last else torch.contiguous_format

    def autocast(self) -> ContextManager:
        """Mixed precision for the forward pass and losses (a no-op in fp32)."""
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def prepare(self, module: nn.Module) -> nn.Module:
        """``module`` in this path's memory format (in place, returned for chaining)."""
        return module.to(memory_format=self.memory_format)

    def images(self, batch: torch.Tensor) -> torch.Tensor:
        """A CPU batch ``Bx3xHxW`` on the device, in the memory format (pinned memory makes the copy async)."""
        return batch.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)

    def frozen(self, fn: Callable[[torch.Tensor], tuple[torch.Tensor, ...]],
               x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Run a frozen network ``fn(x)`` under ``inference_mode`` and this path's reduced precision.

        Outputs come back as float32 ordinary tensors: inference tensors cannot be saved for a backward pass
        (l_LOC and feature distillation save their targets), and the losses read the old model in float32.
        """
        with torch.inference_mode(), self.autocast():
            out = fn(x)
        return tuple(t.float().clone() if t.dtype == torch.float32 else t.float() for t in out)

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()``, through the gradient scaler in fp16."""
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def step(self, optimizer) -> None:
        """``optimizer.step()``; in fp16 the scaler unscales first and skips a step whose gradients overflowed."""
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The autocast dtype of ``precision`` on ``device`` ('auto': bf16 or fp16 on CUDA, fp32 elsewhere)."""
    if precision == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return DTYPES.get(precision, torch.float32)


def maybe_compile(fn: Callable, runtime: RuntimeConfig) -> Callable:
    """``torch.compile(fn)`` when asked. The loss function takes a phase string, so expect two graphs (warm-up and
    joint) and a recompile when the last batch of an epoch is smaller."""
    return torch.compile(fn) if runtime.compile else fn
