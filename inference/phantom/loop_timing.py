"""A phantom loop's timing and its true cardiac events, shared by every generator style (the
line-drawing A4C cases, the B-mode hearts, the negatives and the distractor views): the plan
of beats, heart rate and frame rate that fits a frame budget, and ED/ES found beat by beat
from the simulated LV volumes, so every style's truth is defined one way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..disks import ejection_fraction_percent
from .motion import CardiacTiming, end_systole_delay_s

HR_RANGE_BPM = (45, 110)
FPS_RANGE = (30.0, 80.0)


@dataclass(frozen=True)
class LoopPlan:
    timing: CardiacTiming
    n_frames: int
    frame_time_ms: float
    n_beats: int  # complete ED -> ES beats the loop is built to contain

    @property
    def frame_rate_hz(self) -> float:
        return 1000.0 / self.frame_time_ms

    def frame_times_s(self) -> np.ndarray:
        return np.arange(self.n_frames) * self.frame_time_ms / 1000.0


@dataclass(frozen=True)
class Beat:
    ed_frame: int
    es_frame: int
    edv_ml: float
    esv_ml: float

    @property
    def ef_percent(self) -> float:
        return ejection_fraction_percent(self.edv_ml, self.esv_ml)


def plan_loop(
    rng: np.random.Generator,
    max_frames: int,
    min_frames: int = 0,
    integer_fps: bool = False,
    hr_range_bpm: tuple[int, int] = HR_RANGE_BPM,
    fps_range: tuple[float, float] = FPS_RANGE,
) -> LoopPlan:
    """2-3 complete beats starting somewhere in diastole, frame rate chosen so the loop fits
    max_frames (file-size cap) and, if asked, lasts at least min_frames. The frame time is on a
    0.1 ms grid (what DICOM Frame Time carries exactly) unless integer_fps (AVI/EchoNet)."""
    hr = int(rng.integers(hr_range_bpm[0], hr_range_bpm[1] + 1))
    period = 60.0 / hr
    es_s = end_systole_delay_s(hr)
    n_beats = int(rng.integers(2, 4))
    first_r = float(rng.uniform(0.05, 0.45)) * period
    tail = float(rng.uniform(0.15, 0.55)) * period
    fps_lo, fps_hi = fps_range
    for _ in range(8):
        duration = first_r + (n_beats - 1) * period + es_s + tail
        fps_max = min(fps_hi, (max_frames - 1) / duration)
        if fps_max >= fps_lo + 0.1:
            break
        if n_beats > 2:
            n_beats -= 1
        else:
            first_r, tail = 0.05 * period, 0.12 * period
    else:
        raise ValueError(f"cannot fit two beats at {hr} bpm into {max_frames} frames")
    if integer_fps:
        fps = int(rng.integers(int(np.ceil(fps_lo)), int(np.floor(fps_max)) + 1))
        frame_time_ms = 1000.0 / fps
    else:
        # DICOM Frame Time carries 0.1 ms steps exactly; keep the rate inside the range
        ft_lo = np.ceil(10000.0 / fps_max) / 10.0
        ft_hi = np.floor(10000.0 / fps_lo) / 10.0
        ft = np.round(10000.0 / rng.uniform(fps_lo, fps_max)) / 10.0
        frame_time_ms = float(np.clip(ft, ft_lo, ft_hi))
    while min_frames and duration * 1000.0 / frame_time_ms + 1 < min_frames:
        duration += period
        n_beats += 1
    n_frames = int(np.floor(duration * 1000.0 / frame_time_ms + 1e-9)) + 1
    timing = CardiacTiming(heart_rate_bpm=float(hr), first_r_s=first_r)
    return LoopPlan(timing=timing, n_frames=n_frames, frame_time_ms=frame_time_ms, n_beats=n_beats)


def _events(
    volumes: np.ndarray,
    times_s: np.ndarray,
    event_times_s: np.ndarray,
    period_s: float,
    largest: bool,
) -> dict[float, int]:
    """Frame of each event inside the loop: the volume extreme within a quarter period."""
    ft = times_s[1] - times_s[0] if len(times_s) > 1 else 1.0
    out: dict[float, int] = {}
    for te in event_times_s:
        if te < -ft / 2 or te > times_s[-1] + ft / 2:
            continue
        win = np.flatnonzero(np.abs(times_s - te) <= 0.25 * period_s)
        if len(win) == 0:
            continue
        pick = win[np.argmax(volumes[win])] if largest else win[np.argmin(volumes[win])]
        out[float(te)] = int(pick)
    return out


@dataclass(frozen=True)
class LoopEvents:
    """A loop's true cardiac events: every ED and ES frame found, and the complete beats."""

    ed_frames: tuple[int, ...]
    es_frames: tuple[int, ...]
    beats: tuple[Beat, ...]


def loop_events(volumes: np.ndarray, times_s: np.ndarray, timing: CardiacTiming) -> LoopEvents:
    """ED at the largest volume near each R wave, ES at the smallest near each R wave plus the
    end-systole delay; beats only where both fall inside the loop. Shared by every generator
    style, so their truth is defined one way."""
    period = timing.period_s
    r_times = timing.r_wave_times_s(times_s[-1] + period)
    r_times = np.concatenate([[r_times[0] - period], r_times])
    es_delay = end_systole_delay_s(timing.heart_rate_bpm)
    ed = _events(volumes, times_s, r_times, period, largest=True)
    es = _events(volumes, times_s, r_times + es_delay, period, largest=False)
    beats = tuple(
        Beat(ed[tr], es[tr + es_delay], float(volumes[ed[tr]]), float(volumes[es[tr + es_delay]]))
        for tr in r_times
        if float(tr) in ed and float(tr + es_delay) in es
    )
    if not beats:
        raise RuntimeError("loop holds no complete beat")
    return LoopEvents(tuple(sorted(ed.values())), tuple(sorted(es.values())), beats)
