"""The EchoNet-Dynamic networks, defined here because torchvision is unavailable.

At ``width=1.0`` both state_dicts are exactly torchvision's, so the published checkpoints load
with ``strict=True``; smaller widths build the same architecture with fewer channels (see
``width.py`` for the rounding rule) for the demo models trained on phantoms.
"""

from inference.networks.deeplabv3 import DeepLabV3, build_deeplabv3_resnet50
from inference.networks.r2plus1d import R2Plus1D, build_r2plus1d_18
from inference.networks.resnet import ResNet50Backbone, build_resnet50_backbone
from inference.networks.width import scale_channels

__all__ = [
    "DeepLabV3",
    "R2Plus1D",
    "ResNet50Backbone",
    "build_deeplabv3_resnet50",
    "build_r2plus1d_18",
    "build_resnet50_backbone",
    "scale_channels",
]
