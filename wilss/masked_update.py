"""MiB's pixel-supervised incremental step (Cermelli et al., CVPR 2020): a frozen step t-1 model plus images with
masks of the new classes -> a model with ``num_new`` more classes.

The losses (``wilss.losses``): MiB's unbiased cross-entropy on the masks (a pixel labelled background may show an
old class, since the step's masks label only the new ones), MiB's unbiased knowledge distillation from the old model
(weight ``cfg.unbiased_kd``, 10), and MiB's classifier init (``cfg.mib_init``). ILT's output distillation
(``cfg.output_distillation``) and frozen encoder (``cfg.freeze_encoder``) and the feature distillation are options
of the same ``UpdateConfig``. No localizer and no warm-up (``cfg.warmup_epochs`` is not read): every epoch trains
the whole network, its learning rate decaying (poly) from the first iteration.

Used for a step where the user has masks (``add-class --masks``) and by the offline pipeline on frozen
pseudo-labels (``wilss.offline``).
"""
from __future__ import annotations

import copy
import logging
from functools import partial
from dataclasses import replace
from typing import Iterator

import torch
from torch.utils.data import Dataset

from models.segmenter import Segmenter, resized
from wilss import losses as L
from wilss.config import UpdateConfig
from wilss.distributed import current_world
from wilss.engine import (Progress, freeze_encoder, make_loader, make_sgd, poly_schedule, resolve_device, run_loop,
                          seed_everything, set_training)
from wilss.resume import Resumer
from wilss.runtime import Precision, RuntimeConfig, optimised
from wilss.trainer import AUX_WEIGHT

log = logging.getLogger(__name__)

PHASE = "mib"   # the phase name its progress reports


class MaskedUpdate:
    """One pixel-supervised step. ``dataset`` items: (image ``3xHxW``, labels ``HxW`` int64 in the new model's ids:
    0 background, ``1..num_old-1`` old classes (counted as background, as MiB does), ``num_old..`` the new classes,
    255 void). The input model is never modified: the result is ``self.model`` (its outputs read through softmax).
    Runs in one process (no torchrun)."""

    def __init__(self, old_model: Segmenter, dataset: Dataset, *, num_new: int, cfg: UpdateConfig = UpdateConfig(),
                 device: str | torch.device | None = None, runtime: RuntimeConfig | None = None) -> None:
        if current_world().distributed:
            raise ValueError("the pixel-supervised (MiB) step runs in one process: start it without torchrun")
        self.cfg, self.dataset, self.num_new = cfg, dataset, num_new
        self.device = resolve_device(device)
        self.runtime = optimised(self.device) if runtime is None else runtime
        self.precision = Precision(self.runtime, self.device)
        seed_everything(cfg.seed)   # new classifier rows without MiB's init start from the seed
        self.old_model = copy.deepcopy(old_model).to(self.device).eval().requires_grad_(False)
        self.num_old = old_model.num_classes  # background + old classes
        self.model = copy.deepcopy(old_model)
        self.model.grow(num_new, mib_init=cfg.mib_init)
        self.model.config["activation"] = "softmax"   # trained with (unbiased) cross-entropy
        self.model.to(self.device)
        if cfg.freeze_encoder:
            freeze_encoder(self.model)
        for module in (self.old_model, self.model):
            self.precision.prepare(module)

    def parameter_groups(self) -> list[dict]:
        """Backbone at ``lr_backbone`` (left out when frozen), heads and classifiers at ``lr_head``."""
        groups = [{"params": list(self.model.encoder.parameters()), "lr": self.cfg.lr_backbone, "name": "backbone"},
                  {"params": list(self.model.decoder_parameters()), "lr": self.cfg.lr_head, "name": "head"}]
        return groups[1:] if self.cfg.freeze_encoder else groups

    def losses(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """The named losses of one iteration on ``images`` ``Bx3xHxW`` and ``labels`` ``BxHxW``, at the labels'
        resolution (the logits are upsampled to it, as in MiB), in the runtime's precision."""
        cfg = self.cfg
        with self.precision.autocast():
            old_logits, old_features = self.precision.frozen(
                partial(self.old_model.forward_features, head_resolution=cfg.old_at_head_resolution), images)
            maps = self.model.encode(images)
            size = labels.shape[-2:]
            logits = self.model.decode(maps, size=size)
            old_logits = resized(old_logits, size)
            out = {"ce": L.unbiased_ce(logits, labels, self.num_old)}
            if self.model.has_aux:
                out["aux"] = AUX_WEIGHT * L.unbiased_ce(self.model.decode_aux(maps, size=size), labels, self.num_old)
            if cfg.unbiased_kd > 0:
                out["kd"] = cfg.unbiased_kd * L.unbiased_kd(logits, old_logits)
            if cfg.output_distillation > 0:
                out["od"] = cfg.output_distillation * L.output_distillation(logits, old_logits)
            if cfg.feature_distillation > 0:
                out["fd"] = cfg.feature_distillation * L.feature_distillation(maps[self.model.feature_key],
                                                                              old_features)
        return out

    def run(self, resumer: Resumer | None = None) -> Iterator[Progress]:
        """Train; yields one ``Progress`` per iteration (phase 'mib'). Stop iterating to cancel.

        ``resumer``: saves resumable snapshots as it goes, and continues from its snapshot when it has one."""
        cfg = self.cfg
        workers = self.runtime.num_workers
        loader = make_loader(self.dataset, cfg if workers is None else replace(cfg, num_workers=workers), self.device)
        self.model.check_train_batch(loader.batch_size)
        optimizer = make_sgd(self.parameter_groups(), cfg)
        total = cfg.epochs * len(loader)
        scheduler = poly_schedule(optimizer, total=total, power=cfg.poly_power)
        set_training(self.model, True, frozen_encoder=cfg.freeze_encoder)
        state = {"model": self.model, "optimizer": optimizer, "scheduler": scheduler}
        if self.precision.scaler is not None:
            state["scaler"] = self.precision.scaler
        start = resumer.restore(state, loader.sampler) if resumer else 0

        def step(batch: tuple, phase: str) -> dict[str, torch.Tensor]:
            return self.losses(self.precision.images(batch[0]), batch[1].to(self.device, non_blocking=True))

        for progress in run_loop(loader=loader, epochs=cfg.epochs, step=step, phase_of=lambda epoch: PHASE,
                                 optimizer=optimizer, scheduler=scheduler, start=start, precision=self.precision):
            if resumer is not None and resumer.due(progress.iteration, len(loader)) and progress.iteration < total:
                resumer.save(progress.iteration, state, loader.sampler, batches_per_epoch=len(loader),
                             batch_size=loader.batch_size)
            yield progress
        self.model.eval().to(memory_format=torch.contiguous_format)  # the result is an ordinary model
