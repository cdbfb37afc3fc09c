"""A small DeepLab-style network that trains in minutes on two CPU cores (the project's default).

Residual encoder at output stride 8 (the last stage dilated instead of strided, as DeepLab does) and a
light ASPP head. About 0.4 M parameters.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn_relu(cin: int, cout: int, *, stride: int = 1, dilation: int = 1, kernel: int = 3) -> nn.Sequential:
    padding = dilation * (kernel // 2)
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, *, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = conv_bn_relu(cin, cout, stride=stride, dilation=dilation)
        self.conv2 = nn.Sequential(
            nn.Conv2d(cout, cout, 3, padding=dilation, dilation=dilation, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class TinyEncoder(nn.Sequential):
    """``Bx3xHxW`` -> ``{'out': Bx(4*width)x(H/8)x(W/8), 'detail': Bx(2*width)x(H/4)x(W/4)}``: the last map and the
    stride-4 map of its second stage (what a localizer may read for sharper maps, as DeepLabV3+'s decoder does)."""

    DETAIL_STAGE = 1   # index of the stage whose output is the 'detail' map

    def __init__(self, width: int = 24) -> None:
        w = width
        super().__init__(
            conv_bn_relu(3, w, stride=2),                    # /2
            BasicBlock(w, w * 2, stride=2),                  # /4
            BasicBlock(w * 2, w * 3, stride=2),              # /8
            BasicBlock(w * 3, w * 4, dilation=2),            # /8, dilated
            BasicBlock(w * 4, w * 4, dilation=4),
        )
        self.out_channels = w * 4
        self.detail_channels = w * 2

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        detail = None
        for index, stage in enumerate(self):
            x = stage(x)
            if index == self.DETAIL_STAGE:
                detail = x
        return {"out": x, "detail": detail}


class TinyASPP(nn.Module):
    """Atrous spatial pyramid pooling, light: 1x1, two dilated 3x3 and an image-pooling branch."""

    def __init__(self, cin: int, cout: int, dilations: tuple[int, int] = (2, 4)) -> None:
        super().__init__()
        self.branches = nn.ModuleList([conv_bn_relu(cin, cout, kernel=1)]
                                      + [conv_bn_relu(cin, cout, dilation=d) for d in dilations])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1, bias=False), nn.ReLU(inplace=True))
        self.project = conv_bn_relu(cout * (len(dilations) + 2), cout, kernel=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(x).expand(-1, -1, *x.shape[-2:])
        return self.project(torch.cat([b(x) for b in self.branches] + [pooled], dim=1))


def tiny_head(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(TinyASPP(cin, cout), conv_bn_relu(cout, cout))
