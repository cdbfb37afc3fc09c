"""torchvision's segmentation networks (FCN, DeepLabV3, LR-ASPP) as ``Segmenter``s, with or without their
COCO-with-VOC-labels weights.

Every head they have becomes growable: the main classifier, FCN / DeepLabV3's auxiliary classifier, and LR-ASPP's
two classifiers (``low_classifier`` + ``high_classifier``, summed). The localizer reads the backbone's last map
('out', or 'high' for LR-ASPP).
"""
from __future__ import annotations

import os
import torch
import torch.nn.functional as F
from torch import nn

from models.segmenter import FeatureMaps, GrowableClassifier, MapHead, Segmenter, SummedClassifier

TORCHVISION_NETS = ("deeplabv3_resnet50", "deeplabv3_resnet101", "deeplabv3_mobilenet_v3_large",
                    "fcn_resnet50", "fcn_resnet101", "lraspp_mobilenet_v3_large")
PRETRAINED_WEIGHTS = "COCO_WITH_VOC_LABELS_V1"   # 21 classes: background + the 20 PASCAL VOC classes


class TorchvisionBackbone(nn.Module):
    """torchvision's ``IntermediateLayerGetter`` (``Bx3xHxW`` -> dict of named maps), kept under ``body`` so the
    state-dict keys of earlier checkpoints (``encoder.body.*``) still load."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> FeatureMaps:
        return dict(self.body(x))


class LRASPPFeatures(nn.Module):
    """LR-ASPP's head without its classifiers: maps {'low' ``BxClxhxw``, 'high' ``BxChx(h/2)x(w/2)``} ->
    (low, the gated high map upsampled to low's size). 1x1 convolutions commute with the bilinear upsampling, so
    classifying after it (here) equals torchvision's order."""

    def __init__(self, cbr: nn.Module, scale: nn.Module) -> None:
        super().__init__()
        self.cbr = cbr
        self.scale = scale

    def forward(self, maps: FeatureMaps) -> tuple[torch.Tensor, torch.Tensor]:
        low, high = maps["low"], maps["high"]
        gated = self.cbr(high) * self.scale(high)
        return low, F.interpolate(gated, size=low.shape[-2:], mode="bilinear", align_corners=False)


def _growable(conv: nn.Conv2d) -> GrowableClassifier:
    classifier = GrowableClassifier(conv.in_channels, conv.out_channels)
    classifier.conv = conv
    return classifier


def as_segmenter(name: str, net: nn.Module) -> Segmenter:
    """Wrap a torchvision segmentation network ``name`` (with or without weights) into a ``Segmenter``."""
    head = net.classifier
    num_classes = head.low_classifier.out_channels if name.startswith("lraspp") else head[-1].out_channels
    aux = getattr(net, "aux_classifier", None) is not None
    config = dict(arch=name, num_classes=num_classes, aux=aux, pretrained_backbone=False)
    encoder = TorchvisionBackbone(net.backbone)
    if name.startswith("lraspp"):
        return Segmenter(encoder, LRASPPFeatures(head.cbr, head.scale),
                         SummedClassifier(_growable(head.low_classifier), _growable(head.high_classifier)),
                         feature_channels=head.cbr[0].in_channels, feature_key="high", config=config)
    first = head[0].convs[0][0] if name.startswith("deeplabv3") else head[0]   # ASPP's first conv / FCN's conv
    aux_head = aux_classifier = None
    if aux:
        aux_head = MapHead("aux", *list(net.aux_classifier)[:-1])
        aux_classifier = _growable(net.aux_classifier[-1])
    return Segmenter(encoder, MapHead("out", *list(head)[:-1]), _growable(head[-1]),
                     feature_channels=first.in_channels, config=config, aux_head=aux_head,
                     aux_classifier=aux_classifier)


def build_torchvision(name: str, num_classes: int, *, aux: bool = False,
                      pretrained_backbone: bool = False) -> Segmenter:
    """``name`` without segmentation weights: ``num_classes`` outputs, an auxiliary head with ``aux``."""
    from torchvision.models import segmentation

    # Backbone weights download only where the user asks for them (and has internet); never in tests.
    kwargs = dict(weights=None, weights_backbone="DEFAULT" if pretrained_backbone else None, num_classes=num_classes)
    if aux:
        if name.startswith("lraspp"):
            raise ValueError(f"{name} has no auxiliary head")
        kwargs["aux_loss"] = True
    return as_segmenter(name, getattr(segmentation, name)(**kwargs))


def weights_file(name: str) -> str:
    """Where torch keeps ``name``'s pretrained weights once downloaded (``$TORCH_HOME/hub/checkpoints/...``)."""
    from torchvision.models import get_model_weights

    url = get_model_weights(name)[PRETRAINED_WEIGHTS].url
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))


def pretrained_torchvision(name: str) -> tuple[Segmenter, object]:
    """``name`` with its COCO-with-VOC-labels weights, and the torchvision ``Weights`` entry (``.meta['categories']``
    names the 21 classes).

    torchvision downloads the weights once (internet needed) into ``weights_file(name)``, then reads that file.
    The network was trained with softmax cross-entropy: its ``activation`` is 'softmax'.
    """
    from torchvision.models import get_model_weights, segmentation

    weights = get_model_weights(name)[PRETRAINED_WEIGHTS]
    try:
        net = getattr(segmentation, name)(weights=weights)
    except (OSError, RuntimeError) as err:   # no internet (URLError is an OSError), or a damaged cached file
        raise RuntimeError(f"could not load the {name} weights ({type(err).__name__}: {err}). They download once "
                           f"from {weights.url} into {weights_file(name)}; without internet, copy that file "
                           "there") from None
    model = as_segmenter(name, net).eval()
    model.config["activation"] = "softmax"
    return model, weights


def torchvision_builder(name: str):
    """The ``ARCHITECTURES`` entry of ``name``: ``(num_classes, **options) -> Segmenter``."""
    def build(num_classes: int, *, aux: bool = False, pretrained_backbone: bool = False,
              **_: object) -> Segmenter:
        return build_torchvision(name, num_classes, aux=aux, pretrained_backbone=pretrained_backbone)

    build.__doc__ = f"torchvision's {name}, without segmentation weights."
    return build

