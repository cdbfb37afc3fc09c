"""Scoring versions on images with masks, as ``python -m wilss evaluate --images DIR --masks DIR`` does:
``read_mask_folder`` pairs ``NAME.*`` with ``NAME.png``, ``evaluate`` fills a confusion matrix, ``summarize`` gives
mIoU old / new / all. Masks hold the class ids of the model being scored (255 = void)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from app.intake import data_root, gather_uploads
from wilss.checkpoint import Checkpoint
from wilss.data import DataError, check_mask_pairs, image_size, read_mask_folder
from wilss.training_data import PixelDataset
from wilss.inference import evaluate
from wilss.metrics import summarize


def bring_eval_set(image_files: Sequence[Path], mask_files: Sequence[Path], dest: Path, *, max_bytes: int,
                   num_classes: int) -> list[tuple[Path, Path]]:
    """Stage images and masks (files or zips; or one zip holding ``images/`` and ``masks/``) under ``dest`` and
    pair them. Every mask must have its image's size and ids ``< num_classes`` or 255."""
    images_dir, masks_dir = dest / "images", dest / "masks"
    images_dir.mkdir(parents=True)
    masks_dir.mkdir(parents=True)
    gather_uploads(image_files, images_dir, max_bytes=max_bytes)
    root = data_root(images_dir, tags_given=True)
    if (root / "images").is_dir() and (root / "masks").is_dir() and not mask_files:
        images_dir, masks_dir = root / "images", root / "masks"
    else:
        if not mask_files:
            raise DataError("No masks were given. Upload one mask NAME.png per image NAME.* (class ids as pixel "
                            "values), or one zip with folders images/ and masks/.")
        images_dir = root
        gather_uploads(mask_files, masks_dir, max_bytes=max_bytes)
        masks_dir = data_root(masks_dir, tags_given=True)
    pairs = read_mask_folder(images_dir, masks_dir)
    check_mask_pairs(pairs, num_classes)
    return pairs


def same_size(pairs: Sequence[tuple[Path, Path]]) -> bool:
    return len({image_size(image_path) for image_path, _ in pairs}) <= 1


def score(ckpt: Checkpoint, pairs: Sequence[tuple[Path, Path]], class_names: Sequence[str],
          new_names: Sequence[str], *, device: Optional[str] = None, batch: bool = True,
          max_side: Optional[int] = None) -> dict:
    """{'summary': {'old','new','all'} in %, 'iou': {name: % or NaN}} of ``ckpt`` over ``pairs``, whose masks use
    the ids of ``class_names``; ``ckpt`` must know a prefix of them (an earlier version: its missing classes are
    scored as never predicted)."""
    if list(class_names[: ckpt.num_classes]) != list(ckpt.class_names):
        raise DataError(f"This version's classes ({', '.join(ckpt.class_names)}) are not the first classes of the "
                        f"version being compared ({', '.join(class_names)}), so their ids differ.")
    matrix = evaluate(ckpt.model, PixelDataset(list(pairs), cache=False), num_classes=len(class_names),
                      batch_size=8 if batch else 1, device=device, max_side=max_side)
    iou = matrix.iou()
    new_ids = [class_names.index(n) for n in new_names if n in class_names]
    old_ids = [i for i in range(1, len(class_names)) if i not in new_ids]
    return {"summary": summarize(iou, old_ids, new_ids),
            "iou": {name: 100.0 * float(v) for name, v in zip(class_names, iou.tolist())}}
