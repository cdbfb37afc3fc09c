"""WILSON's localizer g: a small head on the encoder's last feature map that predicts every seen class.

Used only during an update (inference cost is unchanged); its scores z give the CAMs and pseudo-labels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DETAIL_REDUCED = 48   # channels the detail map is reduced to before fusion (DeepLabV3+'s low-level projection)


class Localizer(nn.Module):
    """``BxCfxhxw`` encoder features -> ``BxKxhxw`` scores z over all seen classes (background included).

    Conv3x3 (no bias) -> BN -> LeakyReLU(0.01), twice, then a 1x1 conv with bias, as in docs/method.md.
    ``detail_channels`` > 0 (beyond the paper): the localizer also reads a higher-resolution encoder map
    ``BxCdxHdxWd``, reduced by a 1x1 conv to 48 channels and concatenated with the features upsampled to its size,
    as DeepLabV3+'s decoder does; z then has the detail map's resolution (sharper CAMs for small objects).
    """

    def __init__(self, in_channels: int, num_classes: int, *, hidden: int = 256, detail_channels: int = 0) -> None:
        super().__init__()
        self.detail = None
        if detail_channels:
            self.detail = nn.Sequential(nn.Conv2d(detail_channels, DETAIL_REDUCED, 1, bias=False),
                                        nn.BatchNorm2d(DETAIL_REDUCED), nn.LeakyReLU(0.01, inplace=True))
            in_channels += DETAIL_REDUCED
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, padding=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.LeakyReLU(0.01, inplace=True),
            nn.Conv2d(hidden, hidden, 3, padding=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.LeakyReLU(0.01, inplace=True),
            nn.Conv2d(hidden, num_classes, 1, bias=True),
        )
        self.num_classes = num_classes

    def forward(self, features: torch.Tensor, detail: torch.Tensor | None = None) -> torch.Tensor:
        if (self.detail is None) != (detail is None):
            raise ValueError("this localizer reads a detail map" if detail is None
                             else "this localizer was built without a detail map")
        if self.detail is not None:
            features = torch.cat([F.interpolate(features, size=detail.shape[-2:], mode="bilinear",
                                                align_corners=False), self.detail(detail)], dim=1)
        return self.body(features)
