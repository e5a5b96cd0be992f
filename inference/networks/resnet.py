"""ResNet-50 backbone with optional dilation, laid out exactly like torchvision's.

Module and attribute names (``conv1``, ``bn1``, ``layer1.0.downsample.0`` ...) are part of the
contract: the published EchoNet-Dynamic checkpoints are addressed by them, so renaming anything
here breaks checkpoint loading. The classification head (``avgpool``/``fc``) is left out because
DeepLabV3 drops it and its weights are absent from the checkpoints.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from inference.networks.width import check_width, scale_channels

BOTTLENECK_EXPANSION = 4
RESNET50_BLOCKS = (3, 4, 6, 3)
RESNET_BASE_PLANES = (64, 128, 256, 512)
RESNET_STEM_CHANNELS = 64


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries stride and dilation), 1x1 expand, plus the shortcut.

    The stride sits on the 3x3 conv (the "ResNet v1.5" placement torchvision uses); putting it on
    the first 1x1 would still load the weights but give different outputs.
    """

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        out_channels = planes * BOTTLENECK_EXPANSION
        self.conv1 = nn.Conv2d(in_channels, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(
            planes,
            planes,
            kernel_size=3,
            stride=stride,
            padding=dilation,
            dilation=dilation,
            bias=False,
        )
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_channels, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet50Backbone(nn.Module):
    """Stem and four bottleneck stages; returns the last stage's feature map.

    ``replace_stride_with_dilation[k]`` turns stage ``k + 2``'s stride-2 into dilation, as
    torchvision does: the first block of a dilated stage keeps the *previous* dilation and only
    the following blocks use the new one. DeepLabV3 uses ``(False, True, True)`` for output
    stride 8.
    """

    def __init__(
        self,
        width: float = 1.0,
        replace_stride_with_dilation: Sequence[bool] = (False, False, False),
    ) -> None:
        super().__init__()
        width = check_width(width)
        if len(replace_stride_with_dilation) != 3:
            raise ValueError("replace_stride_with_dilation needs one flag per stage 2..4")
        stem_channels = scale_channels(RESNET_STEM_CHANNELS, width)
        planes = [scale_channels(p, width) for p in RESNET_BASE_PLANES]

        self.conv1 = nn.Conv2d(3, stem_channels, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_channels)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        self._in_channels = stem_channels
        self._dilation = 1
        dilate_flags = (False, *replace_stride_with_dilation)
        strides = (1, 2, 2, 2)
        self.layer1 = self._make_stage(planes[0], RESNET50_BLOCKS[0], strides[0], dilate_flags[0])
        self.layer2 = self._make_stage(planes[1], RESNET50_BLOCKS[1], strides[1], dilate_flags[1])
        self.layer3 = self._make_stage(planes[2], RESNET50_BLOCKS[2], strides[2], dilate_flags[2])
        self.layer4 = self._make_stage(planes[3], RESNET50_BLOCKS[3], strides[3], dilate_flags[3])
        self.out_channels = self._in_channels
        _init_weights(self)

    def _make_stage(self, planes: int, blocks: int, stride: int, dilate: bool) -> nn.Sequential:
        previous_dilation = self._dilation
        if dilate:
            self._dilation *= stride
            stride = 1
        out_channels = planes * BOTTLENECK_EXPANSION
        downsample = None
        if stride != 1 or self._in_channels != out_channels:
            downsample = nn.Sequential(
                nn.Conv2d(
                    self._in_channels, out_channels, kernel_size=1, stride=stride, bias=False
                ),
                nn.BatchNorm2d(out_channels),
            )
        layers = [Bottleneck(self._in_channels, planes, stride, previous_dilation, downsample)]
        self._in_channels = out_channels
        layers += [
            Bottleneck(out_channels, planes, dilation=self._dilation) for _ in range(1, blocks)
        ]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)


def _init_weights(module: nn.Module) -> None:
    """He init for convs and unit/zero BN, so a freshly built backbone trains from scratch."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def build_resnet50_backbone(
    width: float = 1.0,
    replace_stride_with_dilation: Sequence[bool] = (False, False, False),
) -> ResNet50Backbone:
    """ResNet-50 feature extractor (no pooling/fc head) at the given channel width."""
    return ResNet50Backbone(width, replace_stride_with_dilation)
