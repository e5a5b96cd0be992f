"""The beats of one loop and what is measured per beat: the cycles (area curve or ECG), the
heart rate, the regression EF of each clip used, and the LV volume on a frame.

Why a module of its own: ``inference.measure`` assembles a loop's measurements from these;
each piece here answers one question about the loop and is tested through that assembly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from inference.beats import (
    BeatFrames,
    CycleEvents,
    ecg_cycle_events,
    find_cycle_events,
    heart_rate_from_beats,
    pair_beats,
)
from inference.lv_geometry import (
    GeometryError,
    disks_volume_from_outline,
    find_landmarks,
    lv_outline_px,
)
from inference.measure_flags import FLAG_EF_FROM_ALL_CLIPS, FLAG_HEART_RATE_FROM_HEADER
from inference.types import Beat, Landmarks, QualityFlag

ClipEF = np.ndarray | Sequence[float] | Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class FrameVolumes:
    """The LV on one frame: its disks volume, area and landmarks (None where not found)."""

    volume: float | None  # mL with spacing, cubic pixels without
    area_cm2: float | None
    landmarks: Landmarks | None


def loop_beats(
    area_px: np.ndarray,
    frame_time_ms: float | None,
    header_heart_rate_bpm: float | None,
    r_wave_frames: Sequence[int] | None,
) -> tuple[tuple[BeatFrames, ...], CycleEvents, tuple[BeatFrames, ...]]:
    """(the area curve's beats, the cycle events and beats measured: the ECG's when it has R
    waves, else the area curve's)."""
    events = find_cycle_events(area_px, frame_time_ms, header_heart_rate_bpm)
    area_beats = pair_beats(events)
    if not r_wave_frames:
        return area_beats, events, area_beats
    events = ecg_cycle_events(area_px, frame_time_ms, tuple(r_wave_frames))
    return area_beats, events, pair_beats(events)


def wanted_starts(averaged: np.ndarray, beat_starts: Sequence[int]) -> np.ndarray:
    """The clip starts whose EF is used: the averaged ones and each beat's, sorted, unique."""
    return np.unique(np.concatenate([averaged, np.asarray(beat_starts, np.int64)]))


def clip_predictions(
    clip_ef: ClipEF | None,
    all_starts: np.ndarray,
    averaged: np.ndarray,
    beat_starts: list[int],
) -> dict[int, float]:
    """EF per clip start, for the starts that are used; empty when no predictions."""
    if clip_ef is None:
        return {}
    wanted = wanted_starts(averaged, beat_starts)
    if callable(clip_ef):
        values = np.asarray(clip_ef(wanted), dtype=np.float64).reshape(-1)
        if values.shape != wanted.shape:
            raise ValueError(
                f"the EF callable returned {values.shape[0]} values for {wanted.shape[0]} clips"
            )
        return {int(s): float(v) for s, v in zip(wanted, values, strict=True)}
    values = np.asarray(clip_ef, dtype=np.float64).reshape(-1)
    if values.shape != all_starts.shape:
        raise ValueError(
            f"expected one EF per clip start ({all_starts.shape[0]}), got {values.shape[0]}"
        )
    return {int(s): float(values[int(s)]) for s in wanted}


def heart_rate_of(
    beats: tuple[BeatFrames, ...],
    frame_time_ms: float | None,
    header_bpm: float | None,
    flags: list[QualityFlag],
) -> tuple[float | None, str]:
    """From the loop's cycles when it has a complete beat, else the header's (flagged)."""
    measured = heart_rate_from_beats(beats, frame_time_ms)
    if measured is not None:
        return measured, "beats"
    if header_bpm:
        flags.append(
            QualityFlag(
                FLAG_HEART_RATE_FROM_HEADER,
                "Heart rate is the scanner's header value, not measured from the loop.",
            )
        )
        return float(header_bpm), "header"
    return None, "none"


def rate_from_r_waves(r_wave_frames: Sequence[int], frame_time_ms: float | None) -> float | None:
    """Mean R-R interval of the R-wave frames as beats/min (None with fewer than two)."""
    frames = np.sort(np.asarray(r_wave_frames, np.float64))
    if frames.size < 2 or not frame_time_ms or float(np.mean(np.diff(frames))) <= 0:
        return None
    return float(60000.0 / (float(np.mean(np.diff(frames))) * frame_time_ms))


def regression_ef(
    beats: list[Beat], clips_mean: float | None, flags: list[QualityFlag]
) -> tuple[float | None, float | None, str]:
    """(mean, SD, source): over beats' ES-aligned clips, else over every clip (flagged)."""
    beat_efs = [b.ef_percent for b in beats if b.ef_percent is not None]
    if beat_efs:
        sd = float(np.std(beat_efs, ddof=1)) if len(beat_efs) > 1 else None
        return float(np.mean(beat_efs)), sd, "beats"
    if clips_mean is not None:
        flags.append(
            QualityFlag(
                FLAG_EF_FROM_ALL_CLIPS,
                "No beat to align clips to: EF is the average over every clip of the loop.",
            )
        )
        return clips_mean, None, "all_clips"
    return None, None, "none"


def frame_volumes(
    mask: np.ndarray,
    spacing_cm: tuple[float, float] | None,
    transducer_px: tuple[float, float] | None,
    px_cm2: float | None,
) -> FrameVolumes:
    """The disks volume, area and landmarks of the LV ``mask`` of one frame; the volume is None
    when no outline or landmarks are found."""
    area = None if px_cm2 is None else float(np.count_nonzero(mask)) * px_cm2
    try:
        outline = lv_outline_px(mask)
        landmarks = find_landmarks(outline, transducer_px, spacing_cm)
        volume = disks_volume_from_outline(outline, landmarks, spacing_cm)
    except (GeometryError, ValueError):
        return FrameVolumes(None, area, None)
    return FrameVolumes(volume, area, landmarks)
