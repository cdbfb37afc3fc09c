"""PAMR (pixel-adaptive mask refinement, Araslanov & Roth, CVPR 2020) and the localizer's self-training target.

PAMR is parameter-free and runs without gradient. Affinities come from the image: for every pixel ``i`` and
each neighbour ``n`` on the 3x3 ring at each dilation ``d`` (8 x len(dilations) neighbours, replicate padding),

    k_in = -mean_rgb |I_i - I_n| / (1e-8 + 0.1 * sigma_i),   a_in = softmax_n(k_in),

with ``sigma_i`` the per-channel standard deviation of the intensities over pixel ``i`` and all its sampled
neighbours. The masks are then averaged ``iterations`` times: ``m_i <- sum_n a_in m_n``.
Since every ``a_i.`` sums to one, per-pixel distributions stay distributions.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch
import torch.nn.functional as F

from wilss.conventions import BACKGROUND, IGNORE_INDEX
from wilss.losses import hard_soft_mix


def _neighbours(x: torch.Tensor, dilations: Sequence[int]) -> Iterator[torch.Tensor]:
    """Yield ``x`` (``BxCxHxW``) shifted to each ring neighbour, in a fixed order, with replicate padding."""
    h, w = x.shape[-2:]
    pad = max(dilations)
    # One replicate pad by the largest dilation serves every smaller one: a replicated border is the same
    # value at any distance outside the image.
    xp = F.pad(x, [pad, pad, pad, pad], mode="replicate")
    for d in dilations:
        for dy in (-d, 0, d):
            for dx in (-d, 0, d):
                if dy or dx:
                    yield xp[:, :, pad + dy: pad + dy + h, pad + dx: pad + dx + w]


def _affinity(image: torch.Tensor, dilations: Sequence[int]) -> torch.Tensor:
    """``Bx3xHxW`` image -> ``BxPxHxW`` affinities (P = 8 * len(dilations)), summing to 1 over P."""
    # Local std per channel over the centre pixel and its P neighbours (unbiased), accumulated so that
    # memory stays O(B*P*H*W) rather than O(B*3*P*H*W).
    s1, s2, count = image.clone(), image.square(), 1
    for nb in _neighbours(image, dilations):
        s1 += nb
        s2 += nb.square()
        count += 1
    var = (s2 - s1.square() / count).clamp(min=0) / (count - 1)
    scale = 1e-8 + 0.1 * var.sqrt()
    # k_in = -|I_i - I_n| / (1e-8 + 0.1 sigma_i), averaged over RGB; softmax over all neighbours.
    kernel = torch.stack([-((image - nb).abs() / scale).mean(1) for nb in _neighbours(image, dilations)], 1)
    return kernel.softmax(1)


@torch.no_grad()
def pamr(image: torch.Tensor, masks: torch.Tensor, *, dilations: Sequence[int] = (1, 2, 4, 8, 12, 24),
         iterations: int = 10) -> torch.Tensor:
    """Refine ``masks`` (``BxCxHxW``, any float scores) along the edges of ``image`` (``Bx3xH'xW'`` in [0, 1]).

    The image is bilinearly resized to the mask size when they differ. Returns ``BxCxHxW`` float.
    """
    if image.dim() != 4 or masks.dim() != 4 or image.shape[0] != masks.shape[0]:
        raise ValueError(f"expected Bx3xHxW image and BxCxHxW masks, "
                         f"got {tuple(image.shape)} and {tuple(masks.shape)}")
    masks = masks.float()
    image = image.to(masks.device, torch.float32)
    if image.shape[-2:] != masks.shape[-2:]:
        image = F.interpolate(image, size=masks.shape[-2:], mode="bilinear", align_corners=False)
    aff = _affinity(image, dilations)
    for _ in range(iterations):
        refined = torch.zeros_like(masks)
        for p, nb in enumerate(_neighbours(masks, dilations)):
            refined.addcmul_(aff[:, p: p + 1], nb)  # m_i <- sum_n a_in m_n, in place: half the time of `+= a * m`
        masks = refined
    return masks


@torch.no_grad()
def refine_target(images: torch.Tensor, target: torch.Tensor, *, stride: int, alpha: float = 0.0,
                  dilations: Sequence[int] = (1, 2, 4, 8), iterations: int = 10,
                  fine_iterations: int = 0) -> torch.Tensor:
    """A weak step's soft target ``BxKxhxw`` (Eq. 5-7) bilinearly upsampled to ``1/stride`` of the images'
    resolution, refined there by PAMR along the edges of ``images`` (``Bx3xHxW`` in [0, 1]), then sharpened again
    by Eq. 6's mix with its one-hot argmax (weight ``alpha``; PAMR's averaging softens it).

    With ``fine_iterations > 0`` (coarse to fine) the refined scores are then upsampled to the images' full
    resolution and refined there by that many more iterations before the mix: the long-range spread is done at
    ``1/stride``, where it is cheap, and thin parts are traced at full resolution. The result is then ``BxKxHxW``.

    Each refined value is a convex combination of target values, so targets stay in [0, 1] and classes the
    image's tags exclude stay 0. Returns ``BxKx(H/stride)x(W/stride)`` (``BxKxHxW`` with ``fine_iterations``).
    """
    size = (images.shape[-2] // stride, images.shape[-1] // stride)
    if size == tuple(images.shape[-2:]):   # already at full resolution: one run of every iteration, one affinity
        iterations, fine_iterations = iterations + fine_iterations, 0
    target = F.interpolate(target.float(), size=size, mode="bilinear", align_corners=False)
    refined = pamr(images, target, dilations=dilations, iterations=iterations)
    if fine_iterations:
        refined = F.interpolate(refined, size=images.shape[-2:], mode="bilinear", align_corners=False)
        refined = pamr(images, refined, dilations=dilations, iterations=fine_iterations)
    return hard_soft_mix(refined, alpha)


@torch.no_grad()
def pamr_pseudo_label(masks_refined: torch.Tensor, tags: torch.Tensor, *, cutoff_bkg: float = 0.7,
                      cutoff_fg: float = 0.6, cutoff_low: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """Self-training target from PAMR-refined scores (``BxCxHxW``, channel 0 = background).

    ``tags``: ``Bx(C-1)`` multi-hot over the non-background channels. Pixel ``i`` is a confident ``c`` when
    ``m_ic >= cutoff_c * max_j m_jc`` (cutoff_bkg for background, cutoff_fg otherwise) and ``m_ic >= cutoff_low``;
    untagged classes are never confident, background always may be. Pixels confident for zero or several
    classes are ambiguous. Returns ``(labels, confident)``: ``labels`` LongTensor ``BxHxW`` with class ids and
    ``IGNORE_INDEX`` for ambiguous pixels, ``confident`` bool ``BxCxHxW`` before the ambiguity test.
    """
    b, c = masks_refined.shape[:2]
    if tags.shape != (b, c - 1):
        raise ValueError(f"tags must be Bx(C-1) = {(b, c - 1)}, got {tuple(tags.shape)}")
    cutoff = torch.full((c,), cutoff_fg, device=masks_refined.device)
    cutoff[BACKGROUND] = cutoff_bkg
    peak = masks_refined.flatten(2).amax(2)  # BxC
    threshold = (peak * cutoff).clamp(min=cutoff_low)
    allowed = torch.cat([torch.ones_like(tags[:, :1]), tags], 1).to(masks_refined.device) > 0
    confident = (masks_refined >= threshold[:, :, None, None]) & allowed[:, :, None, None]
    labels = confident.float().argmax(1)
    labels[confident.sum(1) != 1] = IGNORE_INDEX
    return labels, confident


def balanced_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Class-balanced cross entropy: the mean over classes present in ``labels`` of each class's mean CE.

    ``logits``: ``BxCxHxW``; ``labels``: ``BxHxW`` with ``IGNORE_INDEX`` for ignored pixels. Classes are pooled
    over the whole batch. Returns a scalar; 0 (still attached to the graph) when no pixel is labelled.
    """
    ce = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="none")
    valid = labels != IGNORE_INDEX
    if not bool(valid.any()):
        return logits.sum() * 0.0
    cls, loss = labels[valid], ce[valid]
    c = logits.shape[1]
    sums = torch.zeros(c, dtype=loss.dtype, device=loss.device).scatter_add(0, cls, loss)
    counts = torch.bincount(cls, minlength=c)
    present = counts > 0
    return (sums[present] / counts[present]).mean()
