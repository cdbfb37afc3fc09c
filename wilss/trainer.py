"""Step 0 (pixel labels) and WILSON's weakly-supervised step t (image tags), over one ``run_loop``.

``pretrain`` trains a segmenter with cross-entropy on masks; ``WeakUpdate`` grows a frozen step t-1 model by
new classes learnt from image-level tags (docs/method.md). Both are generators of ``Progress``.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import time
from dataclasses import replace
from functools import partial
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from models.segmenter import Segmenter, resized
from wilss import hrhf as H
from wilss import losses as L
from wilss.config import PretrainConfig, UpdateConfig
from wilss.conventions import IGNORE_INDEX, denormalize, normalize
from wilss.distributed import current_world, reduce_mean, wrap_for_training
from wilss.engine import (Progress, Snapshot, freeze_encoder, make_loader, make_sgd, poly_schedule, resolve_device,
                          run_loop, seed_everything, set_training)
from wilss.localizer import Localizer
from wilss.pamr import balanced_ce, pamr, pamr_pseudo_label, refine_target
from wilss.regions import region_prior_target
from wilss.resume import Resumer
from wilss.runtime import Precision, RuntimeConfig, maybe_compile, optimised

log = logging.getLogger(__name__)

AUX_WEIGHT = 0.5   # weight of an auxiliary head's loss (FCN / DeepLabV3), as in torchvision's reference recipe


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
    model.check_train_batch(loader.batch_size)
    encoder_lr = cfg.lr if cfg.encoder_lr is None else cfg.encoder_lr
    optimizer = make_sgd([{"params": list(model.decoder_parameters()), "lr": cfg.lr},
                          {"params": list(model.encoder.parameters()), "lr": encoder_lr}], cfg)
    scheduler = poly_schedule(optimizer, total=cfg.epochs * len(loader), power=cfg.poly_power)

    model.config["activation"] = "sigmoid" if cfg.loss == "bce" else "softmax"
    criterion = L.pixel_bce if cfg.loss == "bce" else partial(F.cross_entropy, ignore_index=IGNORE_INDEX)

    def step(batch: tuple, phase: str) -> dict[str, torch.Tensor]:
        images, masks = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        if not model.has_aux:
            return {cfg.loss: criterion(model(images), masks)}
        maps = model.encode(images)
        return {cfg.loss: criterion(model.decode(maps, size=masks.shape[-2:]), masks),
                "aux": AUX_WEIGHT * criterion(model.decode_aux(maps, size=masks.shape[-2:]), masks)}

    yield from run_loop(loader=loader, epochs=cfg.epochs, step=step, phase_of=lambda epoch: "pretrain",
                        optimizer=optimizer, scheduler=scheduler)


def localize(model: Segmenter, localizer: Localizer,
             maps: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``model``'s encoder maps -> (the localizer's encoder map ``BxCfxhxw``, scores z ``BxKxh'xw'``: at the detail
    map's resolution when the localizer reads one)."""
    features = maps[model.feature_key]
    detail = maps[model.detail_key] if localizer.detail is not None else None
    return features, localizer(features, detail)


class TrainedPair(nn.Module):
    """The new model and the localizer as one module, so that one forward feeds every trained loss: under
    DistributedDataParallel, gradients are synchronised only through the wrapped module's own forward."""

    def __init__(self, model: Segmenter, localizer: Localizer) -> None:
        super().__init__()
        self.model, self.localizer = model, localizer

    def forward(self, images: torch.Tensor, decode: bool) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor],
                                                                  Optional[torch.Tensor]]:
        """``Bx3xHxW`` -> (the localizer's encoder map ``BxCfxhxw``, localizer scores z ``BxKxhxw``, decoder logits
        and auxiliary-head logits ``BxKxhxw`` at z's size when ``decode`` (aux: None without that head), else None:
        the warm-up trains the localizer alone)."""
        maps = self.model.encode(images)  # one encoder pass feeds the localizer and the decoder
        features, z = localize(self.model, self.localizer, maps)
        if not decode:
            return features, z, None, None
        size = z.shape[-2:]
        aux = self.model.decode_aux(maps, size=size) if self.model.has_aux else None
        return features, z, self.model.decode(maps, size=size), aux


class WeakUpdate:
    """One weakly-supervised step: a frozen old model plus tagged images -> a model with ``num_new`` more classes.

    ``dataset`` items are (image ``3xHxW``, targets ``K-1`` multi-hot over the new model's non-background classes,
    index); the last ``num_new`` columns are the new classes, the others are read only in the relaxed setting.
    ``snapshot_items``: (image ``HxWx3`` uint8, targets) pairs rendered every ``snapshot_every`` iterations.
    ``runtime``: precision, memory format, compilation, workers (``wilss.runtime``); default ``optimised(device)``.
    ``class_names``: the old model's (background first), to read ``cfg.replay_classes`` by name (HRHF replay).
    The input model is never modified: the result is ``self.model``.
    Under an initialised process group (torchrun) each process trains its share of every global batch through
    DistributedDataParallel (``sync_bn``: SyncBatchNorm, CUDA only); otherwise it runs in this process alone.
    """

    def __init__(self, old_model: Segmenter, dataset: Dataset, *, num_new: int, cfg: UpdateConfig = UpdateConfig(),
                 device: str | torch.device | None = None,
                 snapshot_items: Sequence[tuple[np.ndarray, np.ndarray]] = (), snapshot_every: int = 0,
                 sync_bn: bool = False, runtime: RuntimeConfig | None = None,
                 class_names: Sequence[str] | None = None) -> None:
        self.cfg, self.dataset, self.num_new = cfg, dataset, num_new
        self.device = resolve_device(device)
        self.runtime = optimised(self.device) if runtime is None else runtime
        self.precision = Precision(self.runtime, self.device)
        seed_everything(cfg.seed)  # new classifier rows (without MiB init) and the localizer start from the seed
        self.old_model = copy.deepcopy(old_model).to(self.device).eval().requires_grad_(False)
        self.num_old = old_model.num_classes  # background + old classes
        # HRHF replay: the old classes to invert (checked now: a bad name fails before anything runs)
        self.replay_classes = H.replay_class_ids(cfg.replay_classes, class_names, self.num_old)
        self.replay: H.ReplayBank | None = None   # the fake images, once synthesised (run)
        self.replay_seconds = 0.0
        self.model = copy.deepcopy(old_model)
        self.model.grow(num_new, mib_init=cfg.mib_init)
        self.model.config["activation"] = "sigmoid"  # l_SEG (Eq. 8) trains every output as a sigmoid
        self.model.to(self.device)
        if cfg.freeze_encoder:   # ILT's option: the localizer and the decoder learn on the old encoder's features
            freeze_encoder(self.model)
        if cfg.localizer_detail and self.model.detail_key is None:
            raise ValueError(f"the {self.model.config.get('arch')} network has no detail map for the localizer: "
                             "leave localizer_detail off (command line: --no-localizer-detail)")
        self.localizer = Localizer(self.model.feature_channels, self.model.num_classes,
                                   hidden=cfg.localizer_channels,
                                   detail_channels=self.model.detail_channels if cfg.localizer_detail else 0
                                   ).to(self.device)
        self.snapshot_items, self.snapshot_every = list(snapshot_items), snapshot_every
        self.world, self.sync_bn = current_world(), sync_bn
        self.net: nn.Module = TrainedPair(self.model, self.localizer)  # DDP-wrapped by run() under torchrun
        if self.world.world_size > 1:  # same initial weights (DDP broadcasts rank 0's), different augmentations
            seed_everything(cfg.seed + self.world.rank)
        for module in (self.old_model, self.model, self.localizer):
            self.precision.prepare(module)
        self._compiled_losses = maybe_compile(self._losses, self.runtime)

    def parameter_groups(self) -> list[dict]:
        """Per-group learning rates: backbone 1e-3; head, classifier and localizer 1e-2 (paper defaults)."""
        head = list(self.model.decoder_parameters())   # every head and classifier, the auxiliary one too
        groups = [{"params": list(self.model.encoder.parameters()), "lr": self.cfg.lr_backbone, "name": "backbone"},
                  {"params": head, "lr": self.cfg.lr_head, "name": "head"},
                  {"params": list(self.localizer.parameters()), "lr": self.cfg.lr_localizer, "name": "localizer"}]
        return groups[1:] if self.cfg.freeze_encoder else groups

    def losses(self, images: torch.Tensor, targets: torch.Tensor, phase: str) -> dict[str, torch.Tensor]:
        """The named losses of one iteration on a batch (``phase``: 'warmup' or 'joint'), in the runtime's precision
        (autocast; each loss itself is float32)."""
        fake = None
        if self.replay is not None and phase != "warmup":   # HRHF: half as many fake images join the batch
            fake = self.replay.draw(H.fakes_per_batch(len(images), len(self.replay)))
            fake = (resized(fake[0], images.shape[-2:]).contiguous(memory_format=self.precision.memory_format),
                    fake[1])
        split = H.split_batch_norm(self.net, len(images)) if fake is not None else contextlib.nullcontext()
        with self.precision.autocast(), split:
            return self._compiled_losses(images, targets, phase, fake)

    def _losses(self, images: torch.Tensor, targets: torch.Tensor, phase: str,
                fake: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        tags_new = targets[:, -self.num_new:]
        old_logits, old_features = self.precision.frozen(self._old_forward, images)
        if fake is None:
            features, z, seg_logits, aux_logits = self.net(images, decode=phase != "warmup")
        else:   # one forward over real + fake (``losses`` splits the batch-norm statistics: ``H.split_batch_norm``)
            features, z, seg_logits, aux_logits = self.net(torch.cat([images, fake[0]]), decode=True)
            n = len(images)
            replay = cfg.replay_weight * H.replay_distillation(seg_logits[n:], resized(fake[1], seg_logits.shape[-2:]))
            features, z, seg_logits = features[:n], z[:n], seg_logits[:n]
            aux_logits = None if aux_logits is None else aux_logits[:n]
        old_probs = self.old_model.probabilities(resized(old_logits, z.shape[-2:]))  # at z's resolution
        class_logits = L.aggregate_scores(z, gamma=cfg.focal_gamma, lam=cfg.focal_lambda, eps=cfg.gwp_eps)
        if cfg.auto_old_tags:
            old_tags = L.confident_presence(old_probs[:, 1:], threshold=cfg.auto_tag_threshold,
                                            min_fraction=cfg.auto_tag_min_fraction)
            out = {"cls": L.classification_loss(class_logits[:, 1:], torch.cat([old_tags, tags_new], dim=1))}
        elif cfg.relaxed:
            out = {"cls": L.classification_loss(class_logits[:, 1:], targets)}
        else:
            out = {"cls": L.classification_loss(class_logits[:, -self.num_new:], tags_new)}
        if cfg.old_model_prior:
            out["loc"] = L.localization_loss(z[:, : self.num_old], old_probs)
        if cfg.feature_distillation > 0:
            out["fd"] = cfg.feature_distillation * L.feature_distillation(features, old_features)
        if phase == "warmup":
            return out
        # l_SEG at the target's resolution: z's, unless refined
        target = self._refined(images, self._pseudo_label(z.detach(), old_probs, tags_new))
        aux_logits = None if aux_logits is None else resized(aux_logits, target.shape[-2:])
        weights = L.localized_weights(target, tags_new) if cfg.drop_unlocalized else None
        if cfg.output_distillation > 0:   # ILT's L'_D on the old channels, at the decoder's resolution
            old_at_p = resized(old_logits, seg_logits.shape[-2:])
            out["od"] = cfg.output_distillation * L.output_distillation(seg_logits, old_at_p)
        seg_logits = resized(seg_logits, target.shape[-2:])
        out["seg"] = L.segmentation_loss(seg_logits, target, weights)
        if aux_logits is not None:  # the auxiliary head learns the same pseudo-label target
            out["aux"] = AUX_WEIGHT * L.segmentation_loss(aux_logits, target, weights)
        if cfg.pamr_self_training:
            out["self"] = self._self_training_loss(images, z, old_logits, targets)
        if fake is not None:
            out["replay"] = replay
        return out

    def _old_forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The frozen old model's (logits, features), the logits at ``cfg.old_at_head_resolution``'s choice."""
        return self.old_model.forward_features(images, head_resolution=self.cfg.old_at_head_resolution)

    def _pseudo_label(self, z: torch.Tensor, old_probs: torch.Tensor, tags_new: torch.Tensor) -> torch.Tensor:
        """The Eq. 5-7 target with the config's options (``L.pseudo_label``)."""
        cfg = self.cfg
        return L.pseudo_label(z, old_probs if cfg.old_model_targets else None, tags_new, alpha=cfg.alpha,
                              new_on_old_background=cfg.new_on_old_background, no_background=cfg.no_background)

    def _refined(self, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The Eq. 5-7 target refined by PAMR on the (normalised) ``images`` at ``cfg.pamr_refine_stride`` (beyond
        the paper: a sharper target at a higher resolution), then averaged over the images' superpixels with
        ``cfg.region_prior`` (beyond the paper, at the images' resolution); unchanged when both are off."""
        cfg = self.cfg
        if cfg.pamr_refine_stride:
            target = refine_target(denormalize(images), target, stride=cfg.pamr_refine_stride, alpha=cfg.alpha,
                                   iterations=cfg.pamr_refine_iterations,
                                   fine_iterations=cfg.pamr_refine_fine_iterations)
        if cfg.region_prior != "none":
            target = region_prior_target(denormalize(images), target, method=cfg.region_prior,
                                         segments=cfg.region_segments, scale=cfg.region_scale,
                                         weight=cfg.region_weight)
        return target

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

    def run(self, resumer: Resumer | None = None) -> Iterator[Progress]:
        """Train; yields one ``Progress`` per iteration. Stop iterating to cancel (``self.model`` is a copy).

        ``resumer``: saves resumable snapshots as it goes, and continues from its snapshot when it has one.
        Under several processes the reported losses are means over all of them.
        """
        cfg = self.cfg
        workers = self.runtime.num_workers
        loader = make_loader(self.dataset, cfg if workers is None else replace(cfg, num_workers=workers), self.device,
                             self.world)
        self.model.check_train_batch(loader.batch_size)
        optimizer = make_sgd(self.parameter_groups(), cfg)
        warmup_iterations = cfg.warmup_epochs * len(loader)
        scheduler = poly_schedule(optimizer, total=cfg.epochs * len(loader), power=cfg.poly_power,
                                  start=warmup_iterations)
        # The warm-up leaves the decoder without gradients: DDP must be told to look for unused parameters.
        self.net = wrap_for_training(TrainedPair(self.model, self.localizer), world=self.world, device=self.device,
                                     sync_bn=self.sync_bn, find_unused_parameters=cfg.warmup_epochs > 0)
        self.train_mode(True)
        state = {"model": self.model, "localizer": self.localizer, "optimizer": optimizer, "scheduler": scheduler}
        if self.precision.scaler is not None:  # fp16: the loss scale resumes too
            state["scaler"] = self.precision.scaler
        start = resumer.restore(state, loader.sampler) if resumer else 0
        if cfg.replay_images and self.replay is None:
            yield from self._synthesise()

        def step(batch: tuple, phase: str) -> dict[str, torch.Tensor]:
            images = self.precision.images(batch[0])
            return self.losses(images, batch[1].to(self.device, non_blocking=True), phase)

        def snapshot(iteration: int) -> list[Snapshot]:
            due = self.snapshot_every and (iteration % self.snapshot_every == 0 or iteration == total)
            return self.snapshots() if due and self.snapshot_items else []

        total = cfg.epochs * len(loader)
        phase_of = lambda epoch: "warmup" if epoch < cfg.warmup_epochs else "joint"  # noqa: E731
        for progress in run_loop(loader=loader, epochs=cfg.epochs, step=step, phase_of=phase_of,
                                 optimizer=optimizer, scheduler=scheduler, snapshot=snapshot, start=start,
                                 precision=self.precision):
            due = resumer is not None and resumer.due(progress.iteration, len(loader))
            progress.losses, due = reduce_mean(progress.losses, any_flag=due)
            if due and progress.iteration < total:  # after the last iteration the checkpoint itself is written
                resumer.save(progress.iteration, state, loader.sampler, batches_per_epoch=len(loader),
                             batch_size=loader.batch_size)
            yield progress
        self.net.zero_grad(set_to_none=True)   # the last step's gradients (a model's worth) are read by nothing now
        self.model.eval().to(memory_format=torch.contiguous_format)  # the result is an ordinary model

    def _synthesise(self) -> Iterator[Progress]:
        """HRHF: invert the old model into ``cfg.replay_images`` images at the crop size, once; one ``Progress``
        (phase 'replay', loss 'inversion') per inversion step; then ``self.replay`` holds them."""
        cfg, start, inversion = self.cfg, time.perf_counter(), H.InversionConfig()
        total = cfg.replay_steps * -(-cfg.replay_images // inversion.batch_size)
        images = None
        for step, loss, images in H.synthesise(self.old_model, num=cfg.replay_images, size=cfg.crop_size,
                                               classes=self.replay_classes, steps=cfg.replay_steps, cfg=inversion,
                                               seed=cfg.seed, device=self.device):
            if images is None:
                yield Progress(iteration=step, total_iterations=total, epoch=0, phase="replay",
                               losses={"inversion": loss}, lr=inversion.lr, elapsed_s=time.perf_counter() - start)
        images = images.to(self.device)
        self.replay = H.ReplayBank(images, H.old_probabilities(self.old_model, images, device=self.device),
                                   seed=cfg.seed)
        self.replay_seconds = time.perf_counter() - start
        log.info("HRHF: %d replay images in %.1f s", len(images), self.replay_seconds)

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[None]:
        """Eval mode for the model and localizer inside the block, then back to what they were."""
        was_training = self.model.training
        self.train_mode(False)
        try:
            yield
        finally:
            self.train_mode(was_training)

    def train_mode(self, training: bool) -> None:
        """The model and the localizer in training (or eval) mode; a frozen encoder (``cfg.freeze_encoder``) or its
        batch-norm layers (``cfg.freeze_encoder_bn``) stay in eval mode: the old model's statistics, unchanged."""
        set_training(self.model, training, frozen_encoder=self.cfg.freeze_encoder,
                     frozen_bn=self.cfg.freeze_encoder_bn)
        self.localizer.train(training)

    @torch.no_grad()
    def snapshots(self) -> list[Snapshot]:
        """CAMs, pseudo-labels and predictions for ``snapshot_items``, in eval mode."""
        with self.evaluating():
            return [self.snapshot_of(i, image, targets) for i, (image, targets) in enumerate(self.snapshot_items)]

    @torch.no_grad()
    def snapshot_of(self, index: int, image: np.ndarray, targets: np.ndarray) -> Snapshot:
        """What the update thinks of one image ``HxWx3`` uint8 with targets ``K-1`` (use inside ``evaluating``)."""
        x = normalize(image)[None].to(self.device)
        size = image.shape[:2]
        maps = self.model.encode(x)
        _, z = localize(self.model, self.localizer, maps)
        logits = self.model.decode(maps)
        old_probs = self.old_model.probabilities(resized(self._old_forward(x)[0], z.shape[-2:]))
        tags_new = torch.as_tensor(np.asarray(targets), dtype=torch.float32, device=self.device)[None, -self.num_new:]
        target = self._refined(x, self._pseudo_label(z, old_probs, tags_new))
        cams = F.interpolate(z.softmax(1)[:, -self.num_new:], size=size, mode="bilinear", align_corners=False)
        best, winner = target.max(1, keepdim=True)
        pseudo = F.interpolate(torch.cat([winner.float(), best.float()], 1), size=size, mode="nearest")
        prediction = F.interpolate(logits, size=size, mode="bilinear", align_corners=False).argmax(1)
        return Snapshot(index=index, image=image, cams=cams[0].cpu().numpy().astype(np.float32),
                        pseudo_label=pseudo[0, 0].cpu().numpy().astype(np.uint8),
                        pseudo_confidence=pseudo[0, 1].cpu().numpy().astype(np.float32),
                        prediction=prediction[0].cpu().numpy().astype(np.uint8))
