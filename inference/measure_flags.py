"""The quality flags of the measurement step, and the checks that raise them from the masks,
the beats found and the heart rates.

Why a module of its own: the flag codes are a stable interface (the validity gate, the report
and software downstream match on them) and their thresholds are tuned apart from the
measurements themselves.
"""

from __future__ import annotations

import cv2
import numpy as np

from inference.beats import BeatFrames, smooth_curve, smoothing_window_frames
from inference.lv_geometry import is_fragmented
from inference.types import QualityFlag

EF_DISAGREEMENT_POINTS = 10.0
EDGE_BAND_PX = 3  # LV pixels this close to the fan's edge (or outside it) "touch" it
EDGE_FRAME_FRACTION = 0.1  # touching on this share of frames (or any measured frame) flags
AREA_RESIDUAL_FRACTION = 0.15  # |area - smoothed| over the median area: a jump
UNSTABLE_FRAME_FRACTION = 0.05  # jumps / fragmented / empty frames on this share of frames
HEART_RATE_DISAGREEMENT_FRACTION = 0.15  # |area-curve rate - header or ECG rate| / that rate
MIN_UNSTABLE_FRAMES = 1

# Stable identifiers of the quality flags (software matches on these; the text is for people).
FLAG_LESS_THAN_ONE_BEAT = "less_than_one_beat"
FLAG_EF_METHODS_DISAGREE = "ef_methods_disagree"
FLAG_LV_TOUCHES_SECTOR_EDGE = "lv_touches_sector_edge"
FLAG_UNSTABLE_LV_AREA = "unstable_lv_area"
FLAG_LV_MISSING = "lv_missing_on_frames"
FLAG_NO_SPACING = "no_spacing"
FLAG_NO_FRAME_TIME = "no_frame_time"
FLAG_HEART_RATE_FROM_HEADER = "heart_rate_from_header"
FLAG_LOOP_SHORTER_THAN_CLIP = "loop_shorter_than_clip"
FLAG_EF_FROM_ALL_CLIPS = "ef_from_all_clips"
FLAG_LV_OUTLINE_FAILED = "lv_outline_failed"
FLAG_HEART_RATE_DISAGREES = "heart_rate_disagrees"


def heart_rate_agreement(
    area_bpm: float | None, header_bpm: float | None, ecg_bpm: float | None
) -> list[QualityFlag]:
    """One flag naming each rate that differs from the area curve's cycles by more than
    HEART_RATE_DISAGREEMENT_FRACTION of it (header, ECG), and the ECG from the header."""
    pairs = [
        ("the LV area curve's cycles", area_bpm, "the header", header_bpm),
        ("the LV area curve's cycles", area_bpm, "the ECG", ecg_bpm),
        ("the ECG", ecg_bpm, "the header", header_bpm),
    ]
    limit = HEART_RATE_DISAGREEMENT_FRACTION
    parts = [
        f"{name} ({rate:.0f} /min) and {ref_name} ({ref:.0f} /min)"
        for name, rate, ref_name, ref in pairs
        if rate and ref and ref > 0 and abs(rate - ref) / ref > limit
    ]
    if not parts:
        return []
    timing = (
        "Beats were timed from the ECG."
        if ecg_bpm
        else "The beats found on the LV area curve may be wrong."
    )
    text = f"Heart rates differ by more than {limit:.0%}: {'; '.join(parts)}. {timing}"
    return [QualityFlag(FLAG_HEART_RATE_DISAGREES, text)]


def beat_flags(beats: tuple[BeatFrames, ...]) -> list[QualityFlag]:
    """The "less than one beat" flag when no beat is complete (none when one is)."""
    if any(b.complete for b in beats):
        return []
    if beats:
        text = (
            "Fewer than one full cardiac cycle (ED -> ES -> next ED) in the loop: only "
            f"{len(beats)} partial beat(s); heart rate is not measured from the loop."
        )
    else:
        text = (
            "No end-diastole followed by end-systole was found on the LV area curve: volumes and "
            "beat-aligned EF are not reported."
        )
    return [QualityFlag(FLAG_LESS_THAN_ONE_BEAT, text)]


def mask_flags(
    masks: np.ndarray,
    area_px: np.ndarray,
    frame_time_ms: float | None,
    sector_mask: np.ndarray | None,
    measured_frames: list[int],
) -> list[QualityFlag]:
    """Edge contact, missing LV, fragmented masks and jumps in the area curve."""
    n, rows, cols = masks.shape
    flags: list[QualityFlag] = []
    empty = np.flatnonzero(area_px == 0)
    if len(empty):
        flags.append(QualityFlag(FLAG_LV_MISSING, f"No LV found on {len(empty)} of {n} frames."))
    union = masks.any(axis=0)
    if not union.any():
        return flags

    # edge: LV pixels outside the fan shrunk by EDGE_BAND_PX
    inside = (
        np.asarray(sector_mask, dtype=bool)
        if sector_mask is not None
        else np.ones((rows, cols), bool)
    )
    if inside.shape != (rows, cols):
        raise ValueError(f"sector_mask shape {inside.shape} differs from the masks' {(rows, cols)}")
    core = np.zeros((rows + 2, cols + 2), np.uint8)
    core[1:-1, 1:-1] = inside  # the image border counts as an edge too
    k = 2 * EDGE_BAND_PX + 1
    core = cv2.erode(core, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))[1:-1, 1:-1]
    ys, xs = np.nonzero(union)
    box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    outside = ~core[box].astype(bool)
    touching = np.flatnonzero((masks[:, box[0], box[1]] & outside).any(axis=(1, 2)))
    if len(touching) and (
        len(touching) >= EDGE_FRAME_FRACTION * n or set(touching) & set(measured_frames)
    ):
        flags.append(
            QualityFlag(
                FLAG_LV_TOUCHES_SECTOR_EDGE,
                f"The LV reaches the edge of the scanned sector on {len(touching)} of {n} "
                "frames: it may be cut off, and volumes underestimated.",
            )
        )

    # stability: fragmented masks and frame-to-frame jumps of the area
    fragmented = sum(is_fragmented(masks[i, box[0], box[1]]) for i in range(n) if area_px[i])
    smoothed = smooth_curve(area_px, smoothing_window_frames(frame_time_ms))
    median = float(np.median(area_px[area_px > 0])) if np.any(area_px > 0) else 0.0
    jumps = int(np.count_nonzero(np.abs(area_px - smoothed) > AREA_RESIDUAL_FRACTION * median))
    limit = max(MIN_UNSTABLE_FRAMES, UNSTABLE_FRAME_FRACTION * n)
    if fragmented >= limit or jumps >= limit or len(empty) >= limit:
        flags.append(
            QualityFlag(
                FLAG_UNSTABLE_LV_AREA,
                f"The LV mask is unstable: {jumps} frame(s) with area jumps, {fragmented} "
                f"fragmented, {len(empty)} empty, of {n}.",
            )
        )
    return flags
