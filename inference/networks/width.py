"""Channel scaling shared by both networks.

Rule: a torchvision channel count ``c`` becomes ``max(8, round_half_up(c * width / 8) * 8)``.
Multiples of 8 keep the tensors friendly to vectorised kernels, the floor of 8 keeps a tiny
model from collapsing to a handful of channels, and every base count the two networks use
(64, 128, 256, 512, 2048) is already a multiple of 8, so width 1.0 reproduces torchvision
exactly. The one base count that is not a multiple of 8 (the 45-channel R(2+1)D stem) is
derived from the scaled counts instead; see ``r2plus1d.py``.
"""

from __future__ import annotations

import math

CHANNEL_DIVISOR = 8


def check_width(width: float) -> float:
    """Reject widths that would silently build a meaningless network."""
    if not isinstance(width, int | float) or not math.isfinite(width) or width <= 0:
        raise ValueError(f"width must be a positive finite number, got {width!r}")
    return float(width)


def scale_channels(channels: int, width: float) -> int:
    """Scale a torchvision channel count by ``width`` (round half up to a multiple of 8)."""
    scaled = math.floor(channels * check_width(width) / CHANNEL_DIVISOR + 0.5) * CHANNEL_DIVISOR
    return max(CHANNEL_DIVISOR, scaled)
