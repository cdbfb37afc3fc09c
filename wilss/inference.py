"""Using a trained model: evaluation over a labelled set and a numpy-in, numpy-out ``Predictor``.

One scale from training to prediction: an image is brought to the network's input scale (``input_side``, the longer
side its checkpoint was trained at; ``conventions.prepare_image``), segmented there, and its labels come back at the
image's own size (nearest, ``conventions.resize_mask``). ``max_side`` stays a safety cap on what the network sees
(``DEFAULT_MAX_SIDE`` is what the CLI and the app use); without an input scale an image is segmented at its own size.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from models.segmenter import Segmenter
from wilss.checkpoint import Checkpoint
from wilss.conventions import input_size, normalize, prepare_image, resize_mask
from wilss.engine import resolve_device
from wilss.metrics import ConfusionMatrix

DEFAULT_MAX_SIDE = 1024   # px: the networks here train on crops of 128-512 px; a larger input only costs time


def fitted_size(height: int, width: int, max_side: Optional[int]) -> tuple[int, int]:
    """``(h, w)`` scaled so the longer side is at most ``max_side`` (aspect kept; unchanged when it fits)."""
    return input_size(height, width, None, max_side)


@torch.no_grad()
def segment(model: Segmenter, x: torch.Tensor, max_side: Optional[int] = None,
            size: Optional[tuple[int, int]] = None) -> torch.Tensor:
    """``Bx3xhxw`` normalised images -> ``BxHxW`` int64 labels at ``size`` (default: the images' own; nearest). Images
    whose longer side exceeds ``max_side`` are segmented at that size."""
    size = tuple(x.shape[-2:]) if size is None else tuple(size)
    small = fitted_size(*x.shape[-2:], max_side)
    if small != tuple(x.shape[-2:]):
        x = F.interpolate(x, size=small, mode="bilinear", align_corners=False, antialias=True)
    labels = model(x).argmax(1)
    return labels if tuple(labels.shape[-2:]) == size else resize_mask(labels, size)


@torch.no_grad()
def evaluate(model: Segmenter, dataset: Dataset, *, num_classes: int | None = None, batch_size: int = 8,
             device: str | torch.device | None = None, max_side: Optional[int] = None) -> ConfusionMatrix:
    """Confusion matrix of ``model`` over ``dataset`` items (image ``3xhxw``, mask ``HxW``; same sizes per batch),
    scored at the masks' size: an image prepared at the network's input scale (``scoring.EvalSet.dataset``) has its
    labels resized (nearest) to its mask's size; images larger than ``max_side`` are segmented at that size."""
    device = resolve_device(device)
    model.to(device).eval()
    matrix = ConfusionMatrix(num_classes or model.num_classes)
    for images, masks, *_ in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        matrix.update(segment(model, images.to(device), max_side, size=tuple(masks.shape[-2:])).cpu(), masks)
    return matrix


@dataclass
class Prediction:
    mask: np.ndarray     # HxW uint8 class ids, at the input's size
    scores: np.ndarray   # Kxhxw float32 softmax probabilities at the size the network saw (the input scale)


class Predictor:
    """The one object a demo needs: ``predict(image HxWx3 uint8) -> Prediction``, no gradients.

    ``model``: a checkpoint (its network, at its recorded input scale) or a bare network. ``input_side``: the longer
    side (px) images are resized to before the network sees them (default: the checkpoint's; ``None`` for a bare
    network: the image's own size). ``max_side``: a cap on that size."""

    def __init__(self, model: Union[Segmenter, Checkpoint], *, input_side: Optional[int] = None,
                 device: str | torch.device | None = None, max_side: Optional[int] = None) -> None:
        if isinstance(model, Checkpoint):
            input_side = model.input_side if input_side is None else input_side
            model = model.model
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.input_side, self.max_side = input_side, max_side

    @torch.no_grad()
    def predict(self, image: np.ndarray) -> Prediction:
        x = normalize(prepare_image(image, self.input_side, max_side=self.max_side))[None].to(self.device)
        logits = self.model(x)   # upsampled from the head's own resolution to the prepared image's
        mask = resize_mask(logits.argmax(1)[0], tuple(image.shape[:2]))
        return Prediction(mask=mask.to(torch.uint8).cpu().numpy(), scores=logits.softmax(1)[0].float().cpu().numpy())
