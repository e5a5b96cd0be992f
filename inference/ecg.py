"""R-wave times of a cine loop from its ECG, as frame indices.

Why: the LV area curve alone times beats badly when the segmentation wobbles (an extra maximum
splits a beat, a flat one merges two), while the R wave is the clinical definition of
end-diastole and scanners record the ECG with the loop. Two sources, in this order:

1. ``ecg_from_waveform``: a Waveform Sequence (5400,0100) with an ECG channel stored in the image.
   Sample j of a multiplex group lies at Multiplex Group Time Offset + j / Sampling Frequency;
   frame k at Frame Delay + k x frame time (or the Frame Time Vector's running sum); both are
   taken as relative to the same instance time reference, as PS3.3 C.10.9 and C.7.6.5 define them.
   The retired Curve Data groups (50xx) are not read: their time axis is vendor-specific, and
   guessing it would be worse than the area curve.
2. ``ecg_from_frames``: the trace burned into the frames outside the fan
   (``inference.ecg_trace``), mapped to frames by its moving cursor, or, with no cursor, by its
   extent only when the header heart rate confirms that mapping.

R peaks are found the same way on both (``detect_r_peaks``): the signal minus its running median
(the baseline), then peaks at least half as tall as the tallest, standing out of the noise,
narrow like a QRS complex and no closer than the fastest plausible heart allows. A waveform lead
may be inverted (its polarity is the one with the clearly larger spikes); a displayed trace is
read upward only, as scanners draw it. Anything unconvincing gives None.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.waveforms.numpy_handler import multiplex_array
from scipy.ndimage import median_filter
from scipy.signal import find_peaks

from inference.ecg_trace import extent_clock, find_burned_in_trace
from inference.types import Cine

SOURCE_WAVEFORM = "waveform"
SOURCE_BURNED_IN = "burned_in"

MAX_HEART_RATE_BPM = 200.0  # closest two R waves may be 60000 / this ms apart
MIN_HEART_RATE_BPM = 25.0
BASELINE_WINDOW_MS = 400.0  # running median that follows baseline wander, not the QRS
MIN_R_FRACTION = 0.5  # an R peak stands at least this share of the tallest one
MAX_QRS_WIDTH_MS = 60.0  # width of an R peak at half its prominence (T and P waves are wider)
MIN_SIGNAL_TO_NOISE = 5.0  # tallest spike over the robust noise level of the signal
POLARITY_RATIO = 1.5  # downward spikes win only when this much larger than upward ones
MIN_R_PEAKS = 2  # one R-R interval at least, or the timing is not trusted
MIN_TRACE_R_HEIGHT_PX = 5.0  # a burned-in R wave rises at least this far above the baseline
EXTENT_MAX_HEART_RATE_DIFFERENCE = 0.15  # extent mapping needs the header rate this close

ECG_WORDS = ("ECG", "EKG", "LEAD")
LEAD_NAMES = {"I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6"}
MDC_ECG_LEAD_PREFIX = "2:"  # ISO/IEEE 11073 MDC partition 2: ECG leads (e.g. "2:2", lead II)


@dataclass(frozen=True)
class EcgTiming:
    """R waves inside the loop (nearest frame, and sub-frame position), and the heart rate from
    the mean R-R interval over every R wave the ECG shows, also those before or after the loop.

    ``source`` is "waveform" or "burned_in"; ``clock`` how times became frames: "waveform_time",
    "cursor" or "extent"."""

    r_wave_frames: tuple[int, ...]
    r_wave_positions: tuple[float, ...]
    heart_rate_bpm: float | None
    source: str
    clock: str


def detect_r_peaks(
    signal: np.ndarray,
    sample_interval_ms: float,
    *,
    either_polarity: bool = False,
    min_height: float = 0.0,
) -> np.ndarray:
    """Sample indices of the R peaks of a uniformly sampled ECG; empty when not convincing.

    ``signal`` is upward positive; with ``either_polarity`` a clearly larger downward QRS (a
    lead recorded inverted) is taken instead. ``min_height`` is the least height above the
    baseline, in the signal's units, an R peak may have."""
    x = np.asarray(signal, np.float64)
    if x.ndim != 1 or x.size < 3 or not np.all(np.isfinite(x)) or sample_interval_ms <= 0:
        return np.zeros(0, np.int64)
    y = _detrended(x, sample_interval_ms)
    if either_polarity and -y.min() > POLARITY_RATIO * max(y.max(), 0.0):
        y = -y
    tallest = float(y.max())
    noise = 1.4826 * float(np.median(np.abs(y - np.median(y))))
    if tallest <= max(min_height, 0.0) or tallest < MIN_SIGNAL_TO_NOISE * noise:
        return np.zeros(0, np.int64)
    distance = max(1, int(60000.0 / MAX_HEART_RATE_BPM / sample_interval_ms))
    peaks, _ = find_peaks(
        y,
        height=max(MIN_R_FRACTION * tallest, min_height),
        prominence=MIN_R_FRACTION * tallest,
        distance=distance,
        width=(None, max(1.0, MAX_QRS_WIDTH_MS / sample_interval_ms)),
        rel_height=0.5,
    )
    return peaks.astype(np.int64)


def _detrended(x: np.ndarray, sample_interval_ms: float) -> np.ndarray:
    window = round(BASELINE_WINDOW_MS / sample_interval_ms) | 1
    if window >= x.size:
        return x - np.median(x)
    return x - median_filter(x, size=window, mode="nearest")


def heart_rate_from_r_times(r_times_ms: np.ndarray) -> float | None:
    """Mean R-R interval as beats/min; None with fewer than two R waves or an implausible rate."""
    t = np.sort(np.asarray(r_times_ms, np.float64))
    if t.size < MIN_R_PEAKS:
        return None
    rate = 60000.0 / float(np.mean(np.diff(t)))
    return rate if MIN_HEART_RATE_BPM <= rate <= MAX_HEART_RATE_BPM else None


def _timing(
    positions: np.ndarray, rate: float | None, n_frames: int, source: str, clock: str
) -> EcgTiming | None:
    if rate is None:
        return None
    inside = np.sort(positions[(positions >= -0.5) & (positions < n_frames - 0.5)])
    frames = np.clip(np.round(inside), 0, n_frames - 1).astype(int)
    return EcgTiming(
        r_wave_frames=tuple(int(f) for f in frames),
        r_wave_positions=tuple(float(p) for p in inside),
        heart_rate_bpm=float(rate),
        source=source,
        clock=clock,
    )


# ---------------------------------------------------------------------------------------------
# DICOM waveform
# ---------------------------------------------------------------------------------------------


def ecg_from_waveform(ds: Dataset, n_frames: int, frame_time_ms: float | None) -> EcgTiming | None:
    """R waves from the first multiplex group of ``ds``'s Waveform Sequence that has an ECG
    channel (lead II preferred); None without one, without frame timing, or without clear R
    peaks. A malformed waveform is treated as absent: it must never stop the image's analysis."""
    if "WaveformSequence" not in ds or not frame_time_ms or frame_time_ms <= 0 or n_frames < 1:
        return None
    frame_times_ms = _frame_times_ms(ds, n_frames, frame_time_ms)
    for index, group in enumerate(ds.WaveformSequence):
        channel = _ecg_channel(group)
        rate_hz = _float(group.get("SamplingFrequency"))
        if channel is None or not rate_hz or rate_hz <= 0:
            continue
        try:
            samples = multiplex_array(ds, index, as_raw=False)[:, channel]
        except (AttributeError, KeyError, ValueError, TypeError, IndexError):
            continue
        interval_ms = 1000.0 / rate_hz
        peaks = detect_r_peaks(samples, interval_ms, either_polarity=True)
        if peaks.size < MIN_R_PEAKS:
            continue
        offset_ms = _float(group.get("MultiplexGroupTimeOffset")) or 0.0
        r_times_ms = offset_ms + peaks * interval_ms
        positions = np.interp(
            r_times_ms,
            frame_times_ms,
            np.arange(n_frames, dtype=np.float64),
            left=np.nan,
            right=np.nan,
        )
        # R waves within half a frame of the loop's ends still belong to its first/last frame
        positions = np.where(
            np.isnan(positions), (r_times_ms - frame_times_ms[0]) / frame_time_ms, positions
        )
        timing = _timing(
            positions,
            heart_rate_from_r_times(r_times_ms),
            n_frames,
            SOURCE_WAVEFORM,
            "waveform_time",
        )
        if timing is not None:
            return timing
    return None


def _frame_times_ms(ds: Dataset, n_frames: int, frame_time_ms: float) -> np.ndarray:
    """Each frame's time after the reference: Frame Delay plus the Frame Time Vector's running
    sum when it has one entry per frame, else Frame Delay + k x frame time."""
    delay = _float(ds.get("FrameDelay")) or 0.0
    vector = ds.get("FrameTimeVector")
    if vector is not None:
        values = [float(v) for v in (vector if isinstance(vector, Sequence) else [vector])]
        if len(values) == n_frames and all(v >= 0 for v in values):
            times = delay + np.cumsum(values)
            if n_frames == 1 or np.all(np.diff(times) > 0):
                return times
    return delay + np.arange(n_frames, dtype=np.float64) * frame_time_ms


def _ecg_channel(group: Dataset) -> int | None:
    """The index of the group's ECG channel (lead II when there are several), or None."""
    group_is_ecg = _mentions_ecg(str(group.get("MultiplexGroupLabel", "")))
    found: list[tuple[int, int]] = []  # (preference, index)
    for index, channel in enumerate(group.get("ChannelDefinitionSequence", [])):
        names = [str(channel.get("ChannelLabel", ""))]
        for source in channel.get("ChannelSourceSequence", []):
            names.append(str(source.get("CodeMeaning", "")))
            code = str(source.get("CodeValue", ""))
            scheme = str(source.get("CodingSchemeDesignator", "")).upper()
            if scheme == "MDC" and code.startswith(MDC_ECG_LEAD_PREFIX):
                names.append("LEAD")
                if code == "2:2":
                    names.append("II")
        words = {w.strip().upper() for n in names for w in n.replace(",", " ").split()}
        if "II" in words:
            found.append((0, index))
        elif group_is_ecg or words & LEAD_NAMES or any(_mentions_ecg(n) for n in names):
            found.append((1, index))
    return min(found)[1] if found else None


def _mentions_ecg(text: str) -> bool:
    upper = text.upper()
    return any(word in upper for word in ECG_WORDS)


def _float(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


# ---------------------------------------------------------------------------------------------
# Burned-in trace
# ---------------------------------------------------------------------------------------------


def ecg_from_frames(
    frames: np.ndarray,
    frame_time_ms: float | None,
    *,
    sector_mask: np.ndarray | None = None,
    header_heart_rate_bpm: float | None = None,
) -> EcgTiming | None:
    """R waves from the ECG trace burned into ``frames`` (n, rows, cols, 3) uint8 RGB.

    ``sector_mask`` (rows, cols) is the fan, when known. A trace without a cursor is mapped by
    its extent only when its heart rate agrees with ``header_heart_rate_bpm``; a cursor that
    does not move along a line, a trace without clear R peaks, or no trace gives None."""
    if not frame_time_ms or frame_time_ms <= 0:
        return None
    found = find_burned_in_trace(frames, sector_mask)
    if found is None:
        return None
    n_frames = int(np.asarray(frames).shape[0])
    clock = found.clock
    if clock is None and found.still:
        clock = extent_clock(found.signal, n_frames)
    if clock is None:
        return None
    ms_per_px = frame_time_ms / abs(clock.px_per_frame)
    signal = found.signal
    peaks = detect_r_peaks(signal.height_up_px, ms_per_px, min_height=MIN_TRACE_R_HEIGHT_PX)
    columns = signal.x0_px + peaks.astype(np.float64)
    rate = heart_rate_from_r_times(columns * ms_per_px)
    if clock.kind == "extent" and not _agrees(rate, header_heart_rate_bpm):
        return None
    return _timing(clock.frame_at(columns), rate, n_frames, SOURCE_BURNED_IN, clock.kind)


def _agrees(rate: float | None, header_bpm: float | None) -> bool:
    if rate is None or not header_bpm or header_bpm <= 0:
        return False
    return abs(rate - header_bpm) / header_bpm <= EXTENT_MAX_HEART_RATE_DIFFERENCE


def with_burned_in_ecg(cine: Cine, sector_mask: np.ndarray | None = None) -> Cine:
    """``cine`` with the R waves of its burned-in trace, unless it already has R waves (from a
    waveform) or no trace is found with confidence."""
    if cine.ecg_r_wave_frames is not None:
        return cine
    timing = ecg_from_frames(
        cine.frames,
        cine.frame_time_ms,
        sector_mask=sector_mask,
        header_heart_rate_bpm=cine.heart_rate_bpm,
    )
    if timing is None:
        return cine
    return dataclasses.replace(
        cine, ecg_r_wave_frames=timing.r_wave_frames, ecg_heart_rate_bpm=timing.heart_rate_bpm
    )
