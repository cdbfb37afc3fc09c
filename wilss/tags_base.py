"""Step 0 from image tags alone: single-stage weakly-supervised segmentation (Araslanov & Roth, CVPR 2020).

The user has photos and tags, no masks and no model. One segmentation network learns from the tags:

1. its own scores ``BxKxhxw`` (K = background + the tagged classes) are aggregated to image-level class scores by
   nGWP + the focal penalty (``wilss.losses.aggregate_scores``, WILSON's Eq. 1-2, which come from this paper), and
   l_CLS is the multi-label soft margin against the tags, background always tagged (without it nothing keeps the
   tagged classes from covering the whole image);
2. after ``warmup_epochs``, a pseudo ground truth is made from those scores, no gradient: softmax, classes the
   image's tags exclude set to 0, refined by PAMR along the image's edges at 1/``pamr_stride`` of the input, then
   thresholded per class (``wilss.pamr.pamr_pseudo_label``: ambiguous pixels ignored); l_SEG is the class-balanced
   cross-entropy of the scores against it (``wilss.pamr.balanced_ce``);
3. the stochastic gate: during training the deep head's scores are mixed pixel by pixel with those of a shallow head
   on the encoder's detail map, ``x = (1 - r) (x_deep - psi x_shallow) / (1 - psi) + r x_shallow`` with
   ``r ~ Bernoulli(psi)``, whose expectation is ``x_deep``; at test time the gate is deterministic and gives that
   expectation. The shallow head is dropped after training (as WILSON's localizer), so the result is an ordinary
   ``Segmenter`` whose classes can grow by WILSON steps. (The paper gates features before its last layers; gating the
   scores of two heads keeps the network the builders make, and the classifier is linear in either.)

The network is trained with softmax (``activation = 'softmax'``): the weak steps read it that way.
"""
from __future__ import annotations

import logging
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from models.segmenter import Segmenter, resized
from wilss import losses as L
from wilss.config import TagsBaseConfig
from wilss.conventions import BACKGROUND_NAME, denormalize, normalize
from wilss.data import DataError
from wilss.engine import (Progress, Snapshot, make_loader, make_sgd, poly_schedule, resolve_device, run_loop,
                          seed_everything)
from wilss.pamr import balanced_ce, pamr, pamr_pseudo_label
from wilss.tags import TaggedSet

log = logging.getLogger(__name__)

SHALLOW_CHANNELS = 64   # hidden channels of the training-only shallow head
# A class tagged on at least this share of the images gets a warning: l_CLS has almost nothing to contrast (CamVid's
# street classes, in 95-100 % of the images, left a tags-only base at 5 % of the pixel base's mIoU).
NEARLY_EVERY = 0.9


def stochastic_gate(deep: torch.Tensor, shallow: torch.Tensor, rate: float, *, training: bool) -> torch.Tensor:
    """The stochastic gate over two ``BxKxhxw`` maps: in training each element takes the shallow value with
    probability ``rate`` (psi), else ``(deep - rate * shallow) / (1 - rate)``, so that the expectation is ``deep``;
    at test time, ``deep`` (that expectation). ``rate`` 0: ``deep`` always."""
    if not training or rate == 0:
        return deep
    r = torch.bernoulli(torch.full_like(deep, rate))
    return (1 - r) * (deep - rate * shallow) / (1 - rate) + r * shallow


class ShallowHead(nn.Module):
    """The gate's shallow branch: Conv3x3 -> BN -> ReLU -> Conv1x1 to K scores, on the encoder's detail map."""

    def __init__(self, in_channels: int, num_classes: int, hidden: int = SHALLOW_CHANNELS) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Conv2d(in_channels, hidden, 3, padding=1, bias=False), nn.BatchNorm2d(hidden),
                                    nn.ReLU(inplace=True), nn.Conv2d(hidden, num_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class GatedScores(nn.Module):
    """The segmenter and the shallow head as one module: ``Bx3xHxW`` -> scores ``BxKxhxw`` at the head's
    resolution, gated in training mode."""

    def __init__(self, model: Segmenter, rate: float) -> None:
        super().__init__()
        if rate > 0 and model.detail_key is None:
            raise ValueError(f"the {model.config.get('arch')} network names no detail map for the stochastic gate; "
                             "use gate_rate 0")
        self.model, self.rate = model, rate
        self.shallow = ShallowHead(model.detail_channels, model.num_classes) if rate > 0 else None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        maps = self.model.encode(images)
        deep = self.model.decode(maps)
        if self.shallow is None or not self.training:
            return deep
        shallow = resized(self.shallow(maps[self.model.detail_key]), deep.shape[-2:])
        return stochastic_gate(deep, shallow, self.rate, training=True)


@torch.no_grad()
def pseudo_ground_truth(images: torch.Tensor, scores: torch.Tensor, tags: torch.Tensor, *, stride: int,
                        iterations: int) -> torch.Tensor:
    """Self-supervision target from the network's own scores ``BxKxhxw``: softmax, untagged classes set to 0,
    upsampled to 1/``stride`` of ``images`` (``Bx3xHxW`` normalised), refined there by PAMR and thresholded per class.
    ``tags``: ``Bx(K-1)`` multi-hot. Returns ``BxH'xW'`` class ids, ``IGNORE_INDEX`` where ambiguous."""
    size = (images.shape[-2] // stride, images.shape[-1] // stride)
    masks = resized(scores.detach().float(), size).softmax(1)
    masks[:, 1:] *= tags.to(masks.dtype)[:, :, None, None]
    refined = pamr(denormalize(images.float()), masks, iterations=iterations)
    return pamr_pseudo_label(refined, tags)[0]


def tags_losses(net: GatedScores, images: torch.Tensor, tags: torch.Tensor, phase: str,
                cfg: TagsBaseConfig) -> dict[str, torch.Tensor]:
    """The named losses of one iteration: l_CLS, and l_SEG after the warm-up (``phase`` 'warmup' or 'joint')."""
    scores = net(images)
    class_logits = L.aggregate_scores(scores.float(), gamma=cfg.focal_gamma, lam=cfg.focal_lambda, eps=cfg.gwp_eps)
    background = torch.ones_like(tags[:, :1])   # every image shows some background: its score must be high too
    out = {"cls": L.classification_loss(class_logits, torch.cat([background, tags], 1))}
    if phase == "warmup":
        return out
    labels = pseudo_ground_truth(images, scores, tags, stride=cfg.pamr_stride, iterations=cfg.pamr_iterations)
    out["seg"] = cfg.seg_weight * balanced_ce(resized(scores.float(), labels.shape[-2:]), labels)
    return out


def train_tags_base(model: Segmenter, dataset: Dataset, cfg: TagsBaseConfig = TagsBaseConfig(), *,
                    device: str | torch.device | None = None) -> Iterator[Progress]:
    """Train ``model`` in place from ``dataset`` items (image ``3xHxW``, tags ``K-1`` multi-hot over the model's
    non-background classes, index); yields one ``Progress`` per iteration ('warmup': l_CLS alone, then 'joint')."""
    device = resolve_device(device)
    seed_everything(cfg.seed)
    net = GatedScores(model, cfg.gate_rate).to(device).train()
    loader = make_loader(dataset, cfg, device)
    model.check_train_batch(loader.batch_size)
    heads = list(model.decoder_parameters()) + ([] if net.shallow is None else list(net.shallow.parameters()))
    optimizer = make_sgd([{"params": heads, "lr": cfg.lr},
                          {"params": list(model.encoder.parameters()), "lr": cfg.encoder_lr}], cfg)
    scheduler = poly_schedule(optimizer, total=cfg.epochs * len(loader), power=cfg.poly_power)
    model.config["activation"] = "softmax"

    def step(batch: tuple, phase: str) -> dict[str, torch.Tensor]:
        images, tags = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        return tags_losses(net, images, tags, phase, cfg)

    phase_of = lambda epoch: "warmup" if epoch < cfg.warmup_epochs else "joint"  # noqa: E731
    yield from run_loop(loader=loader, epochs=cfg.epochs, step=step, phase_of=phase_of, optimizer=optimizer,
                        scheduler=scheduler)
    model.eval()


def check_tags_only(tagged: TaggedSet) -> tuple[list[str], str]:
    """The classes a base from ``tagged`` alone learns (its tags, in name order) and a note for the user. Raises
    ``DataError`` for what cannot make a base: no tagged image, a tag named 'background', or tags that every image
    carries (with the background always tagged, l_CLS would then have nothing to contrast: a single class on every
    image is the common case)."""
    classes = list(tagged.class_names)
    if not classes:
        raise DataError(f"None of the {len(tagged)} images is tagged. A base from tags alone learns one class per tag: "
                        "tag the images that show each class (images without a tag are used as negatives).")
    if BACKGROUND_NAME in classes:
        raise DataError(f"No tag may be '{BACKGROUND_NAME}': every model has it already. Tag only what the images "
                        "show (images showing none of the classes stay untagged).")
    counts = tagged.counts()
    always = [c for c in classes if counts[c] == len(tagged)]
    if len(always) == len(classes):
        what = f"the only class, '{classes[0]}', tags" if len(classes) == 1 else "every class tags"
        raise DataError(f"In these {len(tagged)} images {what} every image, so the tags cannot tell where "
                        f"{'it is' if len(classes) == 1 else 'they are'} not. Add images without "
                        f"{'it' if len(classes) == 1 else 'each class'} (untagged images are negatives), or tag "
                        "more classes.")
    notes = []
    common = [c for c in classes if counts[c] >= NEARLY_EVERY * len(tagged)]
    if common:
        notes.append(f"{', '.join(common)} tag every or nearly every image, so the tags can hardly tell where they "
                     "are not (street scenes, where road and sky are in every photo, give a tags-only base about 5 % "
                     "of a pixel-supervised one: docs/results.md); add images without them for a better base.")
    if tagged.num_negatives:
        notes.append(f"{tagged.num_negatives} image(s) carry no tag: they are used as negatives (showing none of the "
                     "classes).")
    return classes, " ".join(notes)


class TagsBaseTraining:
    """``train_tags_base`` with what a page needs between iterations (the ``WeakUpdate`` interface the app uses):
    ``run()`` yields one ``Progress`` per iteration, ``snapshots()`` pictures ``snapshot_items`` (``HxWx3`` uint8
    images with their ``K-1`` multi-hot tags) by the model as it is. ``model`` is trained in place."""

    def __init__(self, model: Segmenter, dataset: Dataset, cfg: TagsBaseConfig, *,
                 device: str | torch.device | None = None,
                 snapshot_items: Sequence[tuple[np.ndarray, np.ndarray]] = ()) -> None:
        self.model, self.dataset, self.cfg = model, dataset, cfg
        self.device = resolve_device(device)
        self.snapshot_items = list(snapshot_items)

    def run(self, resumer=None) -> Iterator[Progress]:
        if resumer is not None:
            raise ValueError("a base from tags alone cannot resume")
        yield from train_tags_base(self.model, self.dataset, self.cfg, device=self.device)

    @torch.no_grad()
    def snapshots(self) -> list[Snapshot]:
        """For each snapshot item: the softmax score of each class (as CAMs), the PAMR-refined pseudo ground truth
        the network learns after the warm-up (void where ambiguous) and the prediction, at the image's size."""
        training = self.model.training
        self.model.eval()
        try:
            return [self._snapshot(i, image, tags) for i, (image, tags) in enumerate(self.snapshot_items)]
        finally:
            self.model.train(training)

    def _snapshot(self, index: int, image: np.ndarray, tags: np.ndarray) -> Snapshot:
        x = normalize(image)[None].to(self.device)
        size = image.shape[:2]
        scores = self.model.decode(self.model.encode(x))
        tags_t = torch.as_tensor(np.asarray(tags), dtype=torch.float32, device=self.device)[None]
        pseudo = pseudo_ground_truth(x, scores, tags_t, stride=self.cfg.pamr_stride,
                                     iterations=self.cfg.pamr_iterations)
        pseudo = F.interpolate(pseudo[:, None].float(), size=size, mode="nearest")[0, 0]
        probs = F.interpolate(scores.float(), size=size, mode="bilinear", align_corners=False).softmax(1)
        return Snapshot(index=index, image=image, cams=probs[0, 1:].cpu().numpy().astype(np.float32),
                        pseudo_label=pseudo.cpu().numpy().astype(np.uint8),
                        prediction=probs[0].argmax(0).cpu().numpy().astype(np.uint8))
