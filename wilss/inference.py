"""Using a trained model: evaluation over a labelled set and a numpy-in, numpy-out ``Predictor``.

Large inputs are bounded: with ``max_side``, an image whose longer side exceeds it is segmented at that size and
its labels come back at the input's size (the logits bilinearly upsampled one class at a time, so memory grows
with the image, not with the image times the classes). ``DEFAULT_MAX_SIDE`` is what the CLI and the app use.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from models.segmenter import Segmenter
from wilss.conventions import normalize
from wilss.engine import resolve_device
from wilss.metrics import ConfusionMatrix
from wilss.transforms import fit_longer_side

DEFAULT_MAX_SIDE = 1024   # px: the networks here train on crops of 128-512 px; a larger input only costs time


def fitted_size(height: int, width: int, max_side: Optional[int]) -> tuple[int, int]:
    """``(h, w)`` scaled so the longer side is at most ``max_side`` (aspect kept; unchanged when it fits)."""
    if max_side is None or max(height, width) <= max_side:
        return height, width
    scale = max_side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def upsampled_argmax(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``BxKxhxw`` logits -> ``BxHxW`` int64 labels of their bilinear upsampling to ``size``, one class at a time
    (peak memory ~3 ``BxHxW`` maps instead of ``BxKxHxW``). Ties go to the lower class id, as ``argmax``."""
    best = labels = None
    for k in range(logits.shape[1]):
        up = F.interpolate(logits[:, k:k + 1], size=size, mode="bilinear", align_corners=False)[:, 0]
        if best is None:
            best, labels = up, torch.zeros(up.shape, dtype=torch.int64, device=up.device)
        else:
            better = up > best
            best = torch.where(better, up, best)
            labels[better] = k
    return labels


@torch.no_grad()
def segment(model: Segmenter, x: torch.Tensor, max_side: Optional[int] = None) -> torch.Tensor:
    """``Bx3xHxW`` normalised images -> ``BxHxW`` int64 labels; above ``max_side`` segmented at the fitted size."""
    size = tuple(x.shape[-2:])
    small = fitted_size(*size, max_side)
    if small == size:
        return model(x).argmax(1)
    x = F.interpolate(x, size=small, mode="bilinear", align_corners=False, antialias=True)
    return upsampled_argmax(model(x), size)


@torch.no_grad()
def evaluate(model: Segmenter, dataset: Dataset, *, num_classes: int | None = None, batch_size: int = 8,
             device: str | torch.device | None = None, max_side: Optional[int] = None) -> ConfusionMatrix:
    """Confusion matrix of ``model`` over ``dataset`` items (image ``3xHxW``, mask ``HxW``; same size per batch),
    scored at the masks' size (images larger than ``max_side`` are segmented at that size, see ``segment``)."""
    device = resolve_device(device)
    model.to(device).eval()
    matrix = ConfusionMatrix(num_classes or model.num_classes)
    for images, masks, *_ in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        matrix.update(segment(model, images.to(device), max_side).cpu(), masks)
    return matrix


@dataclass
class Prediction:
    mask: np.ndarray     # HxW uint8 class ids, at the input's size
    scores: np.ndarray   # Kxhxw float32 softmax probabilities at the size the network saw (the input's, or fitted)


class Predictor:
    """The one object a demo needs: ``predict(image HxWx3 uint8) -> Prediction``, no gradients.

    ``max_side``: an image whose longer side exceeds it is segmented fitted to it (``None``: always full size)."""

    def __init__(self, model: Segmenter, *, device: str | torch.device | None = None,
                 max_side: Optional[int] = None) -> None:
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.max_side = max_side

    @torch.no_grad()
    def predict(self, image: np.ndarray) -> Prediction:
        size = image.shape[:2]
        small = fitted_size(*size, self.max_side)
        fitted = image if small == size else fit_longer_side(image, max(small))
        x = normalize(fitted)[None].to(self.device)
        logits = self.model(x)   # upsampled from the head's own resolution to the (fitted) image's
        mask = logits.argmax(1) if small == size else upsampled_argmax(logits, size)
        return Prediction(mask=mask[0].to(torch.uint8).cpu().numpy(),
                          scores=logits.softmax(1)[0].float().cpu().numpy())
