"""The segmentation network contract shared by every architecture.

A ``Segmenter`` is ``encoder -> head -> classifier``:

- ``encoder(x)``: ``Bx3xHxW`` -> ``BxCfxhxw``, the backbone's last feature map (what WILSON's localizer reads);
- ``head(f)``: ``BxCfxhxw`` -> ``BxChxhxw`` (ASPP and friends);
- ``classifier(h)``: a 1x1 convolution ``Ch -> K`` that can grow by new rows (one per new class).

Logits at feature resolution come from ``decode``; ``forward`` upsamples them to the input size.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class GrowableClassifier(nn.Module):
    """1x1 conv classifier over ``in_channels`` features producing ``num_classes`` logits.

    Channel order is [background, old classes..., new classes...]; ``grow`` appends rows.
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, num_classes, kernel_size=1)

    @property
    def num_classes(self) -> int:
        return self.conv.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)

    @torch.no_grad()
    def grow(self, num_new: int, *, mib_init: bool = True) -> None:
        """Append ``num_new`` output rows.

        MiB initialisation: the new rows copy the background row and the background bias and the new biases
        become ``b_bg - log(num_new + 1)``. Old-class logits are untouched, and under a softmax the old-class
        probabilities are unchanged while the background probability is shared with the new classes.
        """
        if num_new < 1:
            raise ValueError(f"a classifier grows by at least one class, got {num_new}")
        old = self.conv
        new = nn.Conv2d(old.in_channels, old.out_channels + num_new, kernel_size=1).to(old.weight)
        new.weight[: old.out_channels] = old.weight
        new.bias[: old.out_channels] = old.bias
        if mib_init:
            shared_bias = old.bias[0] - math.log(num_new + 1)
            new.weight[old.out_channels :] = old.weight[0]
            new.bias[old.out_channels :] = shared_bias
            new.bias[0] = shared_bias
        self.conv = new


class Segmenter(nn.Module):
    """``encoder -> head -> classifier`` with the encoder's feature map exposed (see module docstring)."""

    def __init__(self, encoder: nn.Module, head: nn.Module, classifier: GrowableClassifier,
                 *, feature_channels: int, config: dict) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.classifier = classifier
        self.feature_channels = feature_channels
        # The builder arguments; `num_classes` is kept current by `grow` so checkpoints can rebuild the net.
        self.config = dict(config)

    @property
    def num_classes(self) -> int:
        return self.classifier.num_classes

    @property
    def activation(self) -> str:
        """'sigmoid' (trained with BCE) or 'softmax' (trained with cross-entropy)."""
        return self.config.get("activation", "sigmoid")

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-class probabilities ``BxKx...`` of logits, read the way the model was trained."""
        return torch.sigmoid(logits) if self.activation == "sigmoid" else logits.softmax(dim=1)

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        """``BxCfxhxw`` features -> ``BxKxhxw`` logits at feature resolution."""
        return self.classifier(self.head(features))

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``Bx3xHxW`` -> (logits ``BxKxhxw`` at feature resolution, encoder features ``BxCfxhxw``)."""
        features = self.encoder(x)
        return self.decode(features), features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``Bx3xHxW`` normalised images -> ``BxKxHxW`` logits at input resolution."""
        logits, _ = self.forward_features(x)
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def grow(self, num_new: int, *, mib_init: bool = True) -> None:
        self.classifier.grow(num_new, mib_init=mib_init)
        self.config["num_classes"] = self.num_classes
