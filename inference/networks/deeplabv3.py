"""DeepLabV3 with a dilated ResNet-50 backbone: the EchoNet-Dynamic LV segmentation network.

Names mirror torchvision's ``deeplabv3_resnet50`` (``backbone.*``, ``classifier.0.convs.*``,
``classifier.0.project.*``, ``classifier.1..4``) so the published checkpoints load with
``strict=True``. Unlike torchvision, ``forward`` returns the logits tensor rather than
``{"out": logits}``: nothing downstream needs the dict and a tensor keeps tracing/export simple.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F  # noqa: N812 -- conventional alias
from torch import nn

from inference.networks.resnet import ResNet50Backbone
from inference.networks.width import check_width, scale_channels

ASPP_RATES = (12, 24, 36)
ASPP_CHANNELS = 256
OUTPUT_STRIDE_8_DILATION = (False, True, True)


def _conv_bn_relu(in_ch: int, out_ch: int, kernel: int, dilation: int = 1) -> list[nn.Module]:
    padding = 0 if kernel == 1 else dilation
    return [
        nn.Conv2d(in_ch, out_ch, kernel, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    ]


class ASPPPooling(nn.Sequential):
    """Image-level branch: global context, broadcast back to the feature map's size."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(nn.AdaptiveAvgPool2d(1), *_conv_bn_relu(in_channels, out_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        for module in self:
            x = module(x)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, three dilated 3x3, image pooling, then project."""

    def __init__(self, in_channels: int, rates: Sequence[int], out_channels: int) -> None:
        super().__init__()
        branches: list[nn.Module] = [nn.Sequential(*_conv_bn_relu(in_channels, out_channels, 1))]
        branches += [
            nn.Sequential(*_conv_bn_relu(in_channels, out_channels, 3, dilation=rate))
            for rate in rates
        ]
        branches.append(ASPPPooling(in_channels, out_channels))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(
            *_conv_bn_relu(len(branches) * out_channels, out_channels, 1),
            nn.Dropout(0.5),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))


class DeepLabHead(nn.Sequential):
    """ASPP, a 3x3 refinement conv, then the per-class 1x1 logit conv (index 4)."""

    def __init__(self, in_channels: int, num_classes: int, aspp_channels: int) -> None:
        super().__init__(
            ASPP(in_channels, ASPP_RATES, aspp_channels),
            *_conv_bn_relu(aspp_channels, aspp_channels, 3),
            nn.Conv2d(aspp_channels, num_classes, kernel_size=1),
        )


class DeepLabV3(nn.Module):
    """Backbone at output stride 8, DeepLab head, logits upsampled to the input size."""

    def __init__(self, width: float = 1.0, num_classes: int = 1) -> None:
        super().__init__()
        width = check_width(width)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.width = width
        self.num_classes = num_classes
        self.backbone = ResNet50Backbone(width, OUTPUT_STRIDE_8_DILATION)
        self.classifier = DeepLabHead(
            self.backbone.out_channels, num_classes, scale_channels(ASPP_CHANNELS, width)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``N x 3 x H x W`` image batch -> ``N x num_classes x H x W`` logits."""
        size = x.shape[-2:]
        logits = self.classifier(self.backbone(x))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def build_deeplabv3_resnet50(width: float = 1.0, num_classes: int = 1) -> DeepLabV3:
    """EchoNet-Dynamic's segmentation model; width 1.0 matches torchvision's state_dict."""
    return DeepLabV3(width=width, num_classes=num_classes)
