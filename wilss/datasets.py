"""Labelled datasets on disk: PASCAL VOC in its own layout, a generic images + masks folder, and a small
generated tree in the VOC layout (for tests and smoke runs).

VOC layout (``root`` is ``VOCdevkit/VOC2012``)::

    root/JPEGImages/NAME.jpg
    root/SegmentationClass/NAME.png       palette PNGs: pixel index = class id (0 background, 1..20, 255 void)
    root/SegmentationClassAug/NAME.png    the SBD-augmented masks (10582 train_aug images), optional
    root/ImageSets/Segmentation/{train,val,trainval}.txt, and train_aug.txt when present
    root/classes.txt                      optional: one class name per line (line i = id i), for other classes

A list line is ``NAME``, or ``IMAGE MASK`` paths relative to ``root`` (MiB / WILSON's ``train_aug.txt``).
Generic folder layout (what ``python -m research generate --out`` writes): ``root/<split>/images/NAME.ext`` with
``root/<split>/masks/NAME.png``; class names from ``root/classes.txt`` or ``root/world.json``.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from wilss.data import DataError, PathLike, image_size, listing, read_camvid, read_mask_folder

log = logging.getLogger(__name__)

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")
MASK_DIRS = ("SegmentationClass", "SegmentationClassAug")
LIST_DIRS = ("ImageSets/Segmentation", "ImageSets/SegmentationAug")
IMAGE_DIR = "JPEGImages"
CLASSES_FILE = "classes.txt"


# ----------------------------------------------------------------------------------------------- VOC
def _check_voc_root(root: Path) -> None:
    if not root.is_dir():
        raise DataError(f"The VOC folder '{root}' does not exist. Give the folder that holds JPEGImages/ "
                        "(e.g. VOCdevkit/VOC2012).")
    if not (root / IMAGE_DIR).is_dir():
        inner = root / "VOC2012" if (root / "VOC2012" / IMAGE_DIR).is_dir() else root / "VOCdevkit" / "VOC2012"
        hint = f" Did you mean '{inner}'?" if (inner / IMAGE_DIR).is_dir() else ""
        raise DataError(f"'{root}' has no {IMAGE_DIR}/ folder, so it is not in the VOC layout (JPEGImages/, "
                        f"SegmentationClass/, ImageSets/Segmentation/).{hint}")
    if not any((root / d).is_dir() for d in MASK_DIRS):
        raise DataError(f"'{root}' has neither {MASK_DIRS[0]}/ nor {MASK_DIRS[1]}/: the VOC masks are missing.")


def voc_splits(root: PathLike) -> dict[str, Path]:
    """Split name -> list file, for every ``*.txt`` under ``ImageSets/Segmentation`` (and ``SegmentationAug``)."""
    found: dict[str, Path] = {}
    for folder in LIST_DIRS:
        for path in sorted((Path(root) / folder).glob("*.txt")):
            found.setdefault(path.stem, path)
    return found


def default_train_split(root: PathLike) -> str:
    """``train_aug`` where its list exists (the papers' 10582 images), else ``train``."""
    return "train_aug" if "train_aug" in voc_splits(root) else "train"


def voc_mask_dir(root: PathLike, split: str) -> Path:
    """``SegmentationClassAug`` for ``train_aug`` (or when it is the only one), else ``SegmentationClass``."""
    root = Path(root)
    order = MASK_DIRS[::-1] if split == "train_aug" else MASK_DIRS
    return next((root / d for d in order if (root / d).is_dir()), root / order[0])


def _parse_list(root: Path, list_file: Path, mask_dir: Path) -> list[tuple[Path, Path]]:
    pairs = []
    for n, line in enumerate(list_file.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) == 1:
            pairs.append((root / IMAGE_DIR / f"{parts[0]}.jpg", mask_dir / f"{parts[0]}.png"))
        elif len(parts) == 2:  # '/JPEGImages/x.jpg /SegmentationClassAug/x.png' (MiB / WILSON lists)
            pairs.append((root / parts[0].lstrip("/"), root / parts[1].lstrip("/")))
        else:
            raise DataError(f"Line {n} of '{list_file}' should be an image name (e.g. 2007_000032) or "
                            f"'IMAGE MASK' paths, found {line!r}.")
    if not pairs:
        raise DataError(f"The list '{list_file}' is empty. It should name one image per line.")
    return pairs


def read_voc(root: PathLike, split: str) -> list[tuple[Path, Path]]:
    """(image, mask) pairs of ``split`` in a VOC tree, in list order; raises DataError for a wrong layout."""
    root = Path(root)
    _check_voc_root(root)
    lists = voc_splits(root)
    if split not in lists:
        raise DataError(f"'{root}' has no list for the split '{split}' (looked for {split}.txt in "
                        f"{' and '.join(LIST_DIRS)}; found: {', '.join(sorted(lists)) or 'none'}).")
    mask_dir = voc_mask_dir(root, split)
    pairs = _parse_list(root, lists[split], mask_dir)
    for kind, column in (("image", 0), ("mask", 1)):
        missing = [p[column].relative_to(root).as_posix() if p[column].is_relative_to(root) else str(p[column])
                   for p in pairs if not p[column].is_file()]
        if missing:
            hint = (f" The masks of train_aug are in {MASK_DIRS[1]}/ (SBD-augmented VOC)."
                    if kind == "mask" and split == "train_aug" else "")
            raise DataError(f"'{lists[split]}' names {len(missing)} {kind}(s) that do not exist: "
                            f"{listing(missing)}.{hint} Fix the list or add the files.")
    log.info("VOC %s: %d images, masks from %s", split, len(pairs), mask_dir.name)
    return pairs


def read_class_names(root: PathLike, default: Sequence[str] | None = None) -> tuple[str, ...]:
    """``root/classes.txt`` (line i = name of id i, first the background), else ``world.json``'s classes, else
    ``default``. Raises DataError when none is there."""
    root = Path(root)
    if (root / CLASSES_FILE).is_file():
        names = tuple(line.strip() for line in (root / CLASSES_FILE).read_text().splitlines() if line.strip())
        source = root / CLASSES_FILE
    elif (root / "world.json").is_file():
        try:
            names, source = tuple(json.loads((root / "world.json").read_text())["classes"]), root / "world.json"
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise DataError(f"'{root / 'world.json'}' has no readable class list ({err}).") from None
    elif default is not None:
        return tuple(default)
    else:
        raise DataError(f"'{root}' has no {CLASSES_FILE}: write one class name per line, the background first "
                        "(line i names the class whose mask value is i).")
    if len(names) < 2 or len(set(names)) != len(names) or len(names) > 255:
        raise DataError(f"'{source}' must name the background and at least one class, each once (found "
                        f"{len(names)} names).")
    return names


# ----------------------------------------------------------------------------------- generic folder
def read_split_folder(root: PathLike, split: str) -> list[tuple[Path, Path]]:
    """(image, mask) pairs from ``root/split/images`` and ``root/split/masks`` (``read_mask_folder``)."""
    root = Path(root)
    if not (root / split).is_dir():
        present = sorted(d.name for d in root.iterdir() if (d / "images").is_dir()) if root.is_dir() else []
        raise DataError(f"'{root}' has no '{split}' folder (with images/ and masks/ inside; found: "
                        f"{', '.join(present) or 'none'}). Check --data and the split name.")
    return read_mask_folder(root / split / "images", root / split / "masks")


# ------------------------------------------------------------------------------ any labelled dataset
LAYOUTS = ("voc", "folder", "camvid")
CAMVID_CLASSES = ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
                  "Pedestrian", "Bicyclist")   # ids 0-10, 11 = unlabelled (the dataset's README)


@dataclass(frozen=True)
class LabelledSource:
    """A labelled dataset on disk, read: class names by dataset id, (image, mask) pairs of a train and a test
    split, the ids that mean void and background (none in CamVid, where every pixel is a named class)."""

    classes: tuple[str, ...]
    train: list
    test: list
    ignore_ids: tuple[int, ...]
    background_ids: tuple[int, ...]
    description: str
    train_split: str = "train"
    test_split: str = "test"

    def input_side(self, size: tuple[int, int] | None = None) -> int:
        """The input scale (longer side, px) a network trained on this dataset sees: ``max(size)`` when every image
        is resized to ``size`` (h, w), else the median longer side of the training images (their headers)."""
        if size is not None:
            return max(size)
        return int(np.median([max(image_size(image)) for image, _ in self.train]))


def detect_layout(root: PathLike) -> str:
    """'voc' (JPEGImages/), 'camvid' (train.txt of IMAGE MASK lines) or 'folder' (train/images/)."""
    root = Path(root)
    if (root / IMAGE_DIR).is_dir():
        return "voc"
    if (root / "train.txt").is_file():
        return "camvid"
    if (root / "train" / "images").is_dir():
        return "folder"
    raise DataError(f"'{root}' is in none of the layouts {', '.join(LAYOUTS)} (no {IMAGE_DIR}/, train.txt or "
                    "train/images/): see docs/datasets.md")


def camvid_classes(root: PathLike) -> tuple[str, ...]:
    """CamVid's class names by id: ``camvid_meta.json``'s where readable, else the README's."""
    root = Path(root)
    try:
        classes = tuple(json.loads((root / "camvid_meta.json").read_text())["classes"])
        return classes if len(classes) == len(CAMVID_CLASSES) else CAMVID_CLASSES
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return CAMVID_CLASSES


def read_labelled(root: PathLike, layout: str | None = None, *, train_split: str | None = None,
                  test_split: str | None = None) -> LabelledSource:
    """A dataset in ``layout`` (None: detected) with its default splits (VOC: train_aug or train -> val; folder and
    CamVid: train -> test, else val)."""
    root = Path(root)
    layout = layout or detect_layout(root)
    if layout == "camvid":
        train_split, test_split = train_split or "train", test_split or "test"
        classes, ignore, background = camvid_classes(root), (len(CAMVID_CLASSES),), ()
        train, test = read_camvid(root, train_split), read_camvid(root, test_split)
    elif layout == "voc":   # the pairs first: a wrong folder is said as such, before its missing class names
        train_split, test_split = train_split or default_train_split(root), test_split or "val"
        train, test = read_voc(root, train_split), read_voc(root, test_split)
        classes, ignore, background = read_class_names(root, default=VOC_CLASSES), (255,), (0,)
    elif layout == "folder":
        train_split = train_split or "train"
        test_split = test_split or ("test" if (root / "test" / "images").is_dir() else "val")
        train, test = read_split_folder(root, train_split), read_split_folder(root, test_split)
        classes, ignore, background = read_class_names(root), (255,), (0,)
    else:
        raise DataError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    return LabelledSource(classes, train, test, ignore, background,
                          f"{root.name} ({layout}): {train_split} {len(train)} images -> {test_split} {len(test)}",
                          train_split, test_split)
