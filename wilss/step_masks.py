"""Pixel masks for the images of a step (MiB with masks, ``add-class --masks``): read, checked, and turned into the
step's tags.

Layout: for an image ``IMAGES/sub/NAME.ext`` the mask is ``MASKS/sub/NAME.png``, a palette or 8-bit grayscale PNG of
the image's size whose pixel values are the *updated* model's class ids: 0 background, ``1..K0-1`` the classes the
model knows, then the new classes in the order they are named, 255 void. The step's masks label its new classes;
pixels of known classes may be labelled or left as background (MiB counts them as background either way).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from wilss.conventions import IGNORE_INDEX
from wilss.data import DataError, image_size, listing, load_mask
from wilss.tags import TaggedSet, inside_folder

log = logging.getLogger(__name__)


def mask_path(images_dir: Path, image: Path, masks_dir: Path) -> Path:
    """Where the mask of ``image`` (a file under ``images_dir``) lives: the same relative path, ending in .png."""
    return Path(masks_dir) / Path(image).relative_to(images_dir).with_suffix(".png")


def _id_names(class_names: Sequence[str], num_old: int) -> str:
    return ", ".join(f"{i} {name}" + (" (new)" if i >= num_old else "") for i, name in enumerate(class_names))


def read_step_masks(tagged: TaggedSet, images_dir: Path, masks_dir: Path, *, class_names: Sequence[str],
                    num_old: int) -> tuple[TaggedSet, list[Path]]:
    """The mask of every image of ``tagged`` (images under ``images_dir``) in ``masks_dir``, checked: every image has
    one, of its size, holding only ids of ``class_names`` (the updated model's, the first ``num_old`` known before)
    or 255. Returns the images with tags read from their masks (the classes present) and the mask paths.
    Raises DataError, naming the files, before anything is trained or written."""
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    if not masks_dir.is_dir():
        raise DataError(f"The mask folder '{masks_dir}' does not exist (or is not a folder). Check the path.")
    masks = [mask_path(images_dir, p, masks_dir) for p in tagged.paths]
    missing = [m.relative_to(masks_dir).as_posix() for m in masks if not m.is_file()]
    if missing:
        raise DataError(f"{len(missing)} of the {len(masks)} images have no mask in '{masks_dir}' (looked for "
                        f"{listing(missing)}). A step with masks needs one for every image (IMAGE.jpg -> "
                        "IMAGE.png); add them, or leave out --masks to learn from the tags alone.")
    for mask in masks:
        inside_folder(masks_dir, mask, f"In '{masks_dir}'")
    tags, unknown = [], {}
    for image, mask_file in zip(tagged.paths, masks):
        mask = load_mask(mask_file)
        width, height = image_size(image)
        if mask.shape != (height, width):
            raise DataError(f"The mask '{mask_file.name}' is {mask.shape[1]}x{mask.shape[0]} pixels but its image is "
                            f"{width}x{height}. A mask must have exactly its image's size.")
        ids = {int(i) for i in np.unique(mask)} - {IGNORE_INDEX}
        bad = sorted(i for i in ids if i >= len(class_names))
        if bad:
            unknown[mask_file.name] = bad
        tags.append({class_names[i] for i in ids if 0 < i < len(class_names)})
    if unknown:
        name, ids = next(iter(unknown.items()))
        raise DataError(f"{len(unknown)} mask(s) hold ids that name no class: e.g. '{name}' has {ids}. The ids are "
                        f"those of the updated model: {_id_names(class_names, num_old)}; 255 = void.")
    for name in class_names[num_old:]:
        if not any(name in t for t in tags):
            raise DataError(f"No mask has a pixel of the new class '{name}' (id {list(class_names).index(name)}). "
                            f"The ids are those of the updated model: {_id_names(class_names, num_old)}.")
    return TaggedSet(tagged.paths, tuple(tags)), masks
