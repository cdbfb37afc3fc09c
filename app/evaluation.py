"""Bringing in images with masks to score versions on, as ``python -m wilss evaluate --images DIR --masks DIR`` reads
them (``read_mask_folder`` pairs ``NAME.*`` with ``NAME.png``); the scoring is ``wilss.service.score``. Masks hold the
class ids of the model being scored (255 = void)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from app.intake import data_root, gather_uploads
from wilss.data import DataError, read_mask_folder
from wilss.scoring import EvalSet, checked_eval_set


def bring_eval_set(image_files: Sequence[Path], mask_files: Sequence[Path], dest: Path, *, max_bytes: int,
                   num_classes: int) -> EvalSet:
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
    return checked_eval_set(read_mask_folder(images_dir, masks_dir), num_classes, "the upload")
