"""The EF network's input: clips of a loop's network frames, and the EF per clip start.

EchoNet-Dynamic's R(2+1)D sees 32 frames taken every 2nd frame (``inference.beats``); the EF
stage predicts every clip start the measurements will ask for, in batches, and the measurement
step then reads those estimates back by start. Kept apart from the stage runner so the clip
layout has one home.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from inference.beats import CLIP_LENGTH_FRAMES, CLIP_PERIOD_FRAMES, clip_frame_indices


def build_clips(
    frames: np.ndarray,
    starts: np.ndarray,
    length: int = CLIP_LENGTH_FRAMES,
    period: int = CLIP_PERIOD_FRAMES,
) -> np.ndarray:
    """(frames, 3, S, S) -> (clips, 3, length, S, S); samples past the loop's end are zero,
    i.e. the normalisation mean (see ``inference.beats``)."""
    n, channels, height, width = frames.shape
    out = np.zeros((len(starts), channels, length, height, width), np.float32)
    for k, start in enumerate(starts):
        idx = clip_frame_indices(int(start), n, length, period)
        valid = idx >= 0
        out[k][:, valid] = frames[idx[valid]].transpose(1, 0, 2, 3)
    return out


def clip_predictor(
    frames: np.ndarray,
    predict_ef: Callable[[np.ndarray], np.ndarray],
    clip_batch: int,
    period: int = CLIP_PERIOD_FRAMES,
) -> Callable[[np.ndarray], np.ndarray]:
    """EF per clip start, ``clip_batch`` clips per network call (memory stays bounded);
    ``period`` must be the one the measurements chose the starts with."""

    def predict(starts: np.ndarray) -> np.ndarray:
        values = []
        for i in range(0, len(starts), clip_batch):
            chunk = starts[i : i + clip_batch]
            ef = np.asarray(predict_ef(build_clips(frames, chunk, period=period)), np.float64)
            values.append(ef.reshape(-1))
        return np.concatenate(values) if values else np.zeros(0)

    return predict


def clip_lookup(ef_by_start: Mapping[int, float]) -> Callable[[np.ndarray], np.ndarray]:
    """The EF stage's estimates as the callable ``measure_cine`` asks for clips with."""

    def clip_ef(starts: np.ndarray) -> np.ndarray:
        missing = [int(s) for s in starts if int(s) not in ef_by_start]
        if missing:
            raise ValueError(f"the EF stage estimated no clip at starts {missing}")
        return np.array([ef_by_start[int(s)] for s in starts], np.float64)

    return clip_ef


__all__ = ["build_clips", "clip_lookup", "clip_predictor"]
