"""Speed of one update configuration: images per second, time per iteration, peak memory, FLOPs and MFU.

A ``BenchSetup`` is a ready-to-run WeakUpdate input (old model, tagged dataset, ``UpdateConfig``); ``measure`` runs it
under one ``RuntimeConfig`` and times the joint phase (every loss on, the phase of 35 of the paper's 40 epochs).
Peak memory is per process (CUDA max allocated, or the process's peak RSS on CPU), so the CLI measures each path
in a fresh subprocess.
"""
from __future__ import annotations

import logging
import math
import resource
import sys
import time
from dataclasses import asdict, dataclass, replace
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset
from torch.utils.flop_counter import FlopCounterMode

from models.segmenter import Segmenter
from wilss.config import UpdateConfig
from wilss.engine import batches_per_epoch, resolve_device
from wilss.runtime import RuntimeConfig
from wilss.trainer import WeakUpdate

log = logging.getLogger(__name__)

CONFIGS = ("cpu-default", "gpu-r101", "cpu-camvid", "cpu-camvid-tiny")
GPU_PEAK_TFLOPS = 800.0  # H100 / H200 dense bf16, the reference for MFU (set with --peak-tflops)
CAMVID_NATIVE = (360, 480)   # CamVid's own image size (h, w): the cpu-camvid configuration's synthetic images


@dataclass
class BenchSetup:
    """What one update needs: the frozen old model, training items and the update's settings. ``step``: the class
    that trains it, called as ``step(old_model, dataset, num_new=, cfg=, device=, runtime=)`` (``WeakUpdate`` on
    tagged items; ``MaskedUpdate`` on items with masks)."""

    name: str
    description: str
    old_model: Segmenter
    dataset: Dataset
    num_new: int
    cfg: UpdateConfig
    step: Callable = WeakUpdate


@dataclass(frozen=True)
class Measurement:
    """One path's figures. ``seconds``: the timed iterations; ``peak_bytes``: CUDA max allocated or peak RSS."""

    path: str
    runtime: dict
    dtype: str                  # the autocast dtype the runtime resolved to on this device
    device: str
    batch_size: int
    seconds: tuple[float, ...]
    peak_bytes: int
    peak_kind: str
    flops: float | None = None  # of one iteration, forward and backward (FlopCounterMode)
    replay_seconds: float = 0.0  # HRHF's one-off inversion before the first iteration (not in ``seconds``)

    @property
    def median_s(self) -> float:
        return float(np.median(self.seconds))

    @property
    def images_per_s(self) -> float:
        return self.batch_size / self.median_s

    def to_dict(self) -> dict:
        return {**asdict(self), "seconds": list(self.seconds)}


def cpu_default_setup(*, batch_size: int | None = None, crop_size: int | None = None) -> BenchSetup:
    """The demo: the shipped tiny base learns 'arrow' from samples/ (``recipes.DEMO_UPDATE``)."""
    from models import DEFAULT_CHECKPOINT
    from wilss import recipes
    from wilss.checkpoint import load_checkpoint
    from wilss.tags import read_tagged_folder
    from wilss.training_data import tagged_training_set

    cfg = _resized(recipes.DEMO_UPDATE, batch_size, crop_size)
    ckpt = load_checkpoint(DEFAULT_CHECKPOINT)
    tagged = read_tagged_folder(DEFAULT_CHECKPOINT.parents[1] / "samples")  # the repository's samples/
    dataset = tagged_training_set(tagged, ckpt.class_names[1:] + [recipes.DEMO_CLASS], cfg)
    return BenchSetup("cpu-default", f"shipped tiny base + '{recipes.DEMO_CLASS}' from samples/ ({len(tagged)} "
                      f"images), crops {cfg.crop_size}, batch {cfg.batch_size}", ckpt.model, dataset, 1, cfg)


def gpu_r101_setup(*, batch_size: int | None = None, crop_size: int | None = None,
                   num_old: int = 16, num_new: int = 5) -> BenchSetup:
    """The paper's VOC 15-5 step: DeepLabV3-ResNet-101 (random weights: speed does not depend on them), 512 px
    crops, batch 24, localizer 256 channels, on synthetic 500x640 noise images with random tags."""
    cfg = _resized(UpdateConfig(), batch_size, crop_size)
    size = round(cfg.crop_size * 500 / 512), round(cfg.crop_size * 640 / 512)  # VOC-like shape
    return synthetic_setup("gpu-r101", "DeepLabV3-ResNet-101", "deeplabv3_resnet101", cfg, size, num_old, num_new)


def camvid_setup(arch: str, *, batch_size: int | None = None, crop_size: int | None = None) -> BenchSetup:
    """The CamVid weak step (``recipes.camvid_recipe(arch)``: 9 old + 2 new classes, 480x360 images, crops 176,
    batch 8) on synthetic images: 'cpu-camvid' with the ImageNet encoder's network, 'cpu-camvid-tiny' with tiny."""
    from research import recipes

    recipe = recipes.camvid_recipe(arch)
    cfg = _resized(recipe.update, batch_size, crop_size)
    name = "cpu-camvid" if arch != "tiny" else "cpu-camvid-tiny"
    return synthetic_setup(name, arch, arch, cfg, recipe.resize or CAMVID_NATIVE, 10, 2)


def synthetic_setup(name: str, what: str, arch: str, cfg: UpdateConfig, size: tuple[int, int], num_old: int,
                    num_new: int) -> BenchSetup:
    """``arch`` with random weights and ``num_old`` outputs, learning ``num_new`` classes from synthetic ``size``
    noise images with random tags (30% positive), 8 batches an epoch."""
    from models import build_segmenter
    from wilss.training_data import TagDataset
    from wilss.transforms import train_transform

    model = build_segmenter(arch=arch, num_classes=num_old).eval()
    rng = np.random.default_rng(0)
    count = 8 * cfg.batch_size  # 8 batches an epoch: the workers refill at each epoch start (median ignores it)
    images = [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(count)]
    targets = np.zeros((count, num_old - 1 + num_new), np.float32)
    targets[:, -num_new:] = rng.random((count, num_new)) < 0.3
    augment = train_transform(cfg.crop_size, cfg.scale_range, cfg.hflip)
    dataset = TagDataset(images, targets, transform=augment)
    return BenchSetup(name, f"{what}, {num_old - 1} old + {num_new} new classes, synthetic images, crops "
                      f"{cfg.crop_size}, batch {cfg.batch_size}", model, dataset, num_new, cfg)


def _resized(cfg: UpdateConfig, batch_size: int | None, crop_size: int | None) -> UpdateConfig:
    return replace(cfg, batch_size=batch_size or cfg.batch_size, crop_size=crop_size or cfg.crop_size)


def build_setup(name: str, **kwargs) -> BenchSetup:
    if name not in CONFIGS:
        raise ValueError(f"unknown bench config {name!r}; choose one of {', '.join(CONFIGS)}")
    if name.startswith("cpu-camvid"):
        return camvid_setup("tiny" if name.endswith("tiny") else "efficientnet_lite0", **kwargs)
    return cpu_default_setup(**kwargs) if name == "cpu-default" else gpu_r101_setup(**kwargs)


def _update(setup: BenchSetup, runtime: RuntimeConfig, device: torch.device, iterations: int):
    """A ``setup.step`` (a WeakUpdate by default) of ``setup`` that lasts at least ``iterations``, all in the joint
    phase."""
    per_epoch = batches_per_epoch(len(setup.dataset), setup.cfg.batch_size)
    cfg = replace(setup.cfg, epochs=math.ceil(iterations / per_epoch) + 1, warmup_epochs=0)
    return setup.step(setup.old_model, setup.dataset, num_new=setup.num_new, cfg=cfg, device=device,
                      runtime=runtime)


def _timed_iterations(run, device: torch.device, count: int) -> list[float]:
    """The seconds of each of ``run``'s next ``count`` training iterations. HRHF's inversion steps (phase 'replay',
    all before the first iteration) run but are not counted: ``WeakUpdate.replay_seconds`` times them."""
    seconds: list[float] = []
    while len(seconds) < count:
        start = time.perf_counter()
        progress = next(run)
        _sync(device)
        if progress.phase != "replay":
            seconds.append(time.perf_counter() - start)
    return seconds


def measure(setup: BenchSetup, runtime: RuntimeConfig, *, path: str, iterations: int, warmup: int,
            device: str | torch.device | None = None, count_flops: bool = False) -> Measurement:
    """Time ``iterations`` joint-phase iterations after ``warmup`` untimed ones (compilation, allocator, caches).

    ``count_flops``: run one more iteration under ``FlopCounterMode`` (eager only; FLOPs are those of the math,
    the same on every path).
    """
    device = resolve_device(device)
    update = _update(setup, runtime, device, warmup + iterations + 1)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    run = update.run()
    seconds = _timed_iterations(run, device, warmup + iterations)[warmup:]
    flops = None
    if count_flops:
        with FlopCounterMode(display=False) as counter:
            next(run)
        flops = float(counter.get_total_flops())
    run.close()
    peak, kind = _peak_memory(device)
    return Measurement(path=path, runtime=asdict(runtime), dtype=str(update.precision.dtype).replace("torch.", ""),
                       device=str(device), batch_size=update.cfg.batch_size, seconds=tuple(seconds),
                       peak_bytes=peak, peak_kind=kind, flops=flops,
                       replay_seconds=getattr(update, "replay_seconds", 0.0))


def interleaved_seconds(setup: BenchSetup, runtimes: dict[str, RuntimeConfig], *, iterations: int, warmup: int,
                        device: str | torch.device | None = None) -> dict[str, tuple[float, ...]]:
    """Per path, the seconds of ``iterations`` timed iterations, the paths' iterations alternating in this process:
    on a shared machine a change of load then hits every path alike (the ratio is what this is for)."""
    device = resolve_device(device)
    runs = {path: _update(setup, rt, device, warmup + iterations).run() for path, rt in runtimes.items()}
    seconds: dict[str, list[float]] = {path: [] for path in runs}
    for i in range(warmup + iterations):
        for path, run in runs.items():
            elapsed = _timed_iterations(run, device, 1)[0]
            if i >= warmup:
                seconds[path].append(elapsed)
    for run in runs.values():
        run.close()
    return {path: tuple(values) for path, values in seconds.items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory(device: torch.device) -> tuple[int, str]:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "GPU max allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return int(rss if sys.platform == "darwin" else rss * 1024), "process peak RSS"
