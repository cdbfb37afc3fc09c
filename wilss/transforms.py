"""Joint transforms over an (image, mask) pair, in the style of torchvision's ``references/segmentation``.

Every transform is called as ``t(image, mask=None, *, rng=None)`` and returns ``(image, mask)``:

- ``image``: ``HxWx3`` uint8 RGB numpy array (resized bilinearly);
- ``mask``: ``HxW`` uint8 class ids, or ``None`` for tag-only data (resized with nearest neighbour only,
  padded with ``IGNORE_INDEX`` so padding never counts as a class).

Randomness: a transform owns no generator. It uses the ``rng`` it is given, and otherwise draws a fresh
``np.random.Generator`` seeded from torch's global RNG. Why: a generator stored on a transform is copied
into every DataLoader worker, so all workers would replay the same augmentations; torch's RNG is seeded
per worker and per epoch by the DataLoader, and ``torch.manual_seed`` makes a whole run reproducible.
``Compose`` draws one generator and hands it to each of its children.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import cv2
import numpy as np
import torch

from wilss.conventions import IGNORE_INDEX, prepare_image

Size = Union[int, tuple[int, int]]
Pair = tuple[np.ndarray, Optional[np.ndarray]]

# INTER_NEAREST has a half-pixel shift in OpenCV; the "exact" variant matches PIL / torch nearest.
_NEAREST = getattr(cv2, "INTER_NEAREST_EXACT", cv2.INTER_NEAREST)


def default_rng(rng: Optional[np.random.Generator] = None) -> np.random.Generator:
    """``rng`` itself, or a new generator seeded from torch's global RNG (see the module docstring)."""
    if rng is not None:
        return rng
    return np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))


def _check(image: np.ndarray, mask: Optional[np.ndarray]) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 image, got {image.shape} {image.dtype}")
    if mask is not None and (mask.shape != image.shape[:2] or mask.dtype != np.uint8):
        raise ValueError(f"expected an HxW uint8 mask matching image {image.shape[:2]}, "
                         f"got {mask.shape} {mask.dtype}")


def _pair_size(size: Size) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else size
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {size}")
    return int(h), int(w)


def resize_pair(image: np.ndarray, mask: Optional[np.ndarray], h: int, w: int) -> Pair:
    """Resize to ``h x w``: image bilinear, mask nearest (ids are never blended)."""
    if image.shape[:2] == (h, w):
        return image, mask
    image = cv2.resize(np.ascontiguousarray(image), (w, h), interpolation=cv2.INTER_LINEAR)
    if mask is not None:
        mask = cv2.resize(np.ascontiguousarray(mask), (w, h), interpolation=_NEAREST)
    return image, mask


def pad_pair(image: np.ndarray, mask: Optional[np.ndarray], h: int, w: int) -> Pair:
    """Pad bottom/right up to at least ``h x w``: image with 0, mask with ``IGNORE_INDEX``."""
    ph, pw = max(h - image.shape[0], 0), max(w - image.shape[1], 0)
    if ph == 0 and pw == 0:
        return image, mask
    border = dict(top=0, bottom=ph, left=0, right=pw, borderType=cv2.BORDER_CONSTANT)
    image = cv2.copyMakeBorder(np.ascontiguousarray(image), value=(0, 0, 0), **border)
    if mask is not None:
        mask = cv2.copyMakeBorder(np.ascontiguousarray(mask), value=IGNORE_INDEX, **border)
    return image, mask


def _crop(image: np.ndarray, mask: Optional[np.ndarray], top: int, left: int, h: int, w: int) -> Pair:
    image = image[top:top + h, left:left + w]
    return image, None if mask is None else mask[top:top + h, left:left + w]


class Compose:
    """Apply transforms in order, sharing one generator so a seed fixes the whole chain."""

    def __init__(self, transforms: Sequence[Callable[..., Pair]]):
        self.transforms = list(transforms)

    def __call__(self, image: np.ndarray, mask: Optional[np.ndarray] = None, *,
                 rng: Optional[np.random.Generator] = None) -> Pair:
        _check(image, mask)
        rng = default_rng(rng)
        for t in self.transforms:
            image, mask = t(image, mask, rng=rng)
        return image, mask

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class RandomScale:
    """Scale both sides by one factor drawn uniformly from ``[min_scale, max_scale]``."""

    def __init__(self, min_scale: float = 0.5, max_scale: float = 2.0):
        if not 0 < min_scale <= max_scale:
            raise ValueError(f"need 0 < min_scale <= max_scale, got {min_scale}, {max_scale}")
        self.min_scale, self.max_scale = min_scale, max_scale

    def __call__(self, image, mask=None, *, rng=None) -> Pair:
        scale = default_rng(rng).uniform(self.min_scale, self.max_scale)
        h, w = image.shape[:2]
        return resize_pair(image, mask, max(1, round(h * scale)), max(1, round(w * scale)))

    def __repr__(self) -> str:
        return f"RandomScale({self.min_scale}, {self.max_scale})"


class RandomCrop:
    """Crop ``size`` (int or (h, w)) at a random place, padding first when the image is smaller."""

    def __init__(self, size: Size):
        self.size = _pair_size(size)

    def __call__(self, image, mask=None, *, rng=None) -> Pair:
        h, w = self.size
        image, mask = pad_pair(image, mask, h, w)
        rng = default_rng(rng)
        top = int(rng.integers(0, image.shape[0] - h + 1))
        left = int(rng.integers(0, image.shape[1] - w + 1))
        return _crop(image, mask, top, left, h, w)

    def __repr__(self) -> str:
        return f"RandomCrop({self.size})"


class CenterCrop:
    """Crop ``size`` (int or (h, w)) from the centre, padding first when the image is smaller."""

    def __init__(self, size: Size):
        self.size = _pair_size(size)

    def __call__(self, image, mask=None, *, rng=None) -> Pair:
        h, w = self.size
        image, mask = pad_pair(image, mask, h, w)
        top, left = (image.shape[0] - h) // 2, (image.shape[1] - w) // 2
        return _crop(image, mask, top, left, h, w)

    def __repr__(self) -> str:
        return f"CenterCrop({self.size})"


class RandomHorizontalFlip:
    """Mirror image and mask together with probability ``p``."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, image, mask=None, *, rng=None) -> Pair:
        if default_rng(rng).random() >= self.p:
            return image, mask
        image = cv2.flip(np.ascontiguousarray(image), 1)
        return image, None if mask is None else cv2.flip(np.ascontiguousarray(mask), 1)

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class Resize:
    """Resize to exactly ``(h, w)``, or (int) so the shorter side equals ``size``, keeping the aspect."""

    def __init__(self, size: Size):
        self.size = size if isinstance(size, int) else _pair_size(size)
        if isinstance(size, int) and size < 1:
            raise ValueError(f"size must be positive, got {size}")

    def __call__(self, image, mask=None, *, rng=None) -> Pair:
        if isinstance(self.size, tuple):
            return resize_pair(image, mask, *self.size)
        h, w = image.shape[:2]
        scale = self.size / min(h, w)
        return resize_pair(image, mask, max(1, round(h * scale)), max(1, round(w * scale)))

    def __repr__(self) -> str:
        return f"Resize({self.size})"


def train_transform(crop_size: Size, scale_range: tuple[float, float] = (0.5, 2.0),
                    hflip: bool = True) -> Compose:
    """The paper's augmentation: random scale, random crop (padded with void), horizontal flip."""
    steps: list[Callable[..., Pair]] = [RandomScale(*scale_range), RandomCrop(crop_size)]
    if hflip:
        steps.append(RandomHorizontalFlip(0.5))
    return Compose(steps)


def eval_transform(size: Optional[Size] = None) -> Compose:
    """Identity, or a deterministic ``Resize(size)``. Metrics are best computed at the mask's own size."""
    return Compose([] if size is None else [Resize(size)])


class FitLongerSide:
    """Resize so the longer side is ``side``, keeping the aspect: the image by ``conventions.prepare_image`` (the
    network's input scale), the mask, if any, nearest to the same size."""

    def __init__(self, side: int):
        if side < 1:
            raise ValueError(f"side must be positive, got {side}")
        self.side = side

    def __call__(self, image, mask=None, *, rng=None) -> Pair:
        image_out = prepare_image(image, self.side)
        if mask is not None and mask.shape != image_out.shape[:2]:
            mask = cv2.resize(np.ascontiguousarray(mask), image_out.shape[1::-1], interpolation=_NEAREST)
        return image_out, mask

    def __repr__(self) -> str:
        return f"FitLongerSide({self.side})"
