"""Step 0 (pixel labels) and WILSON's weakly-supervised step t (image tags), over one ``run_loop``.

``pretrain`` trains a segmenter with cross-entropy on masks; ``WeakUpdate`` grows a frozen step t-1 model by
new classes learnt from image-level tags (METHOD.md). Both are generators of ``Progress``.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import replace
from functools import partial
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from models.segmenter import Segmenter
from wilss import losses as L
from wilss.config import PretrainConfig, UpdateConfig
from wilss.conventions import IGNORE_INDEX, denormalize, normalize
from wilss.engine import (Progress, Snapshot, make_loader, make_sgd, poly_schedule, resolve_device, run_loop,
                          seed_everything)
from wilss.localizer import Localizer
from wilss.pamr import balanced_ce, pamr, pamr_pseudo_label
from wilss.runtime import Precision, RuntimeConfig, maybe_compile, optimised

log = logging.getLogger(__name__)


def pretrain(model: Segmenter, dataset: Dataset, cfg: PretrainConfig = PretrainConfig(),
             *, device: str | torch.device | None = None) -> Iterator[Progress]:
    """Step 0: train ``model`` in place on ``dataset`` items (image ``3xHxW``, mask ``HxW``, void = 255).

    ``cfg.loss``: 'bce' (per-class sigmoid, the reference code's step 0, which the weak steps read through
    sigmoid(o)) or 'ce' (softmax cross-entropy). The model's ``activation`` is set to match.
    """
    device = resolve_device(device)
    seed_everything(cfg.seed)
    model.to(device).train()
    loader = make_loader(dataset, cfg, device)
    optimizer = make_sgd([{"params": list(model.parameters()), "lr": cfg.lr}], cfg)
    scheduler = poly_schedule(optimizer, total=cfg.epochs * len(loader), power=cfg.poly_power)

    model.config["activation"] = "sigmoid" if cfg.loss == "bce" else "softmax"
    criterion = L.pixel_bce if cfg.loss == "bce" else partial(F.cross_entropy, ignore_index=IGNORE_INDEX)

    def step(batch: tuple, phase: str) -> dict[str, torch.Tensor]:
        images, masks = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        return {cfg.loss: criterion(model(images), masks)}

    yield from run_loop(loader=loader, epochs=cfg.epochs, step=step, phase_of=lambda epoch: "pretrain",
                        optimizer=optimizer, scheduler=scheduler)


class WeakUpdate:
    """One weakly-supervised step: a frozen old model plus tagged images -> a model with ``num_new`` more classes.

    ``dataset`` items are (image ``3xHxW``, targets ``K-1`` multi-hot over the new model's non-background classes,
    index); the last ``num_new`` columns are the new classes, the others are read only in the relaxed setting.
    ``snapshot_items``: (image ``HxWx3`` uint8, targets) pairs rendered every ``snapshot_every`` iterations.
    ``runtime``: precision, memory format, compilation, workers (``wilss.runtime``); default ``optimised(device)``.
    The input model is never modified: the result is ``self.model``.
    """

    def __init__(self, old_model: Segmenter, dataset: Dataset, *, num_new: int, cfg: UpdateConfig = UpdateConfig(),
                 device: str | torch.device | None = None,
                 snapshot_items: Sequence[tuple[np.ndarray, np.ndarray]] = (), snapshot_every: int = 0,
                 runtime: RuntimeConfig | None = None) -> None:
        self.cfg, self.dataset, self.num_new = cfg, dataset, num_new
        self.device = resolve_device(device)
        self.runtime = optimised(self.device) if runtime is None else runtime
        self.precision = Precision(self.runtime, self.device)
        seed_everything(cfg.seed)  # new classifier rows (without MiB init) and the localizer start from the seed
        self.old_model = copy.deepcopy(old_model).to(self.device).eval().requires_grad_(False)
        self.num_old = old_model.num_classes  # background + old classes
        self.model = copy.deepcopy(old_model)
        self.model.grow(num_new, mib_init=cfg.mib_init)
        self.model.config["activation"] = "sigmoid"  # l_SEG (Eq. 8) trains every output as a sigmoid
        self.model.to(self.device)
        self.localizer = Localizer(self.model.feature_channels, self.model.num_classes,
                                   hidden=cfg.localizer_channels).to(self.device)
        self.snapshot_items, self.snapshot_every = list(snapshot_items), snapshot_every
        for module in (self.old_model, self.model, self.localizer):
            self.precision.prepare(module)
        self._compiled_losses = maybe_compile(self._losses, self.runtime)

    def parameter_groups(self) -> list[dict]:
        """Per-group learning rates: backbone 1e-3; head, classifier and localizer 1e-2 (paper defaults)."""
        head = list(self.model.head.parameters()) + list(self.model.classifier.parameters())
        return [{"params": list(self.model.encoder.parameters()), "lr": self.cfg.lr_backbone, "name": "backbone"},
                {"params": head, "lr": self.cfg.lr_head, "name": "head"},
                {"params": list(self.localizer.parameters()), "lr": self.cfg.lr_localizer, "name": "localizer"}]

    def losses(self, images: torch.Tensor, targets: torch.Tensor, phase: str) -> dict[str, torch.Tensor]:
        """The named losses of one iteration on a batch (``phase``: 'warmup' or 'joint'), in the runtime's precision
        (autocast; each loss itself is float32)."""
        with self.precision.autocast():
            return self._compiled_losses(images, targets, phase)

    def _losses(self, images: torch.Tensor, targets: torch.Tensor, phase: str) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        tags_new = targets[:, -self.num_new:]
        old_logits, old_features = self.precision.frozen(self.old_model.forward_features, images)
        old_probs = self.old_model.probabilities(old_logits)
        features = self.model.encoder(images)
        z = self.localizer(features)  # one encoder pass feeds the localizer and (below) the decoder
        class_logits = L.aggregate_scores(z, gamma=cfg.focal_gamma, lam=cfg.focal_lambda, eps=cfg.gwp_eps)
        if cfg.relaxed:
            out = {"cls": L.classification_loss(class_logits[:, 1:], targets)}
        else:
            out = {"cls": L.classification_loss(class_logits[:, -self.num_new:], tags_new)}
        if cfg.old_model_prior:
            out["loc"] = L.localization_loss(z[:, : self.num_old], old_probs)
        if cfg.feature_distillation > 0:
            out["fd"] = cfg.feature_distillation * L.feature_distillation(features, old_features)
        if phase == "warmup":
            return out
        target = L.pseudo_label(z.detach(), old_probs if cfg.old_model_targets else None, tags_new, alpha=cfg.alpha)
        weights = L.localized_weights(target, tags_new) if cfg.drop_unlocalized else None
        out["seg"] = L.segmentation_loss(self.model.decode(features), target, weights)
        if cfg.pamr_self_training:
            out["self"] = self._self_training_loss(images, z, old_logits, targets)
        return out

    def _self_training_loss(self, images: torch.Tensor, z: torch.Tensor, old_logits: torch.Tensor,
                            targets: torch.Tensor) -> torch.Tensor:
        """Reference-code extra: class-balanced CE of the localizer against thresholded PAMR-refined masks."""
        with torch.no_grad():
            small = F.interpolate(denormalize(images), size=z.shape[-2:], mode="bilinear", align_corners=True)
            present_old = F.one_hot(old_logits.argmax(1), self.num_old).flatten(1, 2).amax(1)[:, 1:].to(z.dtype)
            tags = targets.clone()
            if not self.cfg.relaxed:  # old-class tags unknown: take the old model's predicted presence
                tags[:, : self.num_old - 1] = present_old
            masks = z.detach().softmax(1)
            masks[:, 1:] *= tags[:, :, None, None]
            labels, _ = pamr_pseudo_label(pamr(small, masks), tags)
        return balanced_ce(z, labels)

    def run(self) -> Iterator[Progress]:
        """Train; yields one ``Progress`` per iteration. Stop iterating to cancel (``self.model`` is a copy)."""
        cfg = self.cfg
        workers = self.runtime.num_workers
        loader = make_loader(self.dataset, cfg if workers is None else replace(cfg, num_workers=workers), self.device)
        optimizer = make_sgd(self.parameter_groups(), cfg)
        warmup_iterations = cfg.warmup_epochs * len(loader)
        scheduler = poly_schedule(optimizer, total=cfg.epochs * len(loader), power=cfg.poly_power,
                                  start=warmup_iterations)
        self.model.train()
        self.localizer.train()

        def step(batch: tuple, phase: str) -> dict[str, torch.Tensor]:
            images = self.precision.images(batch[0])
            return self.losses(images, batch[1].to(self.device, non_blocking=True), phase)

        def snapshot(iteration: int) -> list[Snapshot]:
            due = self.snapshot_every and (iteration % self.snapshot_every == 0 or iteration == total)
            return self.snapshots() if due and self.snapshot_items else []

        total = cfg.epochs * len(loader)
        phase_of = lambda epoch: "warmup" if epoch < cfg.warmup_epochs else "joint"  # noqa: E731
        yield from run_loop(loader=loader, epochs=cfg.epochs, step=step, phase_of=phase_of,
                            optimizer=optimizer, scheduler=scheduler, snapshot=snapshot, precision=self.precision)
        self.model.eval().to(memory_format=torch.contiguous_format)  # the result is an ordinary model

    @torch.no_grad()
    def snapshots(self) -> list[Snapshot]:
        """CAMs, pseudo-labels and predictions for ``snapshot_items``, in eval mode."""
        was_training = self.model.training
        self.model.eval()
        self.localizer.eval()
        out = [self._snapshot(i, image, targets) for i, (image, targets) in enumerate(self.snapshot_items)]
        self.model.train(was_training)
        self.localizer.train(was_training)
        return out

    def _snapshot(self, index: int, image: np.ndarray, targets: np.ndarray) -> Snapshot:
        x = normalize(image)[None].to(self.device)
        size = image.shape[:2]
        logits, features = self.model.forward_features(x)
        z = self.localizer(features)
        old_probs = self.old_model.probabilities(self.old_model.forward_features(x)[0])
        tags_new = torch.as_tensor(np.asarray(targets), dtype=torch.float32, device=self.device)[None, -self.num_new:]
        target = L.pseudo_label(z, old_probs if self.cfg.old_model_targets else None, tags_new, alpha=self.cfg.alpha)
        cams = F.interpolate(z.softmax(1)[:, -self.num_new:], size=size, mode="bilinear", align_corners=False)
        pseudo = F.interpolate(target.argmax(1, keepdim=True).float(), size=size, mode="nearest")
        prediction = F.interpolate(logits, size=size, mode="bilinear", align_corners=False).argmax(1)
        return Snapshot(index=index, image=image, cams=cams[0].cpu().numpy().astype(np.float32),
                        pseudo_label=pseudo[0, 0].cpu().numpy().astype(np.uint8),
                        prediction=prediction[0].cpu().numpy().astype(np.uint8))
