"""Per-channel mean and SD of the pixels a network is fed, in 0..255 units.

EchoNet-Dynamic normalises with statistics of its own training videos (``get_mean_and_std``)
and its checkpoint files do not carry them, so every weight file written here stores the values
it was trained with, and a lab calibrating published weights computes them from its own loops.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

Triple = tuple[float, float, float]


def channel_mean_std(videos: Iterable[np.ndarray]) -> tuple[Triple, Triple]:
    """Mean and SD over every pixel of every frame; videos are (frames, H, W, C), C = 1 or 3
    (one channel is a grey video and counts for all three)."""
    total = np.zeros(3, np.float64)
    total_sq = np.zeros(3, np.float64)
    count = 0
    for video in videos:
        v = np.asarray(video)
        if v.ndim != 4 or v.shape[-1] not in (1, 3):
            raise ValueError(f"expected (frames, H, W, 1|3) video, got shape {v.shape}")
        flat = v.reshape(-1, v.shape[-1]).astype(np.float64)
        total += flat.sum(axis=0)
        total_sq += (flat**2).sum(axis=0)
        count += flat.shape[0]
    if count == 0:
        raise ValueError("no pixels to compute the normalisation from")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    if np.any(std <= 0):
        raise ValueError("the videos are blank (zero variance): no usable normalisation")
    return _triple(mean), _triple(std)


def _triple(values: np.ndarray) -> Triple:
    return (float(values[0]), float(values[1]), float(values[2]))
