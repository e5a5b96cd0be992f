"""Does the LV outline sit on the cavity's border? Evidence for the validity gate.

Blood is hypoechoic: in every B-mode image the LV cavity is darker than the myocardium around
it, so a correct outline has dark pixels just inside it and brighter ones just outside. An
outline drawn too large (the failure of the demo models on an unseen scanner style: the
end-systolic cavity read twice its size, EF 25 points low, with the segmentation sure of itself)
puts myocardium on both sides of the line, and the step across it vanishes. The segmentation's
own probabilities cannot show this; the image can.

The evidence is the intensity step across the outline: the median grey level of a thin band
just outside the LV mask minus that of a band just inside it, in units of the fan's standard
deviation (so gain, grey map and tint cancel), as the median over frames. It is measured on the
network's input grid, where every loop has the same size.
"""

from __future__ import annotations

import cv2
import numpy as np

# Width of each band, in pixels of the network grid (112 px span the fan's bounding box; 2 px
# are about 1.5 % of it, a few millimetres: the myocardium is about 1 cm thick).
EDGE_BAND_PX = 2
# Frames whose LV mask is smaller than this (pixels of the grid) have no outline to measure.
MIN_MASK_PX = 20
# Share of the outlined frames, the smallest, that the systolic step looks at: a beat spends
# about a third of its cycle in systole, so a quarter holds the frames around end-systole.
SYSTOLIC_SHARE = 0.25
_KERNEL = np.ones((3, 3), np.uint8)


def frame_edge_step(grey: np.ndarray, lv: np.ndarray, fan: np.ndarray, fan_sd: float) -> float:
    """Median grey just outside the outline minus just inside, in fan standard deviations;
    NaN when the frame has no outline to measure (too small a mask, or no band in the fan)."""
    mask = lv.astype(np.uint8)
    if int(mask.sum()) < MIN_MASK_PX or fan_sd <= 0:
        return float("nan")
    inner = cv2.erode(mask, _KERNEL, iterations=EDGE_BAND_PX)
    outer = cv2.dilate(mask, _KERNEL, iterations=EDGE_BAND_PX)
    band_in = (mask > 0) & (inner == 0)
    band_out = (outer > 0) & (mask == 0) & fan
    if not band_in.any() or not band_out.any():
        return float("nan")
    return float((np.median(grey[band_out]) - np.median(grey[band_in])) / fan_sd)


def cavity_edge_contrast(
    network_input: np.ndarray, sector_mask: np.ndarray, lv_probability: np.ndarray
) -> float | None:
    """Median over frames of ``frame_edge_step`` (``network_input`` (frames, 3, S, S),
    ``sector_mask`` (S, S) bool, ``lv_probability`` (frames, S, S)); None when no frame has an
    outline to measure (the coverage check speaks for such loops)."""
    return _median_step(network_input, sector_mask, lv_probability, None)


def systolic_edge_contrast(
    network_input: np.ndarray, sector_mask: np.ndarray, lv_probability: np.ndarray
) -> float | None:
    """The same step, median over the systolic frames only: the quarter of the frames (at
    least one) with the smallest LV outline. None when no frame has an outline to measure.

    The ESV and the disks' EF come from the smallest outlines, and that is where the demo
    models fail on an unseen scanner style: near end-systole the small cavity of a hyperdynamic
    heart is read together with the myocardium around it, while the end-diastolic outline, and
    so the median over all frames, stays right. The frames are chosen by the outline's area, not
    by the beats found on it: when the outline stops shrinking the area curve flattens, its
    minimum moves to an earlier frame where the outline still holds, and the true end-systolic
    frames hide on the plateau, all of them among the smallest quarter.
    """
    probability = np.asarray(lv_probability)
    area_px = (probability > 0.5).reshape(len(probability), -1).sum(axis=1)
    outlined = np.flatnonzero(area_px >= MIN_MASK_PX)
    if outlined.size == 0:
        return None
    count = max(1, int(np.ceil(SYSTOLIC_SHARE * outlined.size)))
    smallest = outlined[np.argsort(area_px[outlined], kind="stable")[:count]]
    return _median_step(network_input, sector_mask, probability, sorted(smallest.tolist()))


def _median_step(
    network_input: np.ndarray,
    sector_mask: np.ndarray,
    lv_probability: np.ndarray,
    frames: list[int] | None,
) -> float | None:
    x = np.asarray(network_input, np.float32)
    fan = np.asarray(sector_mask, bool)
    if x.ndim != 4 or x.shape[1] != 3 or x.shape[2:] != fan.shape:
        raise ValueError(f"expected (frames, 3, S, S) matching the fan, got {x.shape}")
    if not fan.any() or x.shape[0] == 0:
        return None
    grey = x.mean(axis=1)
    # the fan's spread over the whole loop, so one frame's contrast reads on the loop's scale
    fan_sd = float(grey[:, fan].std())
    chosen = range(len(grey)) if frames is None else frames
    steps = [frame_edge_step(grey[t], lv_probability[t] > 0.5, fan, fan_sd) for t in chosen]
    measured = [s for s in steps if np.isfinite(s)]
    return float(np.median(measured)) if measured else None


__all__ = [
    "EDGE_BAND_PX",
    "SYSTOLIC_SHARE",
    "cavity_edge_contrast",
    "frame_edge_step",
    "systolic_edge_contrast",
]
