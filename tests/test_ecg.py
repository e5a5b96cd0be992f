"""Beat timing from the ECG (issue #14): R waves from a DICOM waveform and from the trace burned
into the frames, beats timed by them, and the heart-rate cross-check."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from pydicom import examples
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from support import phantom_truth

from inference.beats import ecg_cycle_events, find_cycle_events, pair_beats
from inference.decode import cine_from_header, read_cine
from inference.ecg import (
    SOURCE_BURNED_IN,
    SOURCE_WAVEFORM,
    detect_r_peaks,
    ecg_from_frames,
    ecg_from_waveform,
    with_burned_in_ecg,
)
from inference.measure import FLAG_HEART_RATE_DISAGREES, measure_loop
from inference.phantom.geometry import Sector
from inference.phantom.motion import CardiacTiming, contraction, ecg_mv, end_systole_delay_s
from inference.phantom.overlay import build_overlay, compose

# ---------------------------------------------------------------------------------------------
# helpers: a small annotated loop drawn by the phantom's own overlay code, and a waveform
# ---------------------------------------------------------------------------------------------

SECTOR = Sector(
    rows=300,
    cols=400,
    depth_cm=12.0,
    half_angle_rad=0.6,
    apex_row=10.0,
    apex_col=200.0,
    spacing_cm=12.0 / 220.0,
)


def annotated_loop(
    timing: CardiacTiming,
    n_frames: int,
    frame_time_ms: float,
    *,
    cursor: bool = True,
    ecg: np.ndarray | None = None,
    seed: int = 0,
) -> np.ndarray:
    """RGB frames: fresh speckle in the fan every frame, the phantom's ECG strip under it."""
    rng = np.random.default_rng(seed)
    t_end = (n_frames - 1) * frame_time_ms / 1000.0
    trace = ecg_mv(np.linspace(0.0, t_end, 4 * n_frames), timing) if ecg is None else ecg
    overlay = build_overlay(SECTOR, ["ECHO LAB"], ["HR"], trace, n_frames)
    fan = SECTOR.mask()
    frames = []
    for i in range(n_frames):
        grey = np.where(fan, rng.integers(20, 200, fan.shape), 0).astype(np.uint8)
        if cursor:
            frames.append(compose(grey, overlay, i))
        else:
            frames.append(cv2.max(overlay.image, cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB)))
    return np.stack(frames)


def true_r_frames(timing: CardiacTiming, n_frames: int, frame_time_ms: float) -> list[int]:
    t_end_s = (n_frames - 1) * frame_time_ms / 1000.0
    times = timing.r_wave_times_s(t_end_s)
    return [round(t * 1000.0 / frame_time_ms) for t in times if t >= 0]


def waveform_dataset(
    timing: CardiacTiming,
    *,
    offset_ms: float,
    duration_s: float,
    rate_hz: float = 500.0,
    inverted: bool = False,
    label: str = "Lead II",
) -> Dataset:
    """A dataset with one multiplex group of one ECG channel, 16-bit signed, in microvolts."""
    t_s = offset_ms / 1000.0 + np.arange(int(duration_s * rate_hz)) / rate_hz
    mv = ecg_mv(t_s, timing) * (-1.0 if inverted else 1.0)
    mv += 0.05 * np.sin(2 * np.pi * 0.3 * t_s)  # baseline wander
    samples = np.round(mv * 1000.0 / 2.5).astype("<i2")  # 2.5 uV per unit
    source = Dataset()
    source.CodeValue = "2:2" if label == "Lead II" else "RESP"
    source.CodingSchemeDesignator = "MDC" if label == "Lead II" else "99LOCAL"
    source.CodeMeaning = label
    channel = Dataset()
    channel.ChannelSourceSequence = DicomSequence([source])
    channel.ChannelSensitivity = "2.5"
    channel.ChannelBaseline = "0"
    channel.WaveformBitsStored = 16
    group = Dataset()
    group.MultiplexGroupTimeOffset = f"{offset_ms:.1f}"
    group.WaveformOriginality = "ORIGINAL"
    group.NumberOfWaveformChannels = 1
    group.NumberOfWaveformSamples = len(samples)
    group.SamplingFrequency = f"{rate_hz:.1f}"
    group.ChannelDefinitionSequence = DicomSequence([channel])
    group.WaveformBitsAllocated = 16
    group.WaveformSampleInterpretation = "SS"
    group.WaveformData = samples.tobytes()
    ds = Dataset()
    ds.WaveformSequence = DicomSequence([group])
    return ds


# ---------------------------------------------------------------------------------------------
# burned-in trace
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def a4c_loops(phantom_studies):
    """(truth, decoded cine, true masks) of every phantom A4C loop."""
    out = []
    for path in phantom_studies:
        truth = phantom_truth(path)
        if truth["view"] == "A4C":
            masks = np.load(path.parent / truth["masks_file"])["masks"]
            out.append((truth, read_cine(path), masks))
    return out


def test_burned_in_r_waves_of_the_phantom_loops_are_the_true_eds(a4c_loops) -> None:
    photometrics = set()
    for truth, cine, _masks in a4c_loops:
        ecg = ecg_from_frames(cine.frames, cine.frame_time_ms)
        assert ecg is not None, truth["sop_instance_uid"]
        assert ecg.source == SOURCE_BURNED_IN and ecg.clock == "cursor"
        assert len(ecg.r_wave_frames) == len(truth["ed_frames"]), (ecg, truth["ed_frames"])
        for found, true in zip(ecg.r_wave_frames, truth["ed_frames"], strict=True):
            assert abs(found - true) <= 1, (ecg.r_wave_frames, truth["ed_frames"])
        assert ecg.heart_rate_bpm == pytest.approx(truth["heart_rate_bpm"], rel=0.05)
        photometrics.add(truth["photometric_interpretation"])
    # colour (RGB, YBR JPEG) and greyscale exports were all read
    assert {"RGB", "MONOCHROME2"} <= photometrics


def test_with_the_ecg_the_beats_and_rate_come_from_it(a4c_loops) -> None:
    for truth, cine, masks in a4c_loops:
        timed = with_burned_in_ecg(cine)
        assert timed.ecg_r_wave_frames is not None and timed.ecg_heart_rate_bpm is not None
        m = measure_loop(
            masks,
            frame_time_ms=truth["frame_time_ms"],
            spacing_cm=tuple(truth["spacing_cm"]),
            header_heart_rate_bpm=truth["heart_rate_bpm"],
            r_wave_frames=timed.ecg_r_wave_frames,
            ecg_heart_rate_bpm=timed.ecg_heart_rate_bpm,
        )
        assert m.heart_rate_source == "ecg"
        assert m.heart_rate_bpm == pytest.approx(truth["heart_rate_bpm"], rel=0.05)
        assert len(m.beats) == len(truth["beats"])
        for found, true in zip(m.beats, truth["beats"], strict=True):
            assert abs(found.ed_frame - true["ed_frame"]) <= 1
            assert abs(found.es_frame - true["es_frame"]) <= 2
        assert m.flags == (), m.flags


def test_a_known_fan_is_kept_out_of_the_search() -> None:
    timing = CardiacTiming(heart_rate_bpm=72.0, first_r_s=0.21)
    frames = annotated_loop(timing, 60, 25.0)
    ecg = ecg_from_frames(frames, 25.0, sector_mask=SECTOR.mask())
    assert ecg is not None
    assert list(ecg.r_wave_frames) == true_r_frames(timing, 60, 25.0)
    assert ecg.heart_rate_bpm == pytest.approx(72.0, rel=0.03)
    with pytest.raises(ValueError, match="sector_mask"):
        ecg_from_frames(frames, 25.0, sector_mask=np.ones((10, 10), bool))


def test_a_static_trace_without_cursor_needs_the_header_rate() -> None:
    timing = CardiacTiming(heart_rate_bpm=64.0, first_r_s=0.35)
    frames = annotated_loop(timing, 90, 30.0, cursor=False)
    # mapped by its extent only when the header confirms it
    ecg = ecg_from_frames(frames, 30.0, header_heart_rate_bpm=64.0)
    assert ecg is not None and ecg.clock == "extent"
    assert all(
        abs(a - b) <= 1
        for a, b in zip(ecg.r_wave_frames, true_r_frames(timing, 90, 30.0), strict=True)
    )
    assert ecg_from_frames(frames, 30.0) is None
    assert ecg_from_frames(frames, 30.0, header_heart_rate_bpm=90.0) is None
    assert ecg_from_frames(frames, None, header_heart_rate_bpm=64.0) is None
    # a cursor that jumps about instead of sweeping: neither a clock nor a still trace
    jumping = annotated_loop(timing, 90, 30.0)[np.random.default_rng(5).permutation(90)]
    assert ecg_from_frames(jumping, 30.0, header_heart_rate_bpm=64.0) is None


def test_no_trace_or_a_flat_trace_gives_none(a4c_loops) -> None:
    timing = CardiacTiming(heart_rate_bpm=70.0, first_r_s=0.1)
    # a flat line where the ECG would be, with the cursor still sweeping along it
    flat = annotated_loop(timing, 50, 30.0, ecg=np.zeros(200))
    assert ecg_from_frames(flat, 30.0, header_heart_rate_bpm=70.0) is None
    # the fan alone, no annotation at all
    truth, cine, _ = a4c_loops[0]
    fan_only = cine.frames.copy()
    fan_only[:, truth["sector"]["bbox_px"][3] + 2 :] = 0
    assert ecg_from_frames(fan_only, cine.frame_time_ms, header_heart_rate_bpm=70.0) is None
    # too few frames for a median
    assert ecg_from_frames(cine.frames[:3], cine.frame_time_ms) is None


def test_the_sonosite_loop_from_pydicom_does_not_crash_or_invent_peaks() -> None:
    ds = examples.ybr_color
    cine = read_cine(ds)
    # the loop shows no ECG: the bottom button bar is a straight-edged box, no R waves
    assert ecg_from_waveform(ds, cine.n_frames, cine.frame_time_ms) is None
    assert ecg_from_frames(cine.frames, cine.frame_time_ms) is None
    assert ecg_from_frames(cine.frames, cine.frame_time_ms, header_heart_rate_bpm=61.0) is None
    assert cine.ecg_r_wave_frames is None


# ---------------------------------------------------------------------------------------------
# DICOM waveform
# ---------------------------------------------------------------------------------------------


def test_a_waveform_ecg_gives_the_r_frames() -> None:
    timing = CardiacTiming(heart_rate_bpm=61.0, first_r_s=0.362)
    frame_time_ms, n_frames = 20.0, 150
    # the recording starts 0.8 s before the first frame and ends after the last
    ds = waveform_dataset(timing, offset_ms=-800.0, duration_s=5.0)
    ecg = ecg_from_waveform(ds, n_frames, frame_time_ms)
    assert ecg is not None and ecg.source == SOURCE_WAVEFORM
    assert list(ecg.r_wave_frames) == true_r_frames(timing, n_frames, frame_time_ms)
    assert ecg.heart_rate_bpm == pytest.approx(61.0, rel=0.01)
    # an inverted lead gives the same R waves
    flipped = ecg_from_waveform(
        waveform_dataset(timing, offset_ms=-800.0, duration_s=5.0, inverted=True),
        n_frames,
        frame_time_ms,
    )
    assert flipped is not None and flipped.r_wave_frames == ecg.r_wave_frames
    # a Frame Delay shifts the frames against the recording
    ds.FrameDelay = "100"
    shifted = ecg_from_waveform(ds, n_frames, frame_time_ms)
    assert shifted is not None
    assert np.allclose(np.add(shifted.r_wave_positions, 5.0), ecg.r_wave_positions)


def test_the_decoder_reads_the_waveform_into_the_cine() -> None:
    timing = CardiacTiming(heart_rate_bpm=75.0, first_r_s=0.1)
    ds = waveform_dataset(timing, offset_ms=0.0, duration_s=3.0)
    ds.FrameTime = "25"
    ds.HeartRate = 75
    ds.Rows, ds.Columns = 8, 8
    cine = cine_from_header(ds, np.zeros((100, 8, 8, 3), np.uint8))
    assert cine.ecg_r_wave_frames == tuple(true_r_frames(timing, 100, 25.0))
    assert cine.ecg_heart_rate_bpm == pytest.approx(75.0, rel=0.01)
    # a waveform's R waves are not replaced by the burned-in trace's
    assert with_burned_in_ecg(cine) is cine


def test_no_ecg_channel_or_no_timing_gives_none() -> None:
    timing = CardiacTiming(heart_rate_bpm=75.0, first_r_s=0.1)
    resp = waveform_dataset(timing, offset_ms=0.0, duration_s=3.0, label="Respiration")
    assert ecg_from_waveform(resp, 100, 25.0) is None
    lead = waveform_dataset(timing, offset_ms=0.0, duration_s=3.0)
    assert ecg_from_waveform(lead, 100, None) is None
    assert ecg_from_waveform(Dataset(), 100, 25.0) is None
    # a malformed group (data shorter than stated) is ignored, not raised
    lead.WaveformSequence[0].WaveformData = b"\x00\x01"
    assert ecg_from_waveform(lead, 100, 25.0) is None


def test_the_r_peak_detector_ignores_flat_and_noisy_signals() -> None:
    rng = np.random.default_rng(3)
    assert detect_r_peaks(np.zeros(1000), 2.0).size == 0
    assert detect_r_peaks(rng.normal(0.0, 1.0, 2000), 2.0).size == 0
    t = np.arange(0.0, 4.0, 0.002)
    peaks = detect_r_peaks(ecg_mv(t, CardiacTiming(90.0, 0.2)), 2.0)
    assert np.allclose(peaks * 0.002, 0.2 + np.arange(len(peaks)) / 1.5, atol=0.004)
    assert len(peaks) == 6


# ---------------------------------------------------------------------------------------------
# beats and the heart-rate cross-check
# ---------------------------------------------------------------------------------------------


def area_curve_with_a_spurious_maximum(frame_time_ms: float, n_frames: int, hr: float):
    """An LV area curve (one ED at each R wave) with a segmentation glitch early in every
    filling phase: a short bulge that stands out like an end-diastole. Returns (area, timing)."""
    timing = CardiacTiming(heart_rate_bpm=hr, first_r_s=0.2)
    t_s = np.arange(n_frames) * frame_time_ms / 1000.0
    _k, phase = timing.beat_and_phase(t_s)
    area = 1000.0 - 450.0 * contraction(phase, timing.es_phase)
    es_s = end_systole_delay_s(hr)
    glitch_s = es_s + 0.15 * (timing.period_s - es_s)
    rel = (t_s - timing.first_r_s) % timing.period_s
    area += 400.0 * np.exp(-0.5 * ((rel - glitch_s) / 0.025) ** 2)
    return area, timing


def disc_masks(area_px: np.ndarray, size: int = 64) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    r2 = (yy - size / 2 + 0.5) ** 2 + (xx - size / 2 + 0.5) ** 2
    return np.stack([r2 <= a / np.pi for a in area_px])


def test_the_ecg_pairs_beats_right_where_the_area_curve_does_not() -> None:
    frame_time_ms, n = 20.0, 160
    area, timing = area_curve_with_a_spurious_maximum(frame_time_ms, n, 60.0)
    r_frames = true_r_frames(timing, n, frame_time_ms)
    es_frames = [round(r + end_systole_delay_s(60.0) * 1000.0 / frame_time_ms) for r in r_frames]
    # the area curve alone takes each glitch for an end-diastole: every beat ends at its glitch
    alone = pair_beats(find_cycle_events(area, frame_time_ms))
    assert len(find_cycle_events(area, frame_time_ms).ed_frames) == 2 * len(r_frames)
    assert all(b.next_ed_frame is not None and b.next_ed_frame - b.ed_frame < 30 for b in alone)
    # with the R waves: one beat per R wave, ES the true end-systole
    with_ecg = pair_beats(ecg_cycle_events(area, frame_time_ms, r_frames))
    assert [b.ed_frame for b in with_ecg] == r_frames
    for beat, es in zip(with_ecg, es_frames, strict=True):
        assert abs(beat.es_frame - es) <= 1

    # through measure_loop: the area curve's rate disagrees with the ECG's and is flagged
    masks = disc_masks(area / 2.0)
    m = measure_loop(
        masks, frame_time_ms=frame_time_ms, spacing_cm=(0.05, 0.05), r_wave_frames=r_frames
    )
    assert m.heart_rate_source == "ecg" and m.heart_rate_bpm == pytest.approx(60.0, rel=0.05)
    assert [b.ed_frame for b in m.beats] == r_frames
    assert FLAG_HEART_RATE_DISAGREES in m.flag_codes
    message = next(f.message for f in m.flags if f.code == FLAG_HEART_RATE_DISAGREES)
    assert "ECG (60 /min)" in message and "area curve" in message
    without = measure_loop(masks, frame_time_ms=frame_time_ms, spacing_cm=(0.05, 0.05))
    assert without.heart_rate_source == "beats" and FLAG_HEART_RATE_DISAGREES not in (
        without.flag_codes
    )


def test_an_area_rate_that_disagrees_with_the_header_is_flagged(a4c_loops) -> None:
    truth, _cine, masks = a4c_loops[0]
    hr = truth["heart_rate_bpm"]

    def measure(header_bpm: float):
        return measure_loop(
            masks,
            frame_time_ms=truth["frame_time_ms"],
            spacing_cm=tuple(truth["spacing_cm"]),
            header_heart_rate_bpm=header_bpm,
        )

    flagged = measure(hr * 1.3)
    assert flagged.heart_rate_source == "beats"
    message = next(f.message for f in flagged.flags if f.code == FLAG_HEART_RATE_DISAGREES)
    assert f"({hr:.0f} /min)" in message and f"header ({hr * 1.3:.0f} /min)" in message
    # within 15 %: no flag
    assert FLAG_HEART_RATE_DISAGREES not in measure(hr * 1.1).flag_codes
    assert FLAG_HEART_RATE_DISAGREES not in measure(hr).flag_codes
