"""HRHF replay (Huang et al., "Half-Real Half-Fake Distillation for Class-Incremental Semantic Segmentation").

Old training images are gone, so images of the old classes are synthesised by inverting the frozen old model from
noise (DeepInversion-style): the input pixels are optimised so that the old model predicts chosen old classes in
chosen regions of a target mask, under a batch-norm-statistics prior (each BN layer's batch mean and variance
should match its running statistics), a total-variation prior and an L2 prior on the pixels. The target masks hold
objects of several sizes and the per-pixel loss is averaged per object first (scale-aware aggregation), so small
objects count as much as large ones. During the update, those fake images replay the old classes: on them the new
model distils the frozen old model (``replay_distillation``); on the real images the usual WILSON losses. Real and
fake images go through the network in one forward, but each batch-norm layer normalises the two parts apart and
learns its running statistics from the real part alone (``split_batch_norm``).

Each equation is one function below; ``synthesise`` is a generator (one ``(step, loss)`` per inversion step) so the
update can report the synthesis as a progress phase. Shapes: images ``Bx3xHxW`` normalised (``wilss.conventions``),
region maps ``BxHxW`` int64 (0 = background region, 1.. = objects), class maps ``BxHxW`` int64 model ids.
"""
from __future__ import annotations

import contextlib
import functools
import logging
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from wilss.conventions import MEAN, STD
from wilss.optim import Adam

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InversionConfig:
    """How the old model is inverted; the user-facing options are ``UpdateConfig.replay_*``."""

    lr: float = 0.1                      # Adam on the pixels (DeepInversion: 0.1-0.25)
    bn_weight: float = 0.05              # weight of the BN-statistics prior (summed over the BN layers)
    tv_weight: float = 1e-3              # total variation of the image
    l2_weight: float = 1e-5              # squared magnitude of the (normalised) pixels
    batch_size: int = 16                 # images inverted together (the BN prior reads their batch statistics)
    scales: tuple[float, ...] = (0.45, 0.25, 0.12)   # object sides, as a share of the image side, one per object


# ----------------------------------------------------------------------------------------------- equations
def bn_prior(inputs: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor) -> torch.Tensor:
    """DeepInversion's feature-statistics term of one BN layer: ||mu(x) - mu_run||_2 + ||var(x) - var_run||_2.

    ``inputs``: the layer's input ``BxCxHxW``; mean and (biased) variance over batch and space, per channel ``C``.
    """
    mean = inputs.mean(dim=(0, 2, 3))
    var = inputs.var(dim=(0, 2, 3), unbiased=False)
    return torch.linalg.vector_norm(mean - running_mean) + torch.linalg.vector_norm(var - running_var)


def tv_prior(images: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation: mean |x[h+1] - x[h]| over vertical pairs + the same over horizontal pairs."""
    return ((images[..., 1:, :] - images[..., :-1, :]).abs().mean()
            + (images[..., :, 1:] - images[..., :, :-1]).abs().mean())


def l2_prior(images: torch.Tensor) -> torch.Tensor:
    """Mean squared pixel value (keeps the normalised pixels near the data's range)."""
    return images.pow(2).mean()


def pixel_nll(logits: torch.Tensor, classes: torch.Tensor, activation: str) -> torch.Tensor:
    """Per-pixel loss ``BxHxW`` of ``logits`` ``BxKxHxW`` against class ids ``BxHxW``, read as the model reads its
    outputs: 'softmax' -> cross-entropy; 'sigmoid' -> BCE against the one-hot target, summed over classes."""
    if activation == "softmax":
        return F.cross_entropy(logits, classes, reduction="none")
    onehot = F.one_hot(classes, logits.shape[1]).permute(0, 3, 1, 2).to(logits.dtype)
    return F.binary_cross_entropy_with_logits(logits, onehot, reduction="none").sum(1)


def scale_aware_loss(pixel_loss: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """HRHF's scale-aware aggregation: the mean of ``pixel_loss`` ``BxHxW`` within each region of ``regions``
    ``BxHxW`` (per image: 0 background, 1.. objects), then the mean over all regions of the batch:
    L = 1/|R| sum_r 1/|r| sum_{i in r} l_i. A 10-pixel object weighs as much as a 1000-pixel one."""
    flat = regions + (regions.amax() + 1) * torch.arange(len(regions), device=regions.device)[:, None, None]
    ids, inverse = torch.unique(flat.flatten(), return_inverse=True)
    sums = torch.zeros(len(ids), dtype=pixel_loss.dtype, device=pixel_loss.device).index_add_(
        0, inverse, pixel_loss.flatten())
    counts = torch.bincount(inverse, minlength=len(ids)).to(pixel_loss.dtype)
    return (sums / counts).mean()


def replay_distillation(new_logits: torch.Tensor, old_probs: torch.Tensor) -> torch.Tensor:
    """Distillation on fake images: BCE-with-logits of the new model's ``BxKxhxw`` against the old model's
    probabilities ``BxK0xhxw`` on the old channels and 0 on the K - K0 new ones (the old classes were inverted,
    no new class is there); summed over classes, mean over pixels (as l_SEG, Eq. 8)."""
    new = new_logits.shape[1] - old_probs.shape[1]
    target = torch.cat([old_probs, old_probs.new_zeros(old_probs.shape[0], new, *old_probs.shape[2:])], 1)
    return F.binary_cross_entropy_with_logits(new_logits, target, reduction="none").sum(1).mean()


@contextlib.contextmanager
def split_batch_norm(model: nn.Module, num_real: int) -> Iterator[None]:
    """Inside the block, each batch-norm layer of ``model`` in training mode normalises the first ``num_real``
    images of its input with their own batch statistics, and learns its running statistics from them alone; the
    rest (the fake images) with their own batch statistics, the running ones left as they are. Shared statistics
    (one batch of both, as HRHF's paper has it) moved the real images' normalisation and the running statistics
    towards the fakes': old mIoU after the last of the world's 5-1-1-1-1 steps 53.6 shared, 56.9 split
    (``docs/results.md``). One forward, so DistributedDataParallel sees one pass."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    for layer in layers:
        layer.forward = functools.partial(_split_forward, layer, num_real)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward   # back to the class's


def _split_forward(layer: nn.modules.batchnorm._BatchNorm, num_real: int, x: torch.Tensor) -> torch.Tensor:
    real, rest = type(layer).forward(layer, x[:num_real]), x[num_real:]
    if rest[:, :1].numel() < 2 and layer.running_mean is not None:   # one value a channel (one fake, pooled)
        return torch.cat([real, F.batch_norm(rest, layer.running_mean, layer.running_var, layer.weight, layer.bias,
                                             training=False, eps=layer.eps)])
    momentum, tracked = layer.momentum, layer.num_batches_tracked
    saved = None if tracked is None else tracked.clone()
    layer.momentum = 0.0   # the running statistics stay as the real part left them
    try:
        fake = type(layer).forward(layer, rest)
    finally:
        layer.momentum = momentum
        if saved is not None:
            tracked.copy_(saved)
    return torch.cat([real, fake])


# ------------------------------------------------------------------------------------------------- targets
def replay_class_ids(spec: str, class_names: Sequence[str] | None, num_old: int) -> list[int]:
    """The old-class ids to invert: ``spec`` '' = every old class (1..num_old-1); else comma-separated names of
    ``class_names`` (or ids, when there are no names). Raises ``ValueError`` naming what the model lacks."""
    if not spec.strip():
        return list(range(1, num_old))
    names = list(class_names or [])[:num_old]
    chosen, unknown = [], []
    for token in (t.strip() for t in spec.split(",") if t.strip()):
        if token in names[1:]:
            chosen.append(names.index(token))
        elif not names and token.isdigit() and 1 <= int(token) < num_old:
            chosen.append(int(token))
        else:
            unknown.append(token)
    if unknown or not chosen:
        known = ", ".join(names[1:]) if names else f"ids 1-{num_old - 1}"
        asked = ", ".join(unknown) if unknown else repr(spec)
        raise ValueError(f"replay classes {asked}: the model has no such class to invert (its old classes: {known})")
    return sorted(set(chosen))


def target_masks(num: int, size: int, classes: Sequence[int], scales: Sequence[float],
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``num`` target masks ``size`` x ``size``: one object per scale (side = scale x size, largest first, an
    axis-aligned ellipse or rectangle at a random place), its class cycling through ``classes``.
    Returns (class ids ``NxHxW``, region ids ``NxHxW``: 0 background, k the k-th object)."""
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    labels = torch.zeros(num, size, size, dtype=torch.long)
    regions = torch.zeros_like(labels)
    k = 0
    for n in range(num):
        for r, scale in enumerate(sorted(scales, reverse=True), start=1):
            side = max(2, round(scale * size))
            top, left = (torch.randint(0, size - side + 1, (2,), generator=generator)).tolist()
            if torch.rand((), generator=generator) < 0.5:
                cy, cx, half = top + (side - 1) / 2, left + (side - 1) / 2, side / 2
                inside = ((ys - cy) ** 2 + (xs - cx) ** 2) <= half ** 2
            else:
                inside = (ys >= top) & (ys < top + side) & (xs >= left) & (xs < left + side)
            labels[n][inside], regions[n][inside] = classes[k % len(classes)], r
            k += 1
    return labels, regions


# ---------------------------------------------------------------------------------------------- inversion
class BNStatistics:
    """Forward hooks on every batch-norm layer of ``model``: ``prior()`` sums ``bn_prior`` over them after a
    forward pass. Use as a context manager (the hooks are removed on exit)."""

    def __init__(self, model: nn.Module) -> None:
        self.layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self.terms: list[torch.Tensor] = []
        self.handles = []

    def __enter__(self) -> "BNStatistics":
        def hook(module, inputs, _output):
            self.terms.append(bn_prior(inputs[0].float(), module.running_mean, module.running_var))
        self.handles = [layer.register_forward_hook(hook) for layer in self.layers]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()

    def prior(self) -> torch.Tensor:
        total = torch.stack(self.terms).sum() if self.terms else torch.zeros(())
        self.terms = []
        return total


def synthesise(old_model, *, num: int, size: int, classes: Sequence[int], steps: int,
               cfg: InversionConfig = InversionConfig(), seed: int = 0,
               device: torch.device | str = "cpu") -> Iterator[tuple[int, float, torch.Tensor | None]]:
    """Invert the frozen ``old_model`` (a ``Segmenter`` in eval mode) into ``num`` images ``size`` x ``size``.

    Yields ``(step, loss, None)`` after each of the ``steps`` Adam steps of each batch (step counted over all
    batches, 1-based), then once ``(steps x batches, loss, images)`` with the images ``Nx3xHxW`` (normalised, on
    the CPU). The objective per batch: scale_aware_loss(pixel_nll) + bn_weight x sum of bn_prior + tv_weight x
    tv_prior + l2_weight x l2_prior.
    """
    generator = torch.Generator().manual_seed(seed)
    labels, regions = target_masks(num, size, classes, cfg.scales, generator)
    activation = old_model.activation
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    lo, hi = (-mean / std).to(device), ((1 - mean) / std).to(device)   # pixel values 0 and 1, normalised
    done, images, loss = 0, [], torch.zeros(())
    with BNStatistics(old_model) as stats:
        for start in range(0, num, cfg.batch_size):
            target = labels[start:start + cfg.batch_size].to(device)
            region = regions[start:start + cfg.batch_size].to(device)
            x = torch.randn(len(target), 3, size, size, generator=generator).to(device).requires_grad_(True)
            optimizer = Adam([x], lr=cfg.lr)   # wilss.optim: torch's step, without importing torch._dynamo
            for _ in range(steps):
                loss = (scale_aware_loss(pixel_nll(old_model(x), target, activation), region)
                        + cfg.bn_weight * stats.prior() + cfg.tv_weight * tv_prior(x) + cfg.l2_weight * l2_prior(x))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                with torch.no_grad():   # keep every pixel a colour an image can have
                    x.copy_(torch.maximum(torch.minimum(x, hi), lo))
                done += 1
                yield done, float(loss.detach()), None
            images.append(x.detach().cpu())
    yield done, float(loss.detach()), torch.cat(images)


# ------------------------------------------------------------------------------------------------- replay
@torch.no_grad()
def old_probabilities(old_model, images: torch.Tensor, *, device: torch.device | str = "cpu",
                      batch_size: int = 16) -> torch.Tensor:
    """The frozen old model's probabilities ``NxK0xhxw`` (at its features' resolution) on ``images`` ``Nx3xHxW``."""
    chunks = [old_model.probabilities(old_model.forward_features(images[i:i + batch_size].to(device))[0].float())
              for i in range(0, len(images), batch_size)]
    return torch.cat(chunks)


class ReplayBank:
    """The fake images ``Nx3xHxW`` and the old model's probabilities on them ``NxK0xhxw`` (same device);
    ``draw(k)`` returns k of each, cycling through every image in a seeded random order."""

    def __init__(self, images: torch.Tensor, old_probs: torch.Tensor, *, seed: int = 0) -> None:
        self.images, self.old_probs = images, old_probs
        self.generator = torch.Generator().manual_seed(seed)
        self.order: list[int] = []

    def __len__(self) -> int:
        return len(self.images)

    def draw(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        picked: list[int] = []
        while len(picked) < k:
            if not self.order:
                self.order = torch.randperm(len(self.images), generator=self.generator).tolist()
            picked.append(self.order.pop())
        index = torch.tensor(picked, device=self.images.device)
        return self.images[index], self.old_probs[index]


def fakes_per_batch(batch_size: int, bank_size: int) -> int:
    """Fake images joined to a real batch of ``batch_size``: half as many (at least one), at most the bank."""
    return min(max(1, (batch_size + 1) // 2), bank_size)
