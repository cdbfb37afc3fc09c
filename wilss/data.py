"""Reading user data: images and masks (image-level tags: ``wilss.tags``; the torch datasets over them:
``wilss.training_data``).

Every problem with the user's files is raised as ``DataError`` with a message that names the file and
says what to do, so the CLI and the UI can show it as is.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Union

import numpy as np
from PIL import Image, ImageOps

from wilss.conventions import IGNORE_INDEX

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp"})
MAX_PIXELS = 64_000_000     # larger images are refused (64 MP: above the photos of phones and cameras by default);
                            # the ones below are downscaled where they are used (wilss.inference.DEFAULT_MAX_SIDE)
EXIF_ORIENTATION = 0x0112   # the EXIF tag that says how to turn the stored pixels to show the image
CACHE_LIMIT = 2000  # datasets smaller than this keep decoded images in memory by default
PathLike = Union[str, Path]

class DataError(ValueError):
    """A problem with the user's data, explained for a non-expert (which file, what to do)."""


class ImageTooLarge(DataError):
    """An image over ``MAX_PIXELS``."""


def listing(names: Sequence[object], limit: int = 5, *, quoted: bool = False) -> str:
    """The first ``limit`` names, comma-separated (in quotes when ``quoted``), and how many more there are."""
    shown = ", ".join(f"'{n}'" if quoted else str(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def list_images(folder: Path, recursive: bool = True) -> list[Path]:
    """Image files under ``folder``, sorted; hidden ones (``.ipynb_checkpoints``, ``__MACOSX``) left out."""
    found = folder.rglob("*") if recursive else folder.iterdir()
    hidden = lambda p: any(s.startswith(".") or s == "__MACOSX" for s in p.relative_to(folder).parts)  # noqa
    return sorted(p for p in found if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not hidden(p))


# --------------------------------------------------------------------------------------------- files
def _decode(path: PathLike, kind: str, to_array: Callable[[Image.Image], np.ndarray]) -> np.ndarray:
    """Open and fully decode ``path`` (so a truncated file fails here, not mid-training), then convert."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"The {kind} file '{path}' does not exist. Check the path.")
    try:
        with Image.open(path) as im:
            check_pixels(im, path, kind)
            im.load()
            return to_array(upright(im))
    except DataError:
        raise
    except Exception as err:  # PIL's decoders raise many types (OSError, SyntaxError, struct.error, ...)
        raise DataError(f"Could not read the {kind} '{path}' ({err}). The file is damaged, incomplete or "
                        "not an image (e.g. another file renamed to .jpg): re-export it, or remove it.") from err


def check_pixels(im: Image.Image, path: PathLike, kind: str = "image") -> None:
    """Refuse an opened (not yet decoded) image larger than ``MAX_PIXELS``, before it takes any memory."""
    width, height = im.size
    if width * height > MAX_PIXELS:
        raise ImageTooLarge(f"The {kind} '{Path(path).name}' is {width}x{height} pixels "
                            f"({width * height / 1e6:.0f} MP), more than the {MAX_PIXELS / 1e6:.0f} MP accepted. "
                            "Downscale it (e.g. to 4000 pixels on its longer side) and retry.")


def upright(im: Image.Image) -> Image.Image:
    """``im`` as it is meant to be seen: its EXIF orientation applied (phones store a portrait photo as landscape
    pixels plus a 'rotate' tag). The one place images are turned upright; every reader goes through ``_decode``."""
    if im.getexif().get(EXIF_ORIENTATION, 1) == 1:
        return im
    return ImageOps.exif_transpose(im)


def image_size(path: PathLike) -> tuple[int, int]:
    """``(width, height)`` of an image file as ``load_image`` returns it (after its EXIF orientation), read from
    its header only."""
    with Image.open(path) as im:
        width, height = im.size
        turned = im.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8)   # the four that swap the sides
    return (height, width) if turned else (width, height)


def _rgb(im: Image.Image) -> np.ndarray:
    if im.mode.startswith("I;16"):  # 16-bit grayscale: keep the high byte
        return np.repeat((np.asarray(im, dtype=np.uint16) >> 8).astype(np.uint8)[..., None], 3, axis=2)
    return np.array(im.convert("RGB"), dtype=np.uint8)


def load_image(path: PathLike) -> np.ndarray:
    """Read an image file as ``HxWx3`` uint8 RGB (grayscale, RGBA, palette, 16-bit are converted)."""
    return _decode(path, "image", _rgb)


def load_mask(path: PathLike) -> np.ndarray:
    """Read a label mask as ``HxW`` uint8 class ids.

    Accepts palette PNGs ('P': the indices are the ids, as in PASCAL VOC), 8-bit grayscale ('L'),
    binary ('1' -> 0/1), 16-bit with ids <= 255, and RGB files whose three channels are equal.
    Colour masks (one RGB colour per class) are rejected: they must be converted to ids first.
    """
    arr = _decode(path, "mask", np.array)
    if arr.ndim == 3 and (arr.shape[2] == 2 or (arr[..., :3] == arr[..., :1]).all()):
        arr = arr[..., 0]  # 'LA', or an RGB(A) file holding gray ids
    if arr.ndim == 3:
        raise DataError(
            f"The mask '{path}' is a colour image, but a mask must store one class id per pixel: a "
            "single-channel 8-bit PNG (grayscale, pixel value = class id) or a palette PNG (PASCAL VOC "
            "style). Convert the colours to class ids and save it as such a PNG.")
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise DataError(f"The mask '{path}' holds values outside 0-255. Save it as an 8-bit grayscale or "
                        "palette PNG.")
    return arr.astype(np.uint8)


def validate_images(paths: Iterable[PathLike], *, full: bool = False) -> None:
    """Raise one DataError naming every file that cannot be opened.

    ``full=False`` runs PIL's cheap ``verify()`` (catches non-images and broken PNGs, not every truncated
    JPEG); ``full=True`` decodes each file completely.
    """
    bad = []
    for path in map(Path, paths):
        try:
            if full:
                load_image(path)
            else:
                with Image.open(path) as im:
                    check_pixels(im, path)
                    im.verify()
        except Exception as err:  # see _decode
            if isinstance(err, ImageTooLarge):
                raise   # a different remedy than for a damaged file
            bad.append(f"'{path.name}'" if isinstance(err, DataError) else f"'{path.name}' ({err})")
    if bad:
        raise DataError(f"{len(bad)} image file(s) could not be opened: {listing(bad)}. They are damaged "
                        "or not images (e.g. a text file renamed to .jpg). Replace or delete them and retry.")


# -------------------------------------------------------------------------------------- pixel labels
def read_mask_folder(images_dir: PathLike, masks_dir: PathLike) -> list[tuple[Path, Path]]:
    """Pair ``images_dir/NAME.ext`` with ``masks_dir/NAME.png`` (VOC style), sorted by name."""
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    for d, what in ((images_dir, "image"), (masks_dir, "mask")):
        if not d.is_dir():
            raise DataError(f"The {what} folder '{d}' does not exist. Check the path.")
    masks = {p.stem: p for p in masks_dir.iterdir() if p.is_file() and p.suffix.lower() == ".png"}
    images = list_images(images_dir, recursive=False)
    if not images:
        raise DataError(f"No images found in '{images_dir}'. Add images "
                        f"({', '.join(sorted(IMAGE_SUFFIXES))}).")
    missing = [p.name for p in images if p.stem not in masks]
    if missing:
        raise DataError(f"{len(missing)} image(s) in '{images_dir}' have no mask in '{masks_dir}': "
                        f"{listing(missing)}. Each image NAME.jpg needs a mask NAME.png.")
    return [(p, masks[p.stem]) for p in images]


def check_mask_pairs(pairs: Sequence[tuple[Path, Path]], num_classes: int,
                     label_map: Optional[np.ndarray] = None) -> set[tuple[int, int]]:
    """Check a labelled set before any long work: every image opens, every mask has its image's size and holds only
    ids ``< num_classes`` (after ``label_map``) or 255 (void). Returns the set of (h, w) sizes; raises DataError."""
    validate_images([p for p, _ in pairs], full=True)
    sizes, bad_ids = set(), {}
    for image_path, mask_path in pairs:
        width, height = image_size(image_path)
        mask = load_mask(mask_path)
        if mask.shape != (height, width):
            raise DataError(f"The mask '{mask_path.name}' is {mask.shape[1]}x{mask.shape[0]} pixels but its image "
                            f"is {width}x{height}. A mask must have exactly its image's size.")
        ids = np.unique(mask if label_map is None else label_map[mask])
        unknown = [int(i) for i in ids if i >= num_classes and i != IGNORE_INDEX]
        if unknown:
            bad_ids[mask_path.name] = unknown
        sizes.add((height, width))
    if bad_ids:
        name, ids = next(iter(bad_ids.items()))
        raise DataError(f"{len(bad_ids)} mask(s) hold class ids the model does not have (it has ids 0-"
                        f"{num_classes - 1}, and 255 = void): e.g. '{name}' has {ids}. Masks must use the "
                        "model's class ids.")
    return sizes


def read_camvid(root: PathLike, split: str) -> list[tuple[Path, Path]]:
    """(image, mask) pairs from ``root/{split}.txt``, whose lines are ``IMAGE MASK`` relative to ``root``."""
    root = Path(root)
    list_file = root / f"{split}.txt"
    if not list_file.is_file():
        raise DataError(f"The CamVid list '{list_file}' does not exist. Check the dataset folder and the "
                        "split name (train, val or test).")
    pairs = []
    for n, line in enumerate(list_file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise DataError(f"Line {n} of '{list_file}' should be 'IMAGE MASK', found {line!r}.")
        pairs.append((root / parts[0], root / parts[1]))
    missing = [str(p.relative_to(root)) for pair in pairs for p in pair if not p.is_file()]
    if missing:
        raise DataError(f"'{list_file}' names {len(missing)} missing file(s): {listing(missing)}.")
    return pairs
