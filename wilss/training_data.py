"""Torch datasets over images with masks (step 0, evaluation) or with image-level tags (the weak steps), as the
trainer reads them: decoded once, cached in memory below ``CACHE_LIMIT`` items, augmented per item."""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from wilss.conventions import normalize, prepare_image
from wilss.data import CACHE_LIMIT, DataError, PathLike, load_image, load_mask
from wilss.tags import TaggedSet
from wilss.transforms import Compose, FitLongerSide, train_transform

ImageLike = Union[np.ndarray, PathLike]   # an HxWx3 / HxW uint8 array, or a file to decode


def _as_array(x: ImageLike, ndim: int, load: Callable[[PathLike], np.ndarray]) -> np.ndarray:
    """A path is decoded with ``load``; an array must already be uint8 (``HxWx3`` image or ``HxW`` mask)."""
    if not isinstance(x, np.ndarray):
        return load(x)
    if x.ndim != ndim or x.dtype != np.uint8 or (ndim == 3 and x.shape[2] != 3):
        shape = "HxWx3" if ndim == 3 else "HxW"
        raise ValueError(f"expected a uint8 array of shape {shape}, got {x.shape} {x.dtype}")
    return x


class _CachedDataset(Dataset):
    """Decodes item ``i`` once with ``_decode(i)`` and, when ``cache`` is on, keeps it in memory."""

    def __init__(self, size: int, cache: Optional[bool]):
        self.cache = size < CACHE_LIMIT if cache is None else cache
        self._cached: dict[int, object] = {}

    def load(self, index: int):
        """The decoded item, before ``transform``; shared with the cache, so never modify it in place."""
        if index in self._cached:
            return self._cached[index]
        item = self._decode(index)
        if self.cache:
            self._cached[index] = item
        return item

    def forget(self) -> None:
        """Drop the decoded items (after training: what reads the images later decodes them again)."""
        self._cached.clear()


class PixelDataset(_CachedDataset):
    """Images with pixel masks. Item: ``(3xHxW float32 normalised image, HxW int64 class ids)``.

    ``items``: (image, mask) pairs, each an array (``HxWx3`` / ``HxW`` uint8) or a path, read lazily.
    ``label_map``: 256-entry uint8 lookup applied to mask ids before ``transform`` (dataset ids -> model
    ids, e.g. future classes -> 0 or 255). ``transform(image, mask) -> (image, mask)`` on uint8 arrays.
    ``cache``: keep decoded (and remapped) pairs in memory; default on below ``CACHE_LIMIT`` items.
    """

    def __init__(self, items: Sequence[tuple[ImageLike, ImageLike]], *,
                 label_map: Optional[np.ndarray] = None, transform: Optional[Callable] = None,
                 cache: Optional[bool] = None):
        self.items = list(items)
        super().__init__(len(self.items), cache)
        self.label_map = None if label_map is None else np.asarray(label_map)
        if self.label_map is not None and (self.label_map.shape != (256,) or self.label_map.dtype != np.uint8):
            raise ValueError(f"label_map must be a 256-entry uint8 array, got {self.label_map.shape} "
                             f"{self.label_map.dtype}")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def _decode(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image_src, mask_src = self.items[index]
        image, mask = _as_array(image_src, 3, load_image), _as_array(mask_src, 2, load_mask)
        if image.shape[:2] != mask.shape:
            name = f"'{mask_src}'" if not isinstance(mask_src, np.ndarray) else f"of item {index}"
            raise DataError(f"The mask {name} is {mask.shape[1]}x{mask.shape[0]} pixels but its image is "
                            f"{image.shape[1]}x{image.shape[0]}. A mask must have exactly its image's size.")
        return image, mask if self.label_map is None else self.label_map[mask]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.load(index)
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        return normalize(image), torch.from_numpy(np.asarray(mask, dtype=np.int64))


class TagDataset(_CachedDataset):
    """Images with multi-hot tags. Item: ``(3xHxW float32 image, K float32 targets, index)``.

    ``images``: arrays (``HxWx3`` uint8) or paths; ``targets``: ``N x K`` multi-hot. ``transform`` takes an
    ``HxWx3`` uint8 image and returns an image or an ``(image, None)`` pair, so the joint transforms of
    ``wilss.transforms`` can be used as they are.
    """

    def __init__(self, images: Sequence[ImageLike], targets: np.ndarray, *,
                 transform: Optional[Callable] = None, cache: Optional[bool] = None,
                 loader: Callable[[PathLike], np.ndarray] = load_image):
        self.images = list(images)
        self.loader = loader   # path -> HxWx3 uint8 (e.g. already fitted to the training size, see below)
        super().__init__(len(self.images), cache)
        self.targets = np.asarray(targets, dtype=np.float32)
        if self.targets.ndim != 2 or len(self.targets) != len(self.images):
            raise ValueError(f"targets must be N x K with N = {len(self.images)}, got {self.targets.shape}")
        self.transform = transform

    @classmethod
    def from_tagged(cls, tagged: TaggedSet, classes: Sequence[str], **kwargs) -> "TagDataset":
        """Targets over ``classes`` (in that order) from a ``TaggedSet``."""
        return cls(tagged.paths, tagged.multi_hot(classes), **kwargs)

    def __len__(self) -> int:
        return len(self.images)

    def _decode(self, index: int) -> np.ndarray:
        return _as_array(self.images[index], 3, self.loader)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        image = self.load(index)
        if self.transform is not None:
            out = self.transform(image)
            image = out[0] if isinstance(out, tuple) else out
        return normalize(image), torch.from_numpy(self.targets[index].copy()), index


def fitted_image(path: PathLike, side: int) -> np.ndarray:
    """A user's image as a step sees it: ``HxWx3`` uint8 at the network's input scale ``side`` (longer side, px;
    ``conventions.prepare_image``)."""
    return prepare_image(load_image(path), side)


def tagged_training_set(tagged: TaggedSet, columns: Sequence[str], cfg, *, side: Optional[int] = None) -> TagDataset:
    """The weak step's dataset over a user's tagged images, targets over ``columns``: each image is brought to the
    network's input scale ``side`` (its longer side, px: the base's recorded scale; ``None``: ``cfg.crop_size``, for
    callers without a base), then augmented by the paper's random scale, crop (``cfg.crop_size``) and flip of ``cfg``
    (an ``OptimConfig``). With the scale at the crop size a crop shows most of the image, so its tags still hold."""
    side = cfg.crop_size if side is None else side
    augment = train_transform(cfg.crop_size, cfg.scale_range, cfg.hflip)
    # Fitted when decoded, so the cache holds scale-sized images whatever the size of the files (a 6000x6000 photo
    # was kept whole, 108 MB, and resized again every epoch); the items are the same as fitting after the cache.
    return TagDataset.from_tagged(tagged, columns, transform=augment, loader=lambda path: fitted_image(path, side))


def masked_training_set(pairs: Sequence[tuple[ImageLike, ImageLike]], cfg, *, side: Optional[int] = None,
                        label_map: Optional[np.ndarray] = None) -> PixelDataset:
    """The pixel-supervised step's dataset over (image, mask) pairs (arrays or files; masks in the new model's ids,
    or mapped to them by ``label_map``): each pair brought to the input scale ``side`` as the weak step's images
    (``None``: ``cfg.crop_size``; masks nearest), then augmented by ``cfg``'s random scale, crop and flip."""
    side = cfg.crop_size if side is None else side
    augment = train_transform(cfg.crop_size, cfg.scale_range, cfg.hflip)
    return PixelDataset(pairs, label_map=label_map, transform=Compose([FitLongerSide(side), *augment.transforms]))
