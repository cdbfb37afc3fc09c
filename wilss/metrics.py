"""Segmentation metrics: a confusion matrix over model class ids and the paper's old/new/all summary.

Rows of the matrix are ground truth, columns predictions (``mat[t, p]`` counts pixels of class ``t``
predicted as ``p``). Pixels labelled ``IGNORE_INDEX`` or with a ground-truth id ``>= num_classes`` are skipped.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.distributed as dist

from wilss.conventions import BACKGROUND, IGNORE_INDEX


class ConfusionMatrix:
    """Accumulates a ``num_classes x num_classes`` int64 confusion matrix on the device of the inputs."""

    def __init__(self, num_classes: int) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch. ``pred`` and ``target``: integer tensors of the same shape (any, e.g. ``BxHxW``).

        Raises ValueError when a counted pixel has a prediction outside ``[0, num_classes)``.
        """
        if pred.shape != target.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
        n = self.num_classes
        target = target.reshape(-1).long()
        pred = pred.reshape(-1).long().to(target.device)
        keep = (target >= 0) & (target < n) & (target != IGNORE_INDEX)
        t, p = target[keep], pred[keep]
        if bool(((p < 0) | (p >= n)).any()):
            raise ValueError(f"predictions must lie in [0, {n}), got values in [{int(p.min())}, {int(p.max())}]")
        if self.mat.device != t.device:
            self.mat = self.mat.to(t.device)
        self.mat += torch.bincount(n * t + p, minlength=n * n).reshape(n, n)

    def reset(self) -> None:
        self.mat.zero_()

    def reduce_from_all_processes(self) -> None:
        """Sum the matrices of all processes (torchrun); a no-op in a single process."""
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
            dist.all_reduce(self.mat)

    def iou(self) -> torch.Tensor:
        """Per-class IoU = TP / (TP + FP + FN), float64 ``num_classes``; NaN where TP + FP + FN == 0."""
        mat = self.mat.double()
        tp = mat.diag()
        union = mat.sum(0) + mat.sum(1) - tp
        return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, math.nan))

    def pixel_accuracy(self) -> float:
        """Fraction of counted pixels predicted correctly, in [0, 1]; NaN when nothing was counted."""
        total = int(self.mat.sum())
        return float(self.mat.diag().sum()) / total if total else math.nan


def _nanmean_percent(iou: torch.Tensor, ids: Sequence[int]) -> float:
    if len(ids) == 0:
        return math.nan
    return float(torch.nanmean(iou[list(ids)].double())) * 100.0


def summarize(iou: torch.Tensor, old_classes: Sequence[int], new_classes: Sequence[int], *,
              include_background: bool = True) -> dict[str, float]:
    """mIoU (percent, 0-100) over the paper's groups, from per-class IoU over model ids (``iou``: ``K``).

    - ``old``: ids in ``old_classes`` with background (0) excluded, as in the WILSON/MiB tables;
    - ``new``: ids in ``new_classes``;
    - ``all``: background (when ``include_background``) + old + new.
    Means are NaN-aware: a class with neither ground truth nor prediction (NaN IoU) does not count, while a
    class with no ground truth but some predictions has IoU 0 and does count (the standard convention).
    A group with no valid class is NaN.
    """
    old = [c for c in dict.fromkeys(old_classes) if c != BACKGROUND]
    new = [c for c in dict.fromkeys(new_classes) if c != BACKGROUND]
    everything = ([BACKGROUND] if include_background else []) + list(dict.fromkeys(old + new))
    return {
        "old": _nanmean_percent(iou, old),
        "new": _nanmean_percent(iou, new),
        "all": _nanmean_percent(iou, everything),
    }


def per_class_table(iou: torch.Tensor, class_names: Sequence[str]) -> list[tuple[str, float]]:
    """``[(name, IoU in percent)]`` in model-id order; NaN for classes that never occurred."""
    if len(class_names) != len(iou):
        raise ValueError(f"{len(class_names)} class names for {len(iou)} IoU values")
    return [(name, float(v) * 100.0) for name, v in zip(class_names, iou.tolist())]


def percent(value: float) -> str:
    """A figure in percent for a table, 'n/a' for NaN (a group without classes)."""
    return "n/a" if value != value else f"{value:.1f}"
