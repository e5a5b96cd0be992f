"""Cardiac cycles from the LV area curve, and the clip index lists the EF network runs on.

End-diastole is where the LV is largest and end-systole where it is smallest, so both are read
off the per-frame LV area: local maxima are ED, local minima ES. The curve is smoothed first
(segmentation jitter must not create extrema) with a Savitzky-Golay filter, a local cubic fit
that, unlike a moving average, leaves the position of a peak where it was. The minimum spacing
of extrema comes from the heart rate in the header (half a cycle) or, without one, from the
fastest plausible heart (200 bpm); a minimum prominence relative to the curve's range rejects
wiggles. Extrema within half a smoothing window of the first or last frame are never taken:
there the true extreme may lie outside the loop, and noise on a slope that runs out of the loop
looks like a peak.

When the loop's ECG gives R waves (``inference.ecg``), ED is taken there instead
(``ecg_cycle_events``): the R wave is the clinical definition of end-diastole and does not depend
on the segmentation; the largest LV area within ``ED_SEARCH_WINDOW_MS`` of it is the ED frame
(the mechanical maximum may lag the R peak by a frame), and ES is the smallest area between two
EDs, so a spurious wiggle of the area curve can neither add nor merge beats.

A *beat* is an ED followed by the smallest ES before the next ED. It is *complete* when the loop
reaches that next ED (ED -> ES -> next ED); the last beat of a loop may end after its ES. Every
beat counts for volumes and EF (the phantom truth counts them the same way); only complete beats
give a cycle length, hence a heart rate.

Clips follow EchoNet-Dynamic: 32 frames taken every 2nd frame, so one clip spans 63 source
frames; "all clips" start at every frame where a whole clip fits (0 .. n - 63). A loop shorter
than 63 frames gets a single clip at 0, padded at the end with zero frames after
normalisation (the data set's mean colour), exactly what EchoNet-Dynamic's loader feeds the
network. The clip of a beat is aligned to its end-systole as EchoNet-Dynamic's beat-by-beat
analysis aligns it: it starts 32 frames before the ES (ES at the clip's 17th sample, its middle),
shifted into the loop when that start would fall outside it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import find_peaks, savgol_filter

CLIP_LENGTH_FRAMES = 32
CLIP_PERIOD_FRAMES = 2  # without frame timing; with it, ``clip_period_for`` picks the period
CLIP_SAMPLE_INTERVAL_MS = 40.0  # EchoNet-Dynamic's 50 /s loops at period 2
SMOOTHING_WINDOW_MS = 90.0
SMOOTHING_POLYORDER = 3
MIN_SMOOTHING_WINDOW = 5
MAX_HEART_RATE_BPM = 200.0  # sets the closest two EDs can be when the header has no rate
MIN_CYCLE_FRACTION = 0.55  # of the header's cycle: the closest two EDs (or ESs) may be
DEFAULT_MIN_DISTANCE_FRAMES = 8  # without any timing at all
PROMINENCE_FRACTION = 0.3  # of the smoothed curve's 5th-95th percentile range
ED_SEARCH_WINDOW_MS = 60.0  # with an ECG: ED is the largest area within this of the R wave


@dataclass(frozen=True)
class CycleEvents:
    """Extrema of the smoothed area curve: frame indices and sub-frame positions."""

    ed_frames: tuple[int, ...]
    es_frames: tuple[int, ...]
    ed_positions: tuple[float, ...]  # parabolic refinement, in frames
    es_positions: tuple[float, ...]
    smoothed: np.ndarray  # the curve the extrema were found on


@dataclass(frozen=True)
class BeatFrames:
    """One ED -> ES (-> next ED) beat, by frame index."""

    ed_frame: int
    es_frame: int
    next_ed_frame: int | None
    ed_position: float
    next_ed_position: float | None

    @property
    def complete(self) -> bool:
        return self.next_ed_frame is not None


def smoothing_window_frames(frame_time_ms: float | None) -> int:
    """An odd window covering about SMOOTHING_WINDOW_MS, at least MIN_SMOOTHING_WINDOW."""
    if not frame_time_ms or frame_time_ms <= 0:
        return MIN_SMOOTHING_WINDOW
    window = round(SMOOTHING_WINDOW_MS / frame_time_ms)
    window = max(MIN_SMOOTHING_WINDOW, window)
    return window if window % 2 == 1 else window + 1


def smooth_curve(values: np.ndarray, window: int) -> np.ndarray:
    """Savitzky-Golay smoothing (cubic); curves shorter than the window come back unchanged."""
    y = np.asarray(values, dtype=np.float64)
    if window < MIN_SMOOTHING_WINDOW or len(y) < window:
        return y.copy()
    return savgol_filter(y, window, SMOOTHING_POLYORDER, mode="interp")


def min_peak_distance_frames(frame_time_ms: float | None, heart_rate_bpm: float | None) -> int:
    """Closest two EDs (or ESs) may be, in frames."""
    if not frame_time_ms or frame_time_ms <= 0:
        return DEFAULT_MIN_DISTANCE_FRAMES
    if heart_rate_bpm and heart_rate_bpm > 0:
        cycle_ms = 60000.0 / heart_rate_bpm * MIN_CYCLE_FRACTION
    else:
        cycle_ms = 60000.0 / MAX_HEART_RATE_BPM
    return max(2, int(np.floor(cycle_ms / frame_time_ms)))


def find_cycle_events(
    area: np.ndarray, frame_time_ms: float | None, heart_rate_bpm: float | None = None
) -> CycleEvents:
    """ED (local maxima) and ES (local minima) of the LV area curve."""
    y = np.asarray(area, dtype=np.float64)
    smoothed = smooth_curve(y, smoothing_window_frames(frame_time_ms))
    if len(y) < 3 or not np.all(np.isfinite(y)):
        return CycleEvents((), (), (), (), smoothed)
    lo, hi = np.percentile(smoothed, [5, 95])
    prominence = PROMINENCE_FRACTION * (hi - lo)
    if prominence <= 0:
        return CycleEvents((), (), (), (), smoothed)
    distance = min_peak_distance_frames(frame_time_ms, heart_rate_bpm)
    guard = smoothing_window_frames(frame_time_ms) // 2
    ed = _interior_peaks(smoothed, distance, prominence, guard)
    es = _interior_peaks(-smoothed, distance, prominence, guard)
    return CycleEvents(
        ed_frames=tuple(int(i) for i in ed),
        es_frames=tuple(int(i) for i in es),
        ed_positions=tuple(_refine(smoothed, int(i)) for i in ed),
        es_positions=tuple(_refine(smoothed, int(i)) for i in es),
        smoothed=smoothed,
    )


def _interior_peaks(y: np.ndarray, distance: int, prominence: float, guard: int) -> np.ndarray:
    """Local maxima standing ``prominence`` above the valleys around them, at least ``guard``
    frames from either end (there the smoothing extrapolates, and a noisy slope running out of
    the loop looks like a peak). The curve is padded with its minimum at both ends so a peak
    near an end is measured against the valley on its other side, not the truncated slope."""
    floor = float(y.min())
    padded = np.concatenate([[floor], y, [floor]])
    peaks, _ = find_peaks(padded, distance=distance, prominence=prominence)
    peaks = peaks - 1
    guard = max(1, guard)
    return peaks[(peaks >= guard) & (peaks <= len(y) - 1 - guard)]


def _refine(y: np.ndarray, i: int) -> float:
    """Sub-frame position of an extremum: the vertex of the parabola through i-1, i, i+1."""
    if i <= 0 or i >= len(y) - 1:
        return float(i)
    denom = y[i - 1] - 2.0 * y[i] + y[i + 1]
    if denom == 0:
        return float(i)
    return float(i + np.clip(0.5 * (y[i - 1] - y[i + 1]) / denom, -0.5, 0.5))


def ecg_cycle_events(
    area: np.ndarray, frame_time_ms: float | None, r_wave_frames: tuple[int, ...] | list[int]
) -> CycleEvents:
    """ED at each R wave (the smoothed area's maximum within ``ED_SEARCH_WINDOW_MS`` of it, at
    least one frame either side) and ES at the smoothed area's minimum between consecutive EDs.
    After the last ED an ES is taken only when the minimum lies more than half a smoothing window
    before the loop's end: one that runs out of the loop is still falling."""
    y = np.asarray(area, dtype=np.float64)
    window = smoothing_window_frames(frame_time_ms)
    smoothed = smooth_curve(y, window)
    n = len(y)
    if n < 3 or not np.all(np.isfinite(y)):
        return CycleEvents((), (), (), (), smoothed)
    half = 1
    if frame_time_ms and frame_time_ms > 0:
        half = max(1, round(ED_SEARCH_WINDOW_MS / frame_time_ms))
    eds: list[int] = []
    for r in sorted({int(f) for f in r_wave_frames if 0 <= int(f) < n}):
        lo, hi = max(0, r - half), min(n, r + half + 1)
        ed = lo + int(np.argmax(smoothed[lo:hi]))
        if not eds or ed > eds[-1]:
            eds.append(ed)
    guard = max(1, window // 2)
    es: list[int] = []
    for k, ed in enumerate(eds):
        last = k + 1 == len(eds)
        end = n if last else eds[k + 1]
        if end - ed < 2:
            continue
        lowest = ed + 1 + int(np.argmin(smoothed[ed + 1 : end]))
        if last and lowest > n - 1 - guard:
            continue
        es.append(lowest)
    return CycleEvents(
        ed_frames=tuple(eds),
        es_frames=tuple(es),
        ed_positions=tuple(_refine(smoothed, i) for i in eds),
        es_positions=tuple(_refine(smoothed, i) for i in es),
        smoothed=smoothed,
    )


def pair_beats(events: CycleEvents) -> tuple[BeatFrames, ...]:
    """Each ED with the smallest ES before the next ED; see the module docstring."""
    smoothed = events.smoothed
    eds = list(zip(events.ed_frames, events.ed_positions, strict=True))
    beats: list[BeatFrames] = []
    for k, (ed, ed_pos) in enumerate(eds):
        nxt = eds[k + 1] if k + 1 < len(eds) else None
        limit = nxt[0] if nxt is not None else len(smoothed)
        between = [s for s in events.es_frames if ed < s < limit]
        if not between:
            continue
        es = min(between, key=lambda s: smoothed[s])
        beats.append(
            BeatFrames(
                ed_frame=ed,
                es_frame=int(es),
                next_ed_frame=None if nxt is None else int(nxt[0]),
                ed_position=float(ed_pos),
                next_ed_position=None if nxt is None else float(nxt[1]),
            )
        )
    return tuple(beats)


def heart_rate_from_beats(
    beats: tuple[BeatFrames, ...], frame_time_ms: float | None
) -> float | None:
    """Mean cycle length (ED to next ED, sub-frame) of the complete beats, as beats/min."""
    if not frame_time_ms or frame_time_ms <= 0:
        return None
    cycles = [
        b.next_ed_position - b.ed_position
        for b in beats
        if b.next_ed_position is not None and b.next_ed_position > b.ed_position
    ]
    if not cycles:
        return None
    return float(60000.0 / (float(np.mean(cycles)) * frame_time_ms))


def clip_period_for(frame_time_ms: float | None) -> int:
    """Frames between clip samples so that one sample lands about every 40 ms.

    EchoNet-Dynamic's loops are all 50 /s, so its period of 2 frames means a 40 ms step and a
    1.24 s clip. Real loops run at 20 to 90 /s: a fixed 2-frame period makes a 20 /s loop's
    clip span 3.1 s (most of it padding past a short loop's end) and a 90 /s loop's clip less
    than one slow beat, and the network then sees heart motion at a speed it was not trained
    on. Rounding to whole frames keeps the samples real frames (no interpolated speckle); at
    50 /s and without timing the period stays 2.
    """
    if not frame_time_ms or frame_time_ms <= 0:
        return CLIP_PERIOD_FRAMES
    return max(1, int(np.floor(CLIP_SAMPLE_INTERVAL_MS / float(frame_time_ms) + 0.5)))


def clip_span_frames(length: int = CLIP_LENGTH_FRAMES, period: int = CLIP_PERIOD_FRAMES) -> int:
    """Source frames one clip covers: (length - 1) * period + 1 (63 for 32 x 2)."""
    _check_clip(length, period)
    return (length - 1) * period + 1


def clip_starts(
    n_frames: int, length: int = CLIP_LENGTH_FRAMES, period: int = CLIP_PERIOD_FRAMES
) -> np.ndarray:
    """Every start where a whole clip fits: 0 .. n - span; just 0 for a short loop (padded)."""
    if n_frames < 1:
        raise ValueError(f"a loop needs at least one frame, got {n_frames}")
    span = clip_span_frames(length, period)
    return np.arange(max(1, n_frames - span + 1), dtype=np.int64)


def beat_clip_start(
    es_frame: int,
    n_frames: int,
    length: int = CLIP_LENGTH_FRAMES,
    period: int = CLIP_PERIOD_FRAMES,
) -> int:
    """The start of the clip aligned to this end-systole (ES at the middle sample), moved into
    the loop when needed. It is always one of ``clip_starts(n_frames)``."""
    last = int(clip_starts(n_frames, length, period)[-1])
    return int(np.clip(es_frame - (length // 2) * period, 0, last))


def clip_frame_indices(
    start: int,
    n_frames: int,
    length: int = CLIP_LENGTH_FRAMES,
    period: int = CLIP_PERIOD_FRAMES,
) -> np.ndarray:
    """Source frame of each clip sample; -1 marks a padding frame past the loop's end."""
    idx = int(start) + period * np.arange(length, dtype=np.int64)
    return np.where(idx < n_frames, idx, -1)


def _check_clip(length: int, period: int) -> None:
    if int(length) != length or length < 1 or int(period) != period or period < 1:
        raise ValueError(f"clip length and period must be positive integers: {length}, {period}")
