"""Typed builders: one registry from architecture name to network, all returning a ``Segmenter``.

``build_segmenter(arch=..., num_classes=...)`` is the only entry point the rest of the project uses;
the keyword arguments it takes are what a checkpoint stores to rebuild the network with no flags.
"""
from __future__ import annotations

from typing import Callable

from models.segmenter import GrowableClassifier, MapHead, Segmenter
from models.tiny import TinyEncoder, tiny_head
from models.torchvision_nets import TORCHVISION_NETS, torchvision_builder

DEFAULT_ARCH = "tiny"
ACTIVATIONS = ("sigmoid", "softmax")


def _tiny(num_classes: int, *, width: int = 24, head_channels: int = 64, **_: object) -> Segmenter:
    encoder = TinyEncoder(width)
    return Segmenter(encoder, MapHead("out", *tiny_head(encoder.out_channels, head_channels)),
                     GrowableClassifier(head_channels, num_classes), feature_channels=encoder.out_channels,
                     config=dict(arch="tiny", num_classes=num_classes, width=width, head_channels=head_channels))


ARCHITECTURES: dict[str, Callable[..., Segmenter]] = {
    "tiny": _tiny,
    **{name: torchvision_builder(name) for name in TORCHVISION_NETS},
}


def build_segmenter(*, arch: str = DEFAULT_ARCH, num_classes: int, activation: str = "sigmoid",
                    **kwargs: object) -> Segmenter:
    """Build a network by name. ``kwargs`` are architecture options (e.g. ``width`` for 'tiny').

    ``activation``: how the logits were trained to be read, 'sigmoid' (BCE, WILSON's convention) or 'softmax'
    (cross-entropy, e.g. torchvision's models). The weak step reads the old model's probabilities through it.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}")
    if num_classes < 2:
        raise ValueError(f"a segmenter needs the background and at least one class, got num_classes={num_classes}")
    model = ARCHITECTURES[arch](num_classes, **kwargs)
    model.config["activation"] = activation
    return model
