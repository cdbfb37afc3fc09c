"""Segmentation conventions shared by every part of the project: one place for them.

- Class id 0 is the background ("none of the known classes"); ids 1..K-1 are named classes.
- Pixels labelled ``IGNORE_INDEX`` (255) are void: excluded from every loss and metric.
- Images enter networks as float tensors ``3xHxW`` normalised with ImageNet statistics.
- Masks are resized with nearest-neighbour interpolation only (never blended).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

IGNORE_INDEX = 255
BACKGROUND = 0
BACKGROUND_NAME = "background"
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


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


def hex_to_rgb(colour: str) -> tuple[int, int, int]:
    """'#RRGGBB' -> (r, g, b). Raises ValueError with the offending text."""
    text = colour.strip().lstrip("#")
    if len(text) != 6 or any(ch not in "0123456789abcdefABCDEF" for ch in text):
        raise ValueError(f"colour {colour!r} is not of the form #RRGGBB")
    return int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16)


def rgb_to_hex(rgb) -> str:
    r, g, b = (int(v) for v in rgb)
    return f"#{r:02x}{g:02x}{b:02x}"


def normalize(image: np.ndarray) -> torch.Tensor:
    """``HxWx3`` uint8 RGB -> ``3xHxW`` float32 normalised tensor."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 RGB image, got shape {image.shape}")
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(MEAN).view(3, 1, 1)
    std = torch.tensor(STD).view(3, 1, 1)
    return (tensor - mean) / std


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
