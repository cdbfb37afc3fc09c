"""Pseudo-labels out: a weak step's Eq. 5-7 targets as palette PNGs in the PASCAL VOC convention.

The folder is what CVAT imports as "Segmentation mask 1.1" (and Label Studio or any VOC tool reads):

- ``SegmentationClass/<stem>.png``: palette PNG at the image's own size, pixel value = model class id,
  255 = void (pixels whose pseudo-label confidence is below ``min_confidence``), palette = the model's colours;
- ``ImageSets/Segmentation/default.txt``: the stems;
- ``labelmap.txt``: CVAT's ``name:r,g,b::`` lines, in class-id order;
- ``labels.json``: ``{"classes": [{"id", "name", "colour"}], "void": 255}`` for scripts.

A user corrects the masks in such a tool, then trains on them with pixel labels.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from wilss.conventions import IGNORE_INDEX, palette_png, prepare_image
from wilss.data import DataError, load_image
from wilss.trainer import WeakUpdate

log = logging.getLogger(__name__)

def write_label_map(folder: Path, class_names: Sequence[str], colours: np.ndarray) -> None:
    """CVAT's ``labelmap.txt`` and a ``labels.json`` with ids, names and colours."""
    lines = ["# label:color_rgb:parts:actions"]
    lines += [f"{name}:{','.join(str(int(v)) for v in colour)}::" for name, colour in zip(class_names, colours)]
    (folder / "labelmap.txt").write_text("\n".join(lines) + "\n")
    classes = [{"id": i, "name": name, "colour": [int(v) for v in colour]}
               for i, (name, colour) in enumerate(zip(class_names, colours))]
    (folder / "labels.json").write_text(json.dumps({"classes": classes, "void": IGNORE_INDEX}, indent=1) + "\n")


def pseudo_label_mask(update: WeakUpdate, image: np.ndarray, targets: np.ndarray,
                      min_confidence: float = 0.0) -> np.ndarray:
    """The final pseudo-label of one image ``HxWx3`` uint8 (targets ``K-1`` as in training): ``HxW`` uint8 model
    class ids, 255 where the Eq. 5-7 target at its argmax is below ``min_confidence``. Use inside
    ``update.evaluating()``."""
    snap = update.snapshot_of(0, image, targets)
    return np.where(snap.pseudo_confidence >= min_confidence, snap.pseudo_label, IGNORE_INDEX).astype(np.uint8)


def export_pseudo_labels(update: WeakUpdate, paths: Sequence[Path], targets: np.ndarray, folder: Path, *,
                         class_names: Sequence[str], colours: np.ndarray, side: int,
                         min_confidence: float = 0.0) -> int:
    """Write the pseudo-labels ``update`` gives ``paths`` (with ``targets`` ``NxK-1`` as in training) to ``folder``.

    Each image is seen as in training (longer side ``side``); its label is resized (nearest) back to the image's
    own size. Refuses a non-empty ``folder``. Returns the number of masks written.
    """
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise DataError(f"'{folder}' is not empty; pseudo-labels go into a new or empty folder (nothing is "
                        "overwritten).")
    if len(class_names) != update.model.num_classes or len(colours) != len(class_names):
        raise ValueError(f"{len(class_names)} names and {len(colours)} colours for a "
                         f"{update.model.num_classes}-class model")
    masks = folder / "SegmentationClass"
    masks.mkdir(parents=True, exist_ok=True)
    (folder / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    stems: list[str] = []
    taken: set[str] = set()
    for index, (path, row) in enumerate(zip(paths, targets)):
        original = load_image(path)   # decoded once: fitted for the network, its size for the mask
        with update.evaluating():
            labels = pseudo_label_mask(update, prepare_image(original, side), row, min_confidence)
        height, width = original.shape[:2]
        image = palette_png(labels, colours).resize((width, height), Image.NEAREST)
        stem = Path(path).stem
        if stem in taken:   # two files with one stem (a.png, a.jpg) would share a mask name
            stem = f"{stem}_{index}"
        image.save(masks / f"{stem}.png")
        stems.append(stem)
        taken.add(stem)
    (folder / "ImageSets" / "Segmentation" / "default.txt").write_text("\n".join(stems) + "\n")
    write_label_map(folder, class_names, colours)
    log.info("wrote %d pseudo-label masks to %s", len(stems), folder)
    return len(stems)
