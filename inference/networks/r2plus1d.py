"""R(2+1)D-18 video network: the EchoNet-Dynamic ejection-fraction regressor.

Names mirror torchvision's ``r2plus1d_18`` (``stem.0``, ``layerN.M.conv1.0.0`` ...) so the
published checkpoints load with ``strict=True``.

Each 3x3x3 conv is factored into a 1x3x3 spatial conv and a 3x1x1 temporal conv with ``mid``
channels in between, where ``mid = (in * out * 27) // (in * 9 + 3 * out)`` keeps the parameter
count of the full 3D conv. Both convs of a block use the ``mid`` computed from the block's
*input* and *output* counts (so a block that widens the channels uses the same ``mid`` twice).
Under a width multiplier the rule is applied to the scaled counts. The stem's 45 mid channels are
hand-picked in torchvision (not from the rule); we keep their ratio to the stem output,
``45 * stem_out / 64`` rounded half up, which gives exactly 45 at width 1.0.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from inference.networks.width import check_width, scale_channels

R2PLUS1D_18_BLOCKS = (2, 2, 2, 2)
R2PLUS1D_BASE_PLANES = (64, 128, 256, 512)
STEM_MID_CHANNELS = 45
STEM_OUT_CHANNELS = 64


def midplanes(in_channels: int, out_channels: int) -> int:
    """Mid channels of a (2+1)D conv that match the parameter count of a 3x3x3 conv."""
    return (in_channels * out_channels * 3 * 3 * 3) // (in_channels * 3 * 3 + 3 * out_channels)


def stem_midplanes(stem_out: int) -> int:
    """The stem's spatial-conv width: torchvision's 45, kept in ratio to the stem output."""
    return max(1, math.floor(STEM_MID_CHANNELS * stem_out / STEM_OUT_CHANNELS + 0.5))


class Conv2Plus1D(nn.Sequential):
    """Spatial 1x3x3 conv, BN, ReLU, temporal 3x1x1 conv; the stride is split the same way."""

    def __init__(self, in_channels: int, out_channels: int, mid: int, stride: int = 1) -> None:
        super().__init__(
            nn.Conv3d(
                in_channels,
                mid,
                kernel_size=(1, 3, 3),
                stride=(1, stride, stride),
                padding=(0, 1, 1),
                bias=False,
            ),
            nn.BatchNorm3d(mid),
            nn.ReLU(inplace=True),
            nn.Conv3d(
                mid,
                out_channels,
                kernel_size=(3, 1, 1),
                stride=(stride, 1, 1),
                padding=(1, 0, 0),
                bias=False,
            ),
        )


class BasicBlock(nn.Module):
    """Two (2+1)D convs with a residual shortcut."""

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        mid = midplanes(in_channels, planes)
        self.conv1 = nn.Sequential(
            Conv2Plus1D(in_channels, planes, mid, stride),
            nn.BatchNorm3d(planes),
            nn.ReLU(inplace=True),
        )
        self.conv2 = nn.Sequential(Conv2Plus1D(planes, planes, mid), nn.BatchNorm3d(planes))
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.conv2(self.conv1(x)) + identity)


class R2Plus1D(nn.Module):
    """Stem, four stages of two BasicBlocks, global average pool, linear head."""

    def __init__(self, width: float = 1.0, num_outputs: int = 1) -> None:
        super().__init__()
        width = check_width(width)
        if num_outputs < 1:
            raise ValueError(f"num_outputs must be >= 1, got {num_outputs}")
        self.width = width
        self.num_outputs = num_outputs
        stem_out = scale_channels(STEM_OUT_CHANNELS, width)
        stem_mid = stem_midplanes(stem_out)
        planes = [scale_channels(p, width) for p in R2PLUS1D_BASE_PLANES]

        self.stem = nn.Sequential(
            nn.Conv3d(
                3, stem_mid, kernel_size=(1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False
            ),
            nn.BatchNorm3d(stem_mid),
            nn.ReLU(inplace=True),
            nn.Conv3d(
                stem_mid, stem_out, kernel_size=(3, 1, 1), stride=1, padding=(1, 0, 0), bias=False
            ),
            nn.BatchNorm3d(stem_out),
            nn.ReLU(inplace=True),
        )
        self._in_channels = stem_out
        self.layer1 = self._make_stage(planes[0], R2PLUS1D_18_BLOCKS[0], stride=1)
        self.layer2 = self._make_stage(planes[1], R2PLUS1D_18_BLOCKS[1], stride=2)
        self.layer3 = self._make_stage(planes[2], R2PLUS1D_18_BLOCKS[2], stride=2)
        self.layer4 = self._make_stage(planes[3], R2PLUS1D_18_BLOCKS[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(self._in_channels, num_outputs)
        _init_weights(self)

    def _make_stage(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self._in_channels != planes:
            downsample = nn.Sequential(
                nn.Conv3d(self._in_channels, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm3d(planes),
            )
        layers = [BasicBlock(self._in_channels, planes, stride, downsample)]
        self._in_channels = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``N x 3 x T x H x W`` clip batch -> ``N x num_outputs``."""
        x = self.stem(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _init_weights(module: nn.Module) -> None:
    """He init for convs, unit/zero BN, small normal fc: the torchvision from-scratch recipe."""
    for m in module.modules():
        if isinstance(m, nn.Conv3d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm3d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


def build_r2plus1d_18(width: float = 1.0, num_outputs: int = 1) -> R2Plus1D:
    """EchoNet-Dynamic's EF model; width 1.0 matches torchvision's state_dict."""
    return R2Plus1D(width=width, num_outputs=num_outputs)
