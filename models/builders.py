"""Typed builders: one registry from architecture name to network, all returning a ``Segmenter``.

``build_segmenter(arch=..., num_classes=...)`` is the only entry point the rest of the project uses;
the keyword arguments it takes are what a checkpoint stores to rebuild the network with no flags.
"""
from __future__ import annotations

from typing import Callable

import torch

from models.segmenter import GrowableClassifier, MapHead, Segmenter
from models.imagenet import BUILDERS as IMAGENET_BUILDERS
from models.tiny import TinyEncoder, tiny_head
from models.torchvision_nets import TORCHVISION_NETS, TorchvisionBackbone, torchvision_builder

DEFAULT_ARCH = "tiny"
ACTIVATIONS = ("sigmoid", "softmax")


def _tiny(num_classes: int, *, width: int = 24, head_channels: int = 64, **_: object) -> Segmenter:
    encoder = TinyEncoder(width)
    return Segmenter(encoder, MapHead("out", *tiny_head(encoder.out_channels, head_channels)),
                     GrowableClassifier(head_channels, num_classes), feature_channels=encoder.out_channels,
                     detail_key="detail", detail_channels=encoder.detail_channels,
                     config=dict(arch="tiny", num_classes=num_classes, width=width, head_channels=head_channels))


ARCHITECTURES: dict[str, Callable[..., Segmenter]] = {
    "tiny": _tiny,
    **IMAGENET_BUILDERS,
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


def load_backbone_weights(model: Segmenter, path: str) -> int:
    """Load an ImageNet classification state dict (torchvision's file for the same backbone, e.g.
    ``resnet101-63fe2227.pth``) into the encoder of a DeepLabV3 segmenter, offline. The classifier keys ('fc.',
    'classifier.') are dropped; every encoder weight must be found. Returns the number of tensors loaded.
    Raises ValueError for a file that does not match."""
    if not isinstance(model.encoder, TorchvisionBackbone):
        raise ValueError(f"architecture {model.config.get('arch')!r} has no ImageNet backbone to load")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # not a torch file, pickled code, a missing file
        raise ValueError(f"could not read backbone weights {path}: {type(err).__name__}: {err}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict", state.get("model")), dict):
        state = state.get("state_dict", state.get("model"))  # a training checkpoint wrapping the weights
    body = model.encoder.body
    # MobileNetV3's backbone is the ``features`` sequence: its keys lose that prefix inside the segmenter.
    renamed = {k.removeprefix("module.").removeprefix("features."): v for k, v in dict(state).items()}
    wanted = body.state_dict()
    kept = {k: v for k, v in renamed.items() if k in wanted}
    missing = [k for k in wanted if k not in kept and not k.endswith("num_batches_tracked")]
    if missing:
        raise ValueError(f"{path} is not an ImageNet state dict of this backbone ({model.config.get('arch')}): "
                         f"{len(missing)} encoder weights missing, e.g. {missing[:3]}")
    wrong = [k for k, v in kept.items() if tuple(v.shape) != tuple(wanted[k].shape)]
    if wrong:
        raise ValueError(f"{path}: weights of another shape than this backbone's, e.g. {wrong[:3]}")
    body.load_state_dict(kept, strict=False)
    return len(kept)
