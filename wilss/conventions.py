"""Segmentation conventions shared by every part of the project: one place for them.

- Class id 0 is the background ("none of the known classes"); ids 1..K-1 are named classes.
- Pixels labelled ``IGNORE_INDEX`` (255) are void: excluded from every loss and metric.
- Images enter networks as float tensors ``3xHxW`` normalised with ImageNet statistics, at the network's *input
  scale*: resized by ``prepare_image`` so their longer side is the side the network was trained at (recorded in its
  checkpoint), the same in training, prediction, evaluation and export; predictions come back at the image's own
  size through ``resize_mask``.
- Masks are resized with nearest-neighbour interpolation only (never blended).
"""
from __future__ import annotations

import logging
from typing import Optional, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

log = logging.getLogger(__name__)

IGNORE_INDEX = 255
BACKGROUND = 0
BACKGROUND_NAME = "background"
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
VOID_COLOUR = (224, 224, 192)  # PASCAL VOC's void/boundary colour, for IGNORE_INDEX in palette PNGs


def voc_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map: ``n x 3`` uint8, entry 0 black, 255 reserved for void in VOC PNGs."""
    palette = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette[i] = (r, g, b)
    return palette


def palette_png(labels: np.ndarray, colours: np.ndarray) -> Image.Image:
    """``HxW`` uint8 class ids -> a palette ('P' mode) image: pixel value = class id (readable as ids), shown in
    ``colours`` (``Kx3``), with ``IGNORE_INDEX`` in VOC's void colour. Every mask file the tool writes is one."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[: len(colours)] = colours
    palette[IGNORE_INDEX] = VOID_COLOUR
    image = Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint8), mode="P")
    image.putpalette(palette.flatten().tolist())
    return image


def hex_to_rgb(colour: str) -> tuple[int, int, int]:
    """'#RRGGBB' -> (r, g, b). Raises ValueError with the offending text."""
    text = colour.strip().lstrip("#")
    if len(text) != 6 or any(ch not in "0123456789abcdefABCDEF" for ch in text):
        raise ValueError(f"colour {colour!r} is not of the form #RRGGBB")
    return int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16)


def rgb_to_hex(rgb) -> str:
    r, g, b = (int(v) for v in rgb)
    return f"#{r:02x}{g:02x}{b:02x}"


def rgb_to_lab(rgb) -> np.ndarray:
    """sRGB colours ``... x 3`` (0-255) -> CIELAB (D65) ``... x 3`` floats: L in [0, 100], where Euclidean distance
    (CIE76 delta E) follows what a person sees: about 2 is just noticeable, above 30 is clearly another colour."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    c = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = c @ np.array([[0.4124, 0.2126, 0.0193], [0.3576, 0.7152, 0.1192], [0.1805, 0.0722, 0.9505]])
    xyz = xyz / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def _candidate_colours() -> np.ndarray:
    """The sRGB gamut on an 8-level grid (512 colours): the pool classes' colours are chosen from. (A pool of 96
    vivid hues gave 20 classes a closest pair 37 delta E apart; the whole gamut, 41.)"""
    levels = np.round(np.linspace(0, 255, 8)).astype(np.uint8)
    return np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1).reshape(-1, 3)


def distinct_colours(used, count: int) -> np.ndarray:
    """``count`` colours (``count x 3`` uint8) for new classes, each as far as possible in CIELAB from ``used``
    (``K x 3``, the palette in use), from black and white (background and void in the pictures) and from each
    other: greedy farthest-point over a pool of vivid colours. Deterministic."""
    pool = _candidate_colours()
    pool_lab = rgb_to_lab(pool)
    taken = [np.asarray(c, dtype=np.float64).reshape(3) for c in np.asarray(used).reshape(-1, 3)]
    taken_lab = rgb_to_lab(np.array(taken + [(0, 0, 0), (255, 255, 255)]))
    out = []
    for _ in range(count):
        distance = np.linalg.norm(pool_lab[:, None] - taken_lab[None], axis=-1).min(axis=1)
        best = int(np.argmax(distance))
        out.append(pool[best])
        taken_lab = np.vstack([taken_lab, pool_lab[best]])
    return np.array(out, dtype=np.uint8).reshape(count, 3)


def class_palette(num_classes: int) -> np.ndarray:
    """Display colours of a model's classes, ``num_classes x 3`` uint8: black for the background, then
    ``distinct_colours`` (each far in CIELAB from black, white and the others: 20 classes at least 40 delta E apart,
    where the VOC palette puts bicycle #008000 and cow #408000 12 apart). A prefix of a longer palette is the
    shorter one. Files keep the VOC palette (``voc_palette``): it is how their pixel values are read and written."""
    return np.vstack([np.zeros((1, 3), dtype=np.uint8), distinct_colours(np.zeros((0, 3)), num_classes - 1)])


def extend_colours(colours: np.ndarray, requested: Sequence[Optional[tuple[int, int, int]]]) -> np.ndarray:
    """Colours for ``len(requested)`` new classes: the requested one, else one far (in CIELAB) from every colour in
    use and from black (``distinct_colours``). Returns the new rows only (``N x 3`` uint8)."""
    used = [tuple(int(v) for v in c) for c in colours] + [c for c in requested if c is not None]
    free = iter(distinct_colours(np.array(used, dtype=np.uint8), sum(c is None for c in requested)))
    rows = []
    for colour in requested:
        if colour is None:
            colour = tuple(int(v) for v in next(free))
        elif tuple(colour) in {tuple(int(v) for v in c) for c in colours}:
            log.warning("colour %s is already used by another class", colour)
        rows.append(colour)
    return np.array(rows, dtype=np.uint8).reshape(len(rows), 3)


def normalize(image: np.ndarray) -> torch.Tensor:
    """``HxWx3`` uint8 RGB -> ``3xHxW`` float32 normalised tensor."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 RGB image, got shape {image.shape}")
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(MEAN).view(3, 1, 1)
    std = torch.tensor(STD).view(3, 1, 1)
    return (tensor - mean) / std


def input_size(height: int, width: int, side: Optional[int], max_side: Optional[int] = None) -> tuple[int, int]:
    """The ``(h, w)`` a network sees a ``height x width`` image at: scaled (aspect kept) so its longer side is ``side``
    (the network's input scale; ``None``: the image's own size), and at most ``max_side`` (a safety cap)."""
    longer = max(height, width)
    target = longer if side is None else int(side)
    if max_side is not None:
        target = min(target, int(max_side))
    if target == longer:
        return height, width
    scale = target / longer
    return max(1, round(height * scale)), max(1, round(width * scale))


def prepare_image(image: np.ndarray, side: Optional[int], *, max_side: Optional[int] = None) -> np.ndarray:
    """``HxWx3`` uint8 -> ``hxwx3`` uint8 at the network's input scale (``input_size``): the one way every path
    (training data of each step, prediction, evaluation) resizes an image for a network. Shrinking averages areas
    (no aliasing on a large photo), enlarging is bilinear; an image already at the scale is returned as it is."""
    h, w = input_size(*image.shape[:2], side, max_side)
    if (h, w) == image.shape[:2]:
        return image
    shrink = h * w < image.shape[0] * image.shape[1]
    return cv2.resize(np.ascontiguousarray(image), (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def denormalize(images: torch.Tensor) -> torch.Tensor:
    """``Bx3xHxW`` (or ``3xHxW``) normalised -> same shape in [0, 1]."""
    mean = torch.tensor(MEAN, device=images.device, dtype=images.dtype).view(-1, 1, 1)
    std = torch.tensor(STD, device=images.device, dtype=images.dtype).view(-1, 1, 1)
    return (images * std + mean).clamp_(0.0, 1.0)


def resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of an integer mask ``HxW`` or ``BxHxW`` to ``size`` (h, w)."""
    squeeze = mask.dim() == 2
    m = mask[None, None] if squeeze else mask[:, None]
    out = F.interpolate(m.float(), size=size, mode="nearest").long()
    return out[0, 0] if squeeze else out[:, 0]


def colorize(mask: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """``HxW`` class ids -> ``HxWx3`` uint8 using ``colours`` (``K x 3``); void and unknown ids are white."""
    lut = np.full((256, 3), 255, dtype=np.uint8)
    lut[: len(colours)] = colours
    return lut[np.asarray(mask, dtype=np.uint8)]
