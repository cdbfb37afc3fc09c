"""An offline region prior for the weak step's pseudo-labels (beyond the paper): superpixels of the image, and the
soft target averaged over each of them, so that every region takes one (soft) class distribution.

A published method gains a few mIoU points over WILSON from a region prior (SAM's masks); this is the free,
offline version: scikit-image's SLIC or Felzenszwalb superpixels on the de-normalised image. The superpixels are
computed on the fly for each training batch (CPU, numpy): random crops, scales and flips change the image, so a
cache by dataset index would be wrong under augmentation.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

SLIC_COMPACTNESS = 10.0        # scikit-image's default balance of colour (CIELAB) against position
FELZENSZWALB_SIGMA = 0.5       # Gaussian pre-smoothing, scikit-image's default
FELZENSZWALB_MIN_SIZE = 20     # smallest region in pixels: fewer specks of texture


def superpixels(images: np.ndarray, *, method: str = "slic", segments: int = 800,
                scale: float = 10.0) -> np.ndarray:
    """Superpixel labels of ``images`` (``BxHxWx3`` uint8 RGB): ``BxHxW`` int64, each image's regions numbered
    0, 1, ... on their own.

    ``method``: 'slic' (about ``segments`` compact regions of similar colour) or 'felzenszwalb' (graph-based regions
    that follow the image's edges; ``scale``: larger, fewer and bigger regions).
    """
    from skimage.segmentation import felzenszwalb, slic   # scikit-image: only when the prior is used

    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected BxHxWx3 uint8 images, got shape {images.shape}")
    if method == "slic":
        labels = [slic(image, n_segments=segments, compactness=SLIC_COMPACTNESS, start_label=0) for image in images]
    elif method == "felzenszwalb":
        labels = [felzenszwalb(image, scale=scale, sigma=FELZENSZWALB_SIGMA, min_size=FELZENSZWALB_MIN_SIZE)
                  for image in images]
    else:
        raise ValueError(f"unknown superpixel method {method!r}; use 'slic' or 'felzenszwalb'")
    return np.stack(labels).astype(np.int64)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``Bx3xHxW`` float images in [0, 1] -> ``BxHxWx3`` uint8 numpy, what ``superpixels`` reads."""
    return (images.detach().float().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def region_average(target: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
    """Each region's mean of the soft ``target`` (``BxKxhxw``), painted over the region: ``BxKxHxW`` at the
    resolution of ``segments`` (``BxHxW`` integer region ids >= 0, numbered per image).

    The target is first bilinearly resized to the segments' resolution when they differ, so a region's mean is the
    area-weighted mean of the target over it. Every output value is a mean of target values: targets stay in their
    range, and channels that are 0 everywhere (classes an image's tags exclude) stay 0.
    """
    if target.dim() != 4 or segments.dim() != 3 or target.shape[0] != segments.shape[0]:
        raise ValueError(f"expected BxKxhxw target and BxHxW segments, "
                         f"got {tuple(target.shape)} and {tuple(segments.shape)}")
    b, k = target.shape[:2]
    size = tuple(segments.shape[-2:])
    target = target.float()
    if tuple(target.shape[-2:]) != size:
        target = F.interpolate(target, size=size, mode="bilinear", align_corners=False)
    segments = segments.to(target.device, torch.long)
    if int(segments.min()) < 0:
        raise ValueError("segment ids must be >= 0")
    per_image = int(segments.max()) + 1
    ids = (segments + per_image * torch.arange(b, device=target.device)[:, None, None]).flatten()  # B*H*W
    values = target.permute(0, 2, 3, 1).reshape(-1, k)                                             # B*H*W x K
    sums = torch.zeros(b * per_image, k, device=target.device).index_add_(0, ids, values)
    counts = torch.bincount(ids, minlength=b * per_image).clamp(min=1).to(sums.dtype)
    means = sums / counts[:, None]
    return means[ids].reshape(b, *size, k).permute(0, 3, 1, 2).contiguous()


def region_prior_target(images: torch.Tensor, target: torch.Tensor, *, method: str, segments: int = 800,
                        scale: float = 10.0, weight: float = 1.0) -> torch.Tensor:
    """A weak step's soft target ``BxKxhxw`` averaged over the superpixels of ``images`` (``Bx3xHxW`` in [0, 1]):
    ``BxKxHxW``, piecewise constant on the regions (``region_average``) with ``weight`` 1; otherwise ``weight`` x
    that + (1 - ``weight``) x the target bilinearly upsampled (regions cut across thin objects; the mix keeps some of
    what the target knows inside them)."""
    labels = superpixels(to_uint8(images), method=method, segments=segments, scale=scale)
    averaged = region_average(target, torch.from_numpy(labels))
    if weight == 1.0:
        return averaged
    upsampled = F.interpolate(target.float(), size=averaged.shape[-2:], mode="bilinear", align_corners=False)
    return weight * averaged + (1.0 - weight) * upsampled
