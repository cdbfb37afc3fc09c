"""WILSON's localizer g: a small head on the encoder's last feature map that predicts every seen class.

Used only during an update (inference cost is unchanged); its scores z give the CAMs and pseudo-labels.
"""
from __future__ import annotations

from torch import nn


class Localizer(nn.Sequential):
    """``BxCfxhxw`` encoder features -> ``BxKxhxw`` scores z over all seen classes (background included).

    Conv3x3 (no bias) -> BN -> LeakyReLU(0.01), twice, then a 1x1 conv with bias, as in METHOD.md.
    """

    def __init__(self, in_channels: int, num_classes: int, *, hidden: int = 256) -> None:
        super().__init__(
            nn.Conv2d(in_channels, hidden, 3, padding=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.LeakyReLU(0.01, inplace=True),
            nn.Conv2d(hidden, hidden, 3, padding=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.LeakyReLU(0.01, inplace=True),
            nn.Conv2d(hidden, num_classes, 1, bias=True),
        )
        self.num_classes = num_classes
