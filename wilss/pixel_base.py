"""A base from the user's own pixel labels (``python -m wilss pretrain --data``): every named class of a labelled
dataset on disk (``wilss.datasets``: VOC layout, images + masks folder, CamVid) learnt at step 0 with pixel labels
(``wilss.trainer.pretrain``), then scored on the dataset's test split.

Model ids are those of a one-step task over the dataset's named classes: 0 background (the dataset's background ids;
none in CamVid, where every pixel is a named class), then the named classes in dataset-id order.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from models import build_segmenter
from models.segmenter import Segmenter
from wilss.checkpoint import Checkpoint, history_entry, new_checkpoint
from wilss.config import PretrainConfig, to_dict
from wilss.conventions import BACKGROUND_NAME
from wilss.data import load_mask
from wilss.datasets import LabelledSource
from wilss.engine import Progress, seed_everything
from wilss.inference import evaluate
from wilss.metrics import summarize
from wilss.tasks import Task, eval_label_map, label_map, present_classes, select_images
from wilss.trainer import pretrain
from wilss.training_data import PixelDataset
from wilss.transforms import Compose, Resize, train_transform

SETTING = "disjoint"   # one step holds every named class: no future class, so the setting changes nothing


@dataclass(frozen=True)
class PixelBase:
    """A trained base and its test figures."""

    checkpoint: Checkpoint
    per_class: list[float]     # test IoU (%) by model id, background first (NaN: neither ground truth nor prediction)
    miou: float                # test mIoU (%) over the named classes
    num_images: int            # training images used


def base_task(source: LabelledSource) -> Task:
    """The one-step task over every named class of ``source`` (every id that is not background)."""
    named = tuple(c for c in range(len(source.classes)) if c not in source.background_ids)
    return Task((named,), source.background_ids)


def class_names(source: LabelledSource) -> list[str]:
    """The base's class names by model id: 'background', then the named classes."""
    return [BACKGROUND_NAME] + [source.classes[c] for c in base_task(source).seen_classes(0)]


def _present(pairs: Sequence[tuple], ignore_ids: Sequence[int]) -> list[set[int]]:
    """The dataset ids in each mask (masks given as paths are decoded once, in threads: PNG decoding releases the
    GIL)."""
    def present(mask) -> set[int]:
        return present_classes(mask if isinstance(mask, np.ndarray) else load_mask(mask), ignore_ids)

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(present, [m for _, m in pairs]))


def training_set(source: LabelledSource, cfg: PretrainConfig, size: Optional[tuple[int, int]] = None) -> PixelDataset:
    """The training images that hold a named class, masks in model ids, each image resized to ``size`` (h, w) when
    given, then ``cfg``'s crop, scale jitter and flip."""
    task = base_task(source)
    indices = select_images(_present(source.train, source.ignore_ids), task, 0, SETTING)
    aug = train_transform(cfg.crop_size, cfg.scale_range, cfg.hflip)
    transform = Compose([Resize(size), *aug.transforms]) if size else aug
    return PixelDataset([source.train[i] for i in indices], transform=transform,
                        label_map=label_map(task, 0, setting=SETTING, ignore_ids=source.ignore_ids))


def iou_on_test_split(model: Segmenter, source: LabelledSource, size: Optional[tuple[int, int]] = None, *,
             device=None) -> torch.Tensor:
    """Per-class IoU (``K``, 0-1, NaN where a class has neither ground truth nor prediction) of ``model`` on the test
    split, each image resized to ``size`` when given, else at its own size (one image a batch)."""
    task = base_task(source)
    dataset = PixelDataset(list(source.test), label_map=eval_label_map(task, 0, ignore_ids=source.ignore_ids),
                           transform=Resize(size) if size else None)
    return evaluate(model, dataset, num_classes=task.num_model_classes(0), batch_size=8 if size else 1,
                    device=device).iou()


def train_pixel_base(source: LabelledSource, cfg: PretrainConfig, *, arch: str, encoder: str = "none",
                     init: Optional[Callable[[Segmenter], None]] = None, size: Optional[tuple[int, int]] = None,
                     device=None, on_progress: Optional[Callable[[Progress], None]] = None) -> PixelBase:
    """Train a base of every named class of ``source`` on network ``arch``, ``init(model)`` starting its encoder
    (e.g. from ImageNet; None: from scratch; ``encoder`` names it in the history), and score it on the test split.

    The weights depend on ``cfg.seed`` alone (the initial weights too), so a run repeats exactly. The checkpoint's
    input side is the images' (``LabelledSource.input_side``); it records whether the dataset has a background
    class (CamVid has none: the updates on it default to ``no_background``); its history one 'pretrain' step with the
    settings and the test mIoU.
    """
    task = base_task(source)
    dataset = training_set(source, cfg, size)
    seed_everything(cfg.seed)
    model = build_segmenter(arch=arch, num_classes=task.num_model_classes(0))
    if init is not None:
        init(model)
    for progress in pretrain(model, dataset, cfg, device=device):
        if on_progress is not None:
            on_progress(progress)
    model.eval()
    iou = iou_on_test_split(model, source, size, device=device)
    miou = summarize(iou, *task.paper_columns(0), include_background=bool(source.background_ids))["new"]
    names = class_names(source)
    ckpt = new_checkpoint(model, names, input_side=source.input_side(size), background=bool(source.background_ids))
    ckpt.history.append(history_entry(
        "pretrain", names[1:], num_images=len(dataset), step=0,
        settings={"data": source.description, "arch": arch, "encoder": encoder,
                  "size": list(size) if size else None, **to_dict(cfg)},
        metrics={"test_mIoU": round(miou, 2)}))
    return PixelBase(ckpt, [float(v) * 100 for v in iou.tolist()], miou, len(dataset))


def encoder_init(source, *, origin: str = "the pretext network") -> Optional[Callable]:
    """``init(model)`` that starts a fresh network's encoder from ``source``, a loaded network (a pretext network,
    e.g. ``models/pretext_tiny.pt``); None for ``source`` None (from scratch). ``origin`` names it in errors."""
    if source is None:
        return None
    config = {k: source.config.get(k) for k in ("arch", "width")}

    def init(model) -> None:
        mine = {k: model.config.get(k) for k in config}
        if mine != config:
            raise ValueError(f"the encoder of {origin} is {config}, the network to start from it is {mine}")
        model.encoder.load_state_dict(source.encoder.state_dict())

    return init
