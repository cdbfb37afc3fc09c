"""The offline pseudo-label pipeline: the competitor that WILSON's paper beats ("offline", CAM-based pseudo-labels
generated once from the tags, then an incremental step trained on them, as in the student report).

1. The project's localizer learns from the tags with WILSON's warm-up losses only (l_CLS + l_LOC, Eq. 3-4), on a
   copy of the old model's encoder (``WeakUpdate`` in the 'warmup' phase throughout, poly learning rate).
2. Its pseudo-labels (the Eq. 5-7 target's argmax, PAMR-refined where ``cfg`` says so: the labels
   ``add-class --export-pseudo`` writes) are computed once for every step image and frozen.
3. A MiB step (``wilss.masked_update``) learns the new classes from them, starting again from the old model.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from typing import Callable, Iterator

import numpy as np
import torch

from models.segmenter import Segmenter
from wilss.config import UpdateConfig
from wilss.engine import Progress, last, make_loader, make_sgd, poly_schedule, run_loop, set_training
from wilss.masked_update import MaskedUpdate
from wilss.pseudo_labels import pseudo_label_mask
from wilss.runtime import RuntimeConfig
from wilss.trainer import WeakUpdate
from wilss.training_data import PixelDataset, TagDataset, masked_training_set

log = logging.getLogger(__name__)


def train_localizer(update: WeakUpdate, epochs: int) -> Iterator[Progress]:
    """``epochs`` of WILSON's warm-up alone (l_CLS + l_LOC; the decoder is never run) on ``update``'s tagged images;
    the learning rate decays (poly) over them. Yields one ``Progress`` per iteration (phase 'warmup')."""
    cfg = update.cfg
    workers = update.runtime.num_workers
    loader = make_loader(update.dataset, cfg if workers is None else replace(cfg, num_workers=workers), update.device)
    optimizer = make_sgd(update.parameter_groups(), cfg)   # the head's group gets no gradient: SGD skips it
    scheduler = poly_schedule(optimizer, total=epochs * len(loader), power=cfg.poly_power)
    set_training(update.model, True, frozen_encoder=cfg.freeze_encoder)
    update.localizer.train()

    def step(batch: tuple, phase: str) -> dict[str, torch.Tensor]:
        images = update.precision.images(batch[0])
        return update.losses(images, batch[1].to(update.device, non_blocking=True), "warmup")

    yield from run_loop(loader=loader, epochs=epochs, step=step, phase_of=lambda epoch: "warmup",
                        optimizer=optimizer, scheduler=scheduler, precision=update.precision)


@torch.no_grad()
def frozen_pseudo_labels(update: WeakUpdate, dataset: TagDataset, min_confidence: float = 0.0) -> list[np.ndarray]:
    """The pseudo-label ``HxW`` uint8 (model ids, 255 below ``min_confidence``) of every image of ``dataset``, seen
    as decoded for training (``dataset.load``: fitted, not augmented)."""
    with update.evaluating():
        return [pseudo_label_mask(update, dataset.load(i), dataset.targets[i], min_confidence)
                for i in range(len(dataset))]


class OfflinePipeline:
    """Localizer from the tags, frozen pseudo-labels, MiB step: ``run()`` yields the progress of the localizer
    ('warmup') and then of the MiB step ('mib'); afterwards ``pseudo_labels`` holds the frozen labels and ``model``
    the result. ``localizer_epochs``: default ``cfg.epochs`` (WILSON's localizer learns l_CLS + l_LOC during the
    whole step). ``pixel_transform``: the MiB step's augmentation of (image, pseudo-label) pairs (default: fitted
    to ``cfg.crop_size``, then ``cfg``'s scale, crop and flip). The input model is never modified."""

    def __init__(self, old_model: Segmenter, dataset: TagDataset, *, num_new: int, cfg: UpdateConfig = UpdateConfig(),
                 device: str | torch.device | None = None, localizer_epochs: int | None = None,
                 min_confidence: float = 0.0, runtime: RuntimeConfig | None = None,
                 pixel_transform: Callable | None = None) -> None:
        self.old_model, self.dataset, self.num_new, self.cfg = old_model, dataset, num_new, cfg
        self.device, self.runtime, self.min_confidence = device, runtime, min_confidence
        self.pixel_transform = pixel_transform
        self.localizer_epochs = cfg.epochs if localizer_epochs is None else localizer_epochs
        if self.localizer_epochs < 1:
            raise ValueError(f"localizer_epochs must be at least 1, got {self.localizer_epochs}")
        self.pseudo_labels: list[np.ndarray] = []
        self.model: Segmenter | None = None

    def run(self) -> Iterator[Progress]:
        localizing = WeakUpdate(self.old_model, self.dataset, num_new=self.num_new, cfg=self.cfg, device=self.device,
                                runtime=self.runtime)
        yield from train_localizer(localizing, self.localizer_epochs)
        self.pseudo_labels = frozen_pseudo_labels(localizing, self.dataset, self.min_confidence)
        del localizing   # the localizer and its encoder copy are done with
        pairs = [(self.dataset.load(i), labels) for i, labels in enumerate(self.pseudo_labels)]
        data = masked_training_set(pairs, self.cfg) if self.pixel_transform is None else \
            PixelDataset(pairs, transform=self.pixel_transform)
        step = MaskedUpdate(self.old_model, data, num_new=self.num_new, cfg=self.cfg, device=self.device,
                            runtime=self.runtime)
        yield from step.run()
        self.model = step.model


def offline_pipeline(old_model: Segmenter, dataset: TagDataset, *, num_new: int, cfg: UpdateConfig = UpdateConfig(),
                     device: str | torch.device | None = None, **options) -> Segmenter:
    """Run ``OfflinePipeline`` to the end (no progress reported); returns the updated model."""
    pipeline = OfflinePipeline(old_model, dataset, num_new=num_new, cfg=cfg, device=device, **options)
    last(pipeline.run())
    return pipeline.model
