"""Beyond the paper, measured on a labelled protocol: one class per weak step against the multi-class step, and
new-class IoU against the number of tagged images.

Every weak step here runs a fixed number of iterations (``fixed_budget``), so that rows differ by what they learn
from, not by how long they train: the single-class sequence splits the multi-class step's budget evenly between its
steps, and every point of the few-image curve gets the same budget.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace
from typing import Sequence

from research.experiments import Benchmark, Row
from research.protocol import Task
from research.sequence import joint_checkpoint, weak_step_checkpoint
from wilss.checkpoint import Checkpoint
from wilss.config import UpdateConfig
from wilss.engine import batches_per_epoch

log = logging.getLogger(__name__)


@dataclass
class StudyRow:
    label: str
    images: int          # tagged images over all weak steps
    iterations: int      # training iterations over all weak steps
    row: Row


def single_class_task(task: Task) -> Task:
    """The same class order with one class per weak step (VOC 15-5 -> 15-1-1-1-1-1)."""
    return Task((task.steps[0],) + tuple((c,) for s in task.steps[1:] for c in s), task.background_ids)


def fixed_budget(cfg: UpdateConfig, num_images: int, iterations: int) -> UpdateConfig:
    """``cfg`` with as many epochs as make about ``iterations`` iterations over ``num_images`` images, and the
    warm-up the same share of them as in ``cfg`` (at least one epoch, and one epoch less than all)."""
    epochs = max(2, round(iterations / batches_per_epoch(num_images, cfg.batch_size)))
    warmup = min(epochs - 1, max(1, round(epochs * cfg.warmup_epochs / cfg.epochs)))
    return replace(cfg, epochs=epochs, warmup_epochs=warmup)


def _weak_steps(bench: Benchmark, base: Checkpoint, iterations_per_step: int) -> tuple[Checkpoint, int, int]:
    """Every weak step of ``bench``'s task with WILSS at a fixed budget: (last checkpoint, images, iterations)."""
    recipe, current, images, done = bench.update_cfg, base, 0, 0
    try:
        for step in range(1, bench.protocol.task.num_steps):
            count = len(bench.step_indices(step))
            bench.update_cfg = fixed_budget(recipe, count, iterations_per_step)
            current = weak_step_checkpoint(bench, "wilss", current, step).checkpoint
            images += count
            done += bench.update_cfg.epochs * batches_per_epoch(count, bench.update_cfg.batch_size)
    finally:
        bench.update_cfg = recipe
    return current, images, done


def _scored(bench: Benchmark, label: str, ckpt: Checkpoint, seconds: float, images: int, iterations: int) -> StudyRow:
    last = bench.protocol.task.num_steps - 1
    row = bench.score(label, ckpt.model, seconds, last, keep=False)
    log.info("%s: old %.1f new %.1f all %.1f (%d images, %d iterations, %.0f s)", label, row.old, row.new, row.all,
             images, iterations, seconds)
    return StudyRow(label, images, iterations, row)


def multi_vs_single(bench: Benchmark, base: Checkpoint, *, iterations: int) -> list[StudyRow]:
    """The multi-class step (``bench``'s task) and the single-class sequence of the same classes, with the same
    total budget. ``bench``'s task must have one weak step."""
    if bench.protocol.task.num_steps != 2:
        raise ValueError("the comparison starts from a task with one (multi-class) weak step, e.g. '15-5'")
    rows = [_scored(bench, "base", base, 0.0, 0, 0)]
    start = time.perf_counter()
    multi, images, done = _weak_steps(bench, base, iterations)
    rows.append(_scored(bench, "WILSS, one multi-class step", multi, time.perf_counter() - start, images, done))
    single = Benchmark(replace(bench.protocol, task=single_class_task(bench.protocol.task)), bench.train, bench.test,
                       pretrain_cfg=bench.pretrain_cfg, update_cfg=bench.update_cfg, arch=bench.arch,
                       device=bench.device, on_progress=bench.on_progress, arch_options=bench.arch_options,
                       init_model=bench.init_model)
    steps = single.protocol.task.num_steps - 1
    start = time.perf_counter()
    last, images, done = _weak_steps(single, base, math.ceil(iterations / steps))
    rows.append(_scored(single, f"WILSS, {steps} single-class steps", last, time.perf_counter() - start, images, done))
    return rows


def few_image_curve(bench: Benchmark, base: Checkpoint, *, counts: Sequence[int | None],
                    iterations: int) -> list[StudyRow]:
    """New-class IoU against the number of tagged images of the (single) weak step; ``None`` = all of them."""
    rows = []
    for count in counts:
        bench.images_per_step = count
        start = time.perf_counter()
        ckpt, images, done = _weak_steps(bench, base, iterations)
        label = f"WILSS, {'all' if count is None else count} images"
        rows.append(_scored(bench, label, ckpt, time.perf_counter() - start, images, done))
    bench.images_per_step = None
    return rows


def joint_row(bench: Benchmark) -> StudyRow:
    """The pixel-supervised upper bound on every image of every step."""
    last = bench.protocol.task.num_steps - 1
    result = joint_checkpoint(bench, last)
    count, cfg = len(bench.joint_indices(last)), bench.pretrain_cfg
    return _scored(bench, "joint (pixel labels)", result.checkpoint, result.seconds, count,
                   cfg.epochs * batches_per_epoch(count, cfg.batch_size))


def format_study(rows: Sequence[StudyRow], title: str) -> str:
    lines = [f"### {title}", "", "| run | tagged images | iterations | old mIoU | new mIoU | all mIoU | time (s) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r.label} | {r.images} | {r.iterations} | {r.row.old:.1f} | {r.row.new:.1f} | "
                     f"{r.row.all:.1f} | {r.row.seconds:.0f} |")
    return "\n".join(lines)
