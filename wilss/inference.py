"""Using a trained model: evaluation over a labelled set and a numpy-in, numpy-out ``Predictor``."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from models.segmenter import Segmenter
from wilss.conventions import normalize
from wilss.engine import resolve_device
from wilss.metrics import ConfusionMatrix


@torch.no_grad()
def evaluate(model: Segmenter, dataset: Dataset, *, num_classes: int | None = None, batch_size: int = 8,
             device: str | torch.device | None = None) -> ConfusionMatrix:
    """Confusion matrix of ``model`` over ``dataset`` items (image ``3xHxW``, mask ``HxW``; same size per batch)."""
    device = resolve_device(device)
    model.to(device).eval()
    matrix = ConfusionMatrix(num_classes or model.num_classes)
    for images, masks, *_ in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        logits = model(images.to(device))
        matrix.update(logits.argmax(1).cpu(), masks)
    return matrix


@dataclass
class Prediction:
    mask: np.ndarray     # HxW uint8 class ids
    scores: np.ndarray   # KxHxW float32 softmax probabilities


class Predictor:
    """The one object a demo needs: ``predict(image HxWx3 uint8) -> Prediction``, no gradients."""

    def __init__(self, model: Segmenter, *, device: str | torch.device | None = None) -> None:
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()

    @torch.no_grad()
    def predict(self, image: np.ndarray) -> Prediction:
        x = normalize(image)[None].to(self.device)
        probs = self.model(x).softmax(1)[0]   # logits upsampled from the head's own resolution to the image's
        return Prediction(mask=probs.argmax(0).to(torch.uint8).cpu().numpy(), scores=probs.float().cpu().numpy())
