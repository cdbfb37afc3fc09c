"""The segmentation network contract shared by every architecture.

A ``Segmenter`` is ``encoder -> head -> classifier``, optionally with an auxiliary ``aux_head -> aux_classifier``:

- ``encoder(x)``: ``Bx3xHxW`` -> named feature maps ``{name: BxCxhxw}`` (a bare tensor counts as ``{'out': it}``);
  ``maps[feature_key]`` is the backbone's last map, the one WILSON's localizer reads ('out', or 'high' for LR-ASPP);
  ``maps[detail_key]``, where the network names one, is a higher-resolution map a localizer may read as well;
- ``head(maps)``: the maps -> what the classifier reads (a ``BxChxhxw`` tensor, or a tuple for summed classifiers);
- ``classifier(h)``: 1x1 convolutions to ``K`` logits that can grow by new rows (one per new class);
- ``aux_head`` / ``aux_classifier`` (FCN / DeepLabV3's auxiliary loss head on an earlier map): the same, trained
  with a lower weight and never used for predictions.

``decode`` gives logits at the head's own resolution (or a requested size); ``forward_features`` gives them at the
localizer map's resolution, as the weak step needs; ``forward`` upsamples them to the input size.
"""
from __future__ import annotations

import math
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

FeatureMaps = dict[str, torch.Tensor]


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
    def grow(self, num_new: int, *, mib_init: bool = True, split_background: bool = True) -> None:
        """Append ``num_new`` output rows.

        MiB initialisation: the new rows copy the background row and the background bias and the new biases
        become ``b_bg - log(num_new + 1)``. Old-class logits are untouched, and under a softmax the old-class
        probabilities are unchanged while the background probability is shared with the new classes.
        ``split_background=False`` copies the background row and bias without the ``- log(num_new + 1)``: for a
        classifier whose logits are summed with those of one that splits it (LR-ASPP), so the sum is MiB's.
        """
        if num_new < 1:
            raise ValueError(f"a classifier grows by at least one class, got {num_new}")
        old = self.conv
        new = nn.Conv2d(old.in_channels, old.out_channels + num_new, kernel_size=1).to(old.weight)
        new.weight[: old.out_channels] = old.weight
        new.bias[: old.out_channels] = old.bias
        if mib_init:
            shared_bias = old.bias[0] - (math.log(num_new + 1) if split_background else 0.0)
            new.weight[old.out_channels :] = old.weight[0]
            new.bias[old.out_channels :] = shared_bias
            new.bias[0] = shared_bias
        self.conv = new


class SummedClassifier(nn.Module):
    """Two growable classifiers whose logits add up (LR-ASPP): ``(low BxClxhxw, high BxChxhxw)`` -> ``BxKxhxw``.

    Growth splits the background once, in ``low_classifier``: the sum of the grown pair is MiB-initialised.
    """

    def __init__(self, low_classifier: GrowableClassifier, high_classifier: GrowableClassifier) -> None:
        super().__init__()
        self.low_classifier = low_classifier
        self.high_classifier = high_classifier

    @property
    def num_classes(self) -> int:
        return self.low_classifier.num_classes

    def forward(self, inputs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        low, high = inputs
        return self.low_classifier(low) + self.high_classifier(high)

    def grow(self, num_new: int, *, mib_init: bool = True) -> None:
        self.low_classifier.grow(num_new, mib_init=mib_init)
        self.high_classifier.grow(num_new, mib_init=mib_init, split_background=False)


class MapHead(nn.Sequential):
    """Layers applied to one named map of the encoder's output (state-dict keys as a plain ``nn.Sequential``'s)."""

    def __init__(self, key: str, *layers: nn.Module) -> None:
        super().__init__(*layers)
        self.key = key

    def forward(self, maps: FeatureMaps) -> torch.Tensor:
        return super().forward(maps[self.key])


def resized(logits: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """``BxKxhxw`` logits bilinearly resized to ``size`` (unchanged when ``size`` is None or already theirs)."""
    if size is None or tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


class Segmenter(nn.Module):
    """``encoder -> head -> classifier`` (+ optional auxiliary head) with the localizer's map exposed (see above)."""

    def __init__(self, encoder: nn.Module, head: nn.Module, classifier: nn.Module, *, feature_channels: int,
                 config: dict, feature_key: str = "out", aux_head: nn.Module | None = None,
                 aux_classifier: GrowableClassifier | None = None, detail_key: str | None = None,
                 detail_channels: int = 0) -> None:
        super().__init__()
        if (aux_head is None) != (aux_classifier is None):
            raise ValueError("an auxiliary head needs its classifier and the other way round")
        self.encoder = encoder
        self.head = head
        self.classifier = classifier
        self.aux_head = aux_head
        self.aux_classifier = aux_classifier
        self.feature_channels = feature_channels
        self.feature_key = feature_key
        self.detail_key, self.detail_channels = detail_key, detail_channels
        # The builder arguments; `num_classes` is kept current by `grow` so checkpoints can rebuild the net.
        self.config = dict(config)

    @property
    def num_classes(self) -> int:
        return self.classifier.num_classes

    @property
    def has_aux(self) -> bool:
        return self.aux_classifier is not None

    @property
    def min_train_batch(self) -> int:
        """Images a training batch needs: DeepLabV3's image-pooling branch batch-normalises one 1x1 value per
        image and channel, which cannot train on a single image."""
        return 2 if str(self.config.get("arch", "")).startswith("deeplabv3") else 1

    def check_train_batch(self, batch_size: int) -> None:
        """Raise ``ValueError`` (a clear message) for a per-process training batch the network cannot train on."""
        if batch_size < self.min_train_batch:
            raise ValueError(f"{self.config.get('arch')} trains on at least {self.min_train_batch} images per batch "
                             f"(per process), got {batch_size}: give more images or a larger --batch-size")

    @property
    def activation(self) -> str:
        """'sigmoid' (trained with BCE) or 'softmax' (trained with cross-entropy)."""
        return self.config.get("activation", "sigmoid")

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-class probabilities ``BxKx...`` of logits, read the way the model was trained."""
        return torch.sigmoid(logits) if self.activation == "sigmoid" else logits.softmax(dim=1)

    def encode(self, x: torch.Tensor) -> FeatureMaps:
        """``Bx3xHxW`` -> the encoder's named feature maps; ``maps[self.feature_key]`` is ``BxCfxhxw``."""
        return as_maps(self.encoder(x))

    def decode(self, maps: FeatureMaps | torch.Tensor, *,
               size: tuple[int, int] | None = None) -> torch.Tensor:
        """Feature maps (or the encoder's single map) -> ``BxKxhxw`` logits at the head's resolution, or ``size``."""
        return resized(self.classifier(self.head(as_maps(maps))), size)

    def decode_aux(self, maps: FeatureMaps, *, size: tuple[int, int] | None = None) -> torch.Tensor:
        """The auxiliary head's ``BxKxhxw`` logits (for its training loss only)."""
        if self.aux_head is None:
            raise ValueError(f"the {self.config.get('arch', '?')} network has no auxiliary head")
        return resized(self.aux_classifier(self.aux_head(maps)), size)

    def decoder_parameters(self) -> Iterator[nn.Parameter]:
        """Everything but the encoder: heads and classifiers (the weak step's 'head' learning-rate group)."""
        return (p for name, p in self.named_parameters() if not name.startswith("encoder."))

    def forward_features(self, x: torch.Tensor, *, head_resolution: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``Bx3xHxW`` -> (logits ``BxKxhxw`` at the features' resolution, or at the head's own with
        ``head_resolution``, localizer features ``BxCfxhxw``)."""
        maps = self.encode(x)
        features = maps[self.feature_key]
        return self.decode(maps, size=None if head_resolution else features.shape[-2:]), features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``Bx3xHxW`` normalised images -> ``BxKxHxW`` logits at input resolution."""
        logits = self.decode(self.encode(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def grow(self, num_new: int, *, mib_init: bool = True) -> None:
        """Append ``num_new`` classes to every classifier (the auxiliary one too); old-class logits unchanged."""
        self.classifier.grow(num_new, mib_init=mib_init)
        if self.aux_classifier is not None:
            self.aux_classifier.grow(num_new, mib_init=mib_init)
        self.config["num_classes"] = self.num_classes


def as_maps(features: FeatureMaps | torch.Tensor) -> FeatureMaps:
    """An encoder's output as named maps: a single tensor is the 'out' map."""
    return features if isinstance(features, dict) else {"out": features}
