"""Multi-step protocols: step 0 with pixel labels, then every weak step of the task in turn (VOC 15-1: five).

``run_sequence`` drives a ``Benchmark``: WILSS and FT each grow the model step by step from tags derived from the
masks (with the protocol's setting), joint trains once with pixel labels on every class. Each step's model is a
``Checkpoint`` whose history gains one entry per step, handed to ``on_step`` as soon as it exists (so a caller
can save it before the next step starts). Rows are scored after the last step in the paper's columns: old =
step 0's classes, new = every class added by the weak steps, all.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from research.experiments import Benchmark, Row
from wilss.checkpoint import Checkpoint, default_colours, history_entry, new_checkpoint
from wilss.config import to_dict

log = logging.getLogger(__name__)

METHODS = ("wilss", "ft", "joint", "ilt", "hrhf")   # ilt: + output distillation; hrhf: + HRHF replay


@dataclass
class StepResult:
    """One trained step of one method: its checkpoint, training wall time and (when scored) test row."""

    method: str               # 'base', 'joint' or a weak-step method ('wilss', 'ft', 'ilt', 'hrhf')
    step: int
    classes: list[str]        # class names this step added (joint: every class)
    num_images: int
    seconds: float
    checkpoint: Checkpoint
    row: Row | None = None


def protocol_settings(bench: Benchmark) -> dict:
    """What a history entry records about the protocol: dataset, setting, class names per step, image limit."""
    p = bench.protocol
    return {"protocol": p.name, "setting": p.setting, "images_per_step": bench.images_per_step,
            "selection_seed": bench.selection_seed,
            "task_steps": [[p.dataset_classes[c] for c in step] for step in p.task.steps]}


def _figures(row: Row | None) -> dict:
    return {} if row is None else {"test_mIoU_old": round(row.old, 2), "test_mIoU_new": round(row.new, 2),
                                   "test_mIoU_all": round(row.all, 2)}


def train_base_checkpoint(bench: Benchmark) -> StepResult:
    """Step 0: the pixel-supervised base model, as a checkpoint with its 'pretrain' history entry."""
    start = time.perf_counter()
    model = bench.train_base()
    seconds = time.perf_counter() - start
    names = bench.protocol.model_class_names(0)
    ckpt = new_checkpoint(model, names)
    ckpt.history.append(history_entry("pretrain", names[1:], num_images=len(bench.base_indices()), step=0,
                                      settings={**protocol_settings(bench), **to_dict(bench.pretrain_cfg)},
                                      seconds=round(seconds, 1)))
    return StepResult("base", 0, names[1:], len(bench.base_indices()), seconds, ckpt)


def weak_step_checkpoint(bench: Benchmark, method: str, previous: Checkpoint, step: int, *,
                         score: bool = False) -> StepResult:
    """Weak step ``step`` of ``method`` ('wilss', 'ft', 'ilt' or 'hrhf') from ``previous`` (the model after
    step - 1)."""
    cfg = bench.method_config(method, step)
    indices = bench.step_indices(step)
    start = time.perf_counter()
    model = bench.weak_step(f"{method} step {step}", previous.model, cfg, step=step)
    seconds = time.perf_counter() - start
    row = bench.score(method, model, seconds, step, keep=False) if score else None
    names = bench.protocol.model_class_names(step)
    added = names[len(previous.class_names):]
    colours = np.concatenate([previous.colours, default_colours(len(names))[len(previous.class_names):]])
    entry = history_entry("add-class", added, num_images=len(indices), step=step, metrics=_figures(row),
                          settings={"method": method, **protocol_settings(bench), **to_dict(cfg)},
                          seconds=round(seconds, 1))
    ckpt = Checkpoint(model=model, class_names=names, colours=colours, history=[*previous.history, entry],
                      background=previous.background)
    return StepResult(method, step, added, len(indices), seconds, ckpt, row)


def joint_checkpoint(bench: Benchmark, last_step: int) -> StepResult:
    """The upper bound: step 0's recipe on every image of steps 0..``last_step`` with all their classes labelled."""
    indices = bench.joint_indices(last_step)
    start = time.perf_counter()
    model = bench.pixel_model("joint", indices, step=last_step)
    seconds = time.perf_counter() - start
    names = bench.protocol.model_class_names(last_step)
    ckpt = new_checkpoint(model, names)
    ckpt.history.append(history_entry("pretrain", names[1:], num_images=len(indices), step=last_step,
                                      settings={"method": "joint", **protocol_settings(bench),
                                                **to_dict(bench.pretrain_cfg)}, seconds=round(seconds, 1)))
    return StepResult("joint", last_step, names[1:], len(indices), seconds, ckpt)


def run_sequence(bench: Benchmark, *, base: Checkpoint | None = None, methods: Sequence[str] = METHODS,
                 score_each_step: bool = False,
                 on_step: Callable[[StepResult], None] | None = None) -> tuple[list[Row], list[StepResult]]:
    """Step 0 (or ``base``), then every weak step of the task for each of ``methods``; joint once.

    Returns the rows scored after the last step (base first, then ``methods`` in order; ``seconds`` = training
    time summed over the method's steps) and every ``StepResult`` in the order trained. ``score_each_step``
    also scores the model after each weak step (``StepResult.row``, paper columns after that step).
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {METHODS}")
    on_step = on_step or (lambda result: None)
    last = bench.protocol.task.num_steps - 1
    if last < 1:
        raise ValueError("the task has no weak step: give a task with at least two steps (e.g. '15-5')")
    results = []
    if base is None:
        results.append(train_base_checkpoint(bench))
        on_step(results[-1])
        base = results[-1].checkpoint
    rows = [bench.score("base", base.model, results[0].seconds if results else 0.0, last)]
    for method in methods:
        if method == "joint":
            result = joint_checkpoint(bench, last)
            results.append(result)
            on_step(result)
            rows.append(bench.score("joint", result.checkpoint.model, result.seconds, last))
            continue
        current, seconds = base, 0.0
        for step in range(1, last + 1):
            result = weak_step_checkpoint(bench, method, current, step, score=score_each_step)
            log.info("%s step %d/%d (%s): %.0f s", method, step, last, ", ".join(result.classes), result.seconds)
            results.append(result)
            on_step(result)
            current, seconds = result.checkpoint, seconds + result.seconds
        final = results[-1].row
        rows.append(Row(method, final.old, final.new, final.all, seconds, final.per_class) if final is not None
                    else bench.score(method, current.model, seconds, last))
    return rows, results


def format_steps(results: Sequence[StepResult]) -> str:
    """Markdown table: one line per trained step (method, step, classes added, images, wall time, scores)."""
    lines = ["| method | step | classes added | images | train time (s) | old | new | all |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        scores = ("| - | - | - |" if r.row is None else f"| {r.row.old:.1f} | {r.row.new:.1f} | {r.row.all:.1f} |")
        shown = ", ".join(r.classes) if len(r.classes) <= 6 else f"{', '.join(r.classes[:5])}, ... ({len(r.classes)})"
        lines.append(f"| {r.method} | {r.step} | {shown} | {r.num_images} | {r.seconds:.1f} " + scores)
    return "\n".join(lines)


def format_forgetting(rows: Sequence[Row], results: Sequence[StepResult], title: str) -> str:
    """Markdown table of forgetting over a sequence (``run_sequence`` with ``score_each_step``): per weak-step
    method, old mIoU (step 0's classes) before the first step (the base's) and after each step, then new and all
    after the last step and the training time summed over the steps."""
    steps = sorted({r.step for r in results if r.method not in ("base", "joint")})
    base = next((r for r in rows if r.method == "base"), None)
    lines = [f"### {title}", "", "| method | " + " | ".join(["base"] + [f"old after step {t}" for t in steps])
             + " | new (last) | all (last) | train time (s) |", "| --- |" + " ---: |" * (len(steps) + 4)]
    for row in rows:
        if row.method in ("base", "joint"):
            continue
        by_step = {r.step: r.row for r in results if r.method == row.method}
        olds = [f"{by_step[t].old:.1f}" if by_step.get(t) is not None else "-" for t in steps]
        lines.append(f"| {row.method} | {'-' if base is None else f'{base.old:.1f}'} | " + " | ".join(olds)
                     + f" | {row.new:.1f} | {row.all:.1f} | {row.seconds:.0f} |")
    return "\n".join(lines)
