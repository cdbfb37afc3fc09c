"""Typed builders: one registry from architecture name to network, all returning a ``Segmenter``.

``build_segmenter(arch=..., num_classes=...)`` is the only entry point the rest of the project uses;
the keyword arguments it takes are what a checkpoint stores to rebuild the network with no flags.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from models.segmenter import GrowableClassifier, Segmenter
from models.tiny import TinyEncoder, tiny_head

DEFAULT_ARCH = "tiny"
ACTIVATIONS = ("sigmoid", "softmax")


class TorchvisionBackbone(nn.Module):
    """Wraps torchvision's ``IntermediateLayerGetter`` (a dict of feature maps) to return the 'out' map."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)["out"]


def _tiny(num_classes: int, *, width: int = 24, head_channels: int = 64, **_: object) -> Segmenter:
    encoder = TinyEncoder(width)
    return Segmenter(encoder, tiny_head(encoder.out_channels, head_channels),
                     GrowableClassifier(head_channels, num_classes), feature_channels=encoder.out_channels,
                     config=dict(arch="tiny", num_classes=num_classes, width=width, head_channels=head_channels))


def _torchvision_deeplabv3(name: str) -> Callable[..., Segmenter]:
    def build(num_classes: int, *, pretrained_backbone: bool = False, **_: object) -> Segmenter:
        from torchvision.models import segmentation

        # Backbone weights download only where the user asks for them (and has internet); never in tests.
        weights_backbone = "DEFAULT" if pretrained_backbone else None
        net = getattr(segmentation, name)(weights=None, weights_backbone=weights_backbone,
                                          num_classes=num_classes, aux_loss=False)
        last = net.classifier[-1]
        classifier = GrowableClassifier(last.in_channels, num_classes)
        classifier.conv = last
        feature_channels = net.classifier[0].convs[0][0].in_channels
        head = nn.Sequential(*list(net.classifier.children())[:-1])
        return Segmenter(TorchvisionBackbone(net.backbone), head, classifier,
                         feature_channels=feature_channels,
                         config=dict(arch=name, num_classes=num_classes, pretrained_backbone=False))

    return build


ARCHITECTURES: dict[str, Callable[..., Segmenter]] = {
    "tiny": _tiny,
    "deeplabv3_resnet50": _torchvision_deeplabv3("deeplabv3_resnet50"),
    "deeplabv3_resnet101": _torchvision_deeplabv3("deeplabv3_resnet101"),
    "deeplabv3_mobilenet_v3_large": _torchvision_deeplabv3("deeplabv3_mobilenet_v3_large"),
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
