"""Measurements from the phantoms' true LV masks: beats, landmarks, volumes, EF, heart rate,
quality flags and the clip index lists, against the phantom truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from support import phantom_truth

from inference.beats import (
    beat_clip_start,
    clip_frame_indices,
    clip_period_for,
    clip_span_frames,
    clip_starts,
    find_cycle_events,
    heart_rate_from_beats,
    pair_beats,
)
from inference.lv_geometry import find_landmarks, lv_outline_px
from inference.measure import (
    FLAG_EF_FROM_ALL_CLIPS,
    FLAG_EF_METHODS_DISAGREE,
    FLAG_HEART_RATE_FROM_HEADER,
    FLAG_LESS_THAN_ONE_BEAT,
    FLAG_LOOP_SHORTER_THAN_CLIP,
    FLAG_LV_MISSING,
    FLAG_LV_TOUCHES_SECTOR_EDGE,
    FLAG_NO_SPACING,
    FLAG_UNSTABLE_LV_AREA,
    measure_loop,
)
from inference.preprocess import FanGeometry
from inference.types import Measurements


class Study:
    """One phantom A4C loop's truth and masks, without decoding its pixels."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.truth = phantom_truth(path)
        data = np.load(path.parent / self.truth["masks_file"])
        self.masks = data["masks"]
        self.apex_px = data["apex_px"]
        self.mv_mid_px = data["mv_mid_px"]
        s = self.truth["sector"]
        self.transducer_px = (s["apex_col"], s["apex_row"])
        half = np.deg2rad(s["half_angle_deg"])
        self.fan = FanGeometry(
            apex_px=self.transducer_px,
            inner_radius_px=0.0,
            outer_radius_px=s["depth_cm"] / self.truth["spacing_cm"][0],
            left_angle_rad=-half,
            right_angle_rad=half,
            method="sector",
        )

    def measure(self, masks: np.ndarray | None = None, **overrides) -> Measurements:
        masks = self.masks if masks is None else masks
        ef = self.truth["ef_percent"]
        kwargs = {
            "frame_time_ms": self.truth["frame_time_ms"],
            "spacing_cm": tuple(self.truth["spacing_cm"]),
            "transducer_px": self.transducer_px,
            "sector_mask": self.fan.mask(masks.shape[1:]),
            "header_heart_rate_bpm": self.truth["heart_rate_bpm"],
            "clip_ef": lambda starts: np.full(len(starts), ef),
        }
        kwargs.update(overrides)
        return measure_loop(masks, **kwargs)


@pytest.fixture(scope="module")
def studies(phantom_studies) -> list[Study]:
    return [Study(p) for p in phantom_studies if phantom_truth(p)["view"] == "A4C"]


def test_true_masks_give_the_truth(studies) -> None:
    for st in studies:
        t = st.truth
        m = st.measure()
        # every truth beat is found, ED and ES within 2 frames
        assert len(m.beats) == len(t["beats"]), (st.path.name, m.beats)
        for found, true in zip(m.beats, t["beats"], strict=True):
            assert abs(found.ed_frame - true["ed_frame"]) <= 2
            assert abs(found.es_frame - true["es_frame"]) <= 2
            assert found.edv_ml == pytest.approx(true["edv_ml"], rel=0.05)
            assert found.esv_ml == pytest.approx(true["esv_ml"], rel=0.06)
        assert any(b.complete for b in m.beats) and not m.beats[-1].complete
        assert m.ef_disks_percent == pytest.approx(t["ef_percent"], abs=3.0)
        assert m.edv_ml == pytest.approx(t["edv_ml"], rel=0.05)
        assert m.esv_ml == pytest.approx(t["esv_ml"], rel=0.06)
        assert m.heart_rate_source == "beats"
        assert m.heart_rate_bpm == pytest.approx(t["heart_rate_bpm"], abs=3.0)
        assert m.ef_percent == pytest.approx(t["ef_percent"])
        assert m.ef_source == "beats"
        assert m.flags == (), m.flags
        assert m.lv_area_cm2 is not None and len(m.lv_area_cm2) == len(st.masks)


def test_landmarks_from_the_mask_alone_sit_on_the_true_ones(studies) -> None:
    for st in studies:
        spacing = tuple(st.truth["spacing_cm"])
        for beat in st.truth["beats"]:
            for f in (beat["ed_frame"], beat["es_frame"]):
                lm = find_landmarks(lv_outline_px(st.masks[f]), st.transducer_px, spacing)
                mm_per_px = 10 * spacing[0]
                apex_err = np.hypot(*np.subtract(lm.apex_px, st.apex_px[f])) * mm_per_px
                mid_err = np.hypot(*np.subtract(lm.annulus_mid_px, st.mv_mid_px[f])) * mm_per_px
                assert apex_err < 2.0 and mid_err < 2.0, (st.path.name, f, apex_err, mid_err)
                assert lm.annulus_left_px[0] < lm.annulus_right_px[0]
                # without the transducer the base is taken to be down, as in A4C: same answer
                again = find_landmarks(lv_outline_px(st.masks[f]), None, spacing)
                assert again == lm


def test_less_than_one_beat_is_flagged_and_the_header_rate_used(studies) -> None:
    st = studies[0]
    beat = st.truth["beats"][0]
    second_ed = st.truth["beats"][1]["ed_frame"]
    # ED -> ES but the loop stops before the next ED: one partial beat
    m = st.measure(st.masks[: second_ed - 2])
    assert FLAG_LESS_THAN_ONE_BEAT in m.flag_codes
    assert FLAG_HEART_RATE_FROM_HEADER in m.flag_codes
    assert m.heart_rate_source == "header"
    assert m.heart_rate_bpm == st.truth["heart_rate_bpm"]
    assert [(b.ed_frame, b.es_frame, b.complete) for b in m.beats] == [
        (pytest.approx(beat["ed_frame"], abs=2), pytest.approx(beat["es_frame"], abs=2), False)
    ]
    assert m.ef_percent is not None and m.edv_ml is not None
    # only a piece of systole: no beat at all, EF from every clip, no volumes
    piece = st.masks[beat["ed_frame"] + 2 : beat["es_frame"] - 2]
    m = st.measure(piece, header_heart_rate_bpm=None)
    assert m.beats == ()
    assert {FLAG_LESS_THAN_ONE_BEAT, FLAG_EF_FROM_ALL_CLIPS, FLAG_LOOP_SHORTER_THAN_CLIP} <= set(
        m.flag_codes
    )
    assert m.ef_source == "all_clips" and m.ef_percent == pytest.approx(st.truth["ef_percent"])
    assert m.edv_ml is None and m.ef_disks_percent is None
    assert m.heart_rate_bpm is None and m.heart_rate_source == "none"


def test_an_lv_touching_the_sector_edge_is_flagged(studies) -> None:
    st = studies[0]
    cols = np.nonzero(st.masks.any(axis=(0, 1)))[0]
    cut = st.fan.mask(st.masks.shape[1:]).copy()
    cut[:, int(cols.mean()) :] = False  # the sector ends in the middle of the LV
    m = st.measure(sector_mask=cut)
    assert FLAG_LV_TOUCHES_SECTOR_EDGE in m.flag_codes
    # the image border counts as an edge when no sector is given
    shifted = np.zeros_like(st.masks)
    shifted[:, :, : st.masks.shape[2] - cols.min()] = st.masks[:, :, cols.min() :]
    assert FLAG_LV_TOUCHES_SECTOR_EDGE in st.measure(shifted, sector_mask=None).flag_codes


def test_without_spacing_volumes_are_null_and_ef_is_still_reported(studies) -> None:
    st = studies[1]
    m = st.measure(spacing_cm=None)
    assert m.edv_ml is None and m.esv_ml is None and m.lv_area_cm2 is None
    assert all(b.edv_ml is None and b.esv_ml is None for b in m.beats)
    assert FLAG_NO_SPACING in m.flag_codes
    assert m.ef_percent == pytest.approx(st.truth["ef_percent"])
    assert m.ef_disks_percent == pytest.approx(st.truth["ef_percent"], abs=3.0)
    assert all(b.ed_landmarks is not None and b.ed_landmarks.long_axis_cm is None for b in m.beats)
    out = m.to_json()
    assert out["edv_ml"] is None and out["esv_ml"] is None
    assert json.loads(json.dumps(out))["ef_percent"] == pytest.approx(st.truth["ef_percent"])


def test_unstable_and_missing_masks_are_flagged(studies) -> None:
    st = studies[2]
    masks = st.masks.copy()
    masks[5] = False  # LV lost on one frame
    masks[9, :, : int(np.nonzero(masks[9].any(axis=0))[0].mean())] = False  # half an LV
    rows = np.nonzero(masks[20].any(axis=1))[0]
    masks[20, int(rows.mean()) : int(rows.mean()) + 4] = False  # cut in two
    m = st.measure(masks)
    assert FLAG_UNSTABLE_LV_AREA in m.flag_codes
    assert FLAG_LV_MISSING in m.flag_codes


def test_regression_and_disks_disagreeing_is_flagged(studies) -> None:
    st = studies[3]
    off = st.truth["ef_percent"] + 15.0
    m = st.measure(clip_ef=lambda s: np.full(len(s), off))
    assert FLAG_EF_METHODS_DISAGREE in m.flag_codes
    assert FLAG_EF_METHODS_DISAGREE not in st.measure().flag_codes


def test_clip_index_lists() -> None:
    assert clip_span_frames() == 63
    assert clip_starts(80).tolist() == list(range(18))  # 0 .. 80 - 63
    assert clip_starts(63).tolist() == [0]
    assert clip_starts(40).tolist() == [0]  # short loop: one clip, padded
    idx = clip_frame_indices(0, 40)
    assert len(idx) == 32 and idx[:20].tolist() == list(range(0, 40, 2)) and (idx[20:] == -1).all()
    assert clip_frame_indices(17, 80).tolist() == list(range(17, 80, 2))
    # ES at the clip's middle sample, moved into the loop at both ends
    assert beat_clip_start(40, 80) == 8
    assert clip_frame_indices(8, 80)[16] == 40
    assert beat_clip_start(10, 80) == 0
    assert beat_clip_start(79, 80) == 17
    assert beat_clip_start(30, 40) == 0
    assert clip_starts(100, length=16, period=1).tolist() == list(range(85))
    with pytest.raises(ValueError):
        clip_starts(0)


def test_clip_period_keeps_a_sample_about_every_40_ms() -> None:
    # EchoNet-Dynamic's 50 /s loops keep period 2; no timing keeps it too
    assert clip_period_for(20.0) == 2
    assert clip_period_for(None) == 2 and clip_period_for(0.0) == 2
    assert clip_period_for(50.0) == 1  # 20 /s: every frame (a 2-frame period spans 3.1 s)
    assert clip_period_for(11.7) == 3  # 85 /s
    assert clip_period_for(11.1) == 4  # 90 /s
    # across the scanners' range the step between samples stays near 40 ms
    for frame_time_ms in np.linspace(1000.0 / 90.0, 1000.0 / 20.0, 200):
        step_ms = clip_period_for(frame_time_ms) * frame_time_ms
        assert 26.0 <= step_ms <= 60.0, (frame_time_ms, step_ms)


def test_a_20_per_s_loop_is_not_padded_past_its_end(studies) -> None:
    # 40 frames at 20 /s is two seconds of heart: one clip of 32 frames fits without padding
    st = studies[0]
    masks = st.masks[:40]
    asked: list[np.ndarray] = []

    def record(s: np.ndarray) -> np.ndarray:
        asked.append(s.copy())
        return np.full(len(s), 50.0)

    m = st.measure(masks, frame_time_ms=50.0, header_heart_rate_bpm=None, clip_ef=record)
    assert m.clip_period_frames == 1
    assert FLAG_LOOP_SHORTER_THAN_CLIP not in {f.code for f in m.flags}
    assert asked and asked[0].max() <= 40 - 32
    # at 50 /s the same 40 frames are shorter than one clip: padded and said so
    m = st.measure(masks, frame_time_ms=20.0, header_heart_rate_bpm=None, clip_ef=record)
    assert m.clip_period_frames == 2
    assert FLAG_LOOP_SHORTER_THAN_CLIP in {f.code for f in m.flags}


def test_clip_predictions_feed_beats_and_the_clip_average(studies) -> None:
    st = studies[0]
    n = len(st.masks)
    period = clip_period_for(st.truth["frame_time_ms"])  # the period follows the frame rate
    starts = clip_starts(n, period=period)
    m = st.measure(clip_ef=starts.astype(float))  # an array: one EF per start, EF == start
    assert m.clip_period_frames == period
    assert m.clip_starts == tuple(starts.tolist())
    assert m.ef_clips_mean_percent == pytest.approx(starts.mean())
    for b in m.beats:
        assert b.clip_start_frame == beat_clip_start(b.es_frame, n, period=period)
        assert b.ef_percent == b.clip_start_frame
    per_beat = [b.ef_percent for b in m.beats]
    assert m.ef_percent == pytest.approx(np.mean(per_beat))
    assert m.ef_sd_percent == pytest.approx(np.std(per_beat, ddof=1))
    with pytest.raises(ValueError, match="one EF per clip start"):
        st.measure(clip_ef=np.zeros(len(starts) - 1))
    # a callable is asked only for the clips used: every 4th start plus the beat clips
    asked: list[np.ndarray] = []

    def record(s: np.ndarray) -> np.ndarray:
        asked.append(s.copy())
        return np.full(len(s), 50.0)

    m = st.measure(clip_ef=record, all_clip_stride=4)
    expected = set(starts[::4].tolist()) | {b.clip_start_frame for b in m.beats}
    assert len(asked) == 1 and set(asked[0].tolist()) == expected
    assert m.clip_starts == tuple(starts[::4].tolist())
    # no model: no EF, everything else measured
    m = st.measure(clip_ef=None)
    assert m.ef_percent is None and m.ef_source == "none" and m.edv_ml is not None


def test_json_has_the_agreed_keys_and_round_trips(studies) -> None:
    m = studies[0].measure()
    out = json.loads(json.dumps(m.to_json()))
    for key in ("ef_percent", "ef_disks_percent", "edv_ml", "esv_ml", "heart_rate_bpm"):
        assert isinstance(out[key], float)
    assert isinstance(out["beats"], list) and isinstance(out["flags"], list)
    beat = out["beats"][0]
    assert {"ed_frame", "es_frame", "edv_ml", "esv_ml", "ef_percent", "ef_disks_percent"} <= set(
        beat
    )
    assert Measurements.from_json(out) == m
    flagged = studies[0].measure(spacing_cm=None).to_json()["flags"]
    assert flagged[0]["code"] == FLAG_NO_SPACING and flagged[0]["message"]


def _synthetic_area(n: int, period: float, phase: float, noise: float, seed: int) -> np.ndarray:
    t = np.arange(n)
    x = ((t - phase) / period) % 1.0
    # ejection to ES at a third of the cycle, then filling: ED at phase, ES a third later
    third = 1.0 / 3.0
    base = np.where(
        x < third, np.cos(np.pi * x / third), -np.cos(np.pi * (x - third) / (1 - third))
    )
    return 1000 + 300 * base + np.random.default_rng(seed).normal(0, noise, n)


@pytest.mark.parametrize("seed", range(5))
def test_cycle_events_are_robust_to_segmentation_noise(seed: int) -> None:
    period, phase = 30.0, 7.0
    # white noise of 2.5 % of the area's range on every frame: worse than a decent network
    area = _synthetic_area(90, period, phase, noise=15.0, seed=seed)
    beats = pair_beats(find_cycle_events(area, frame_time_ms=25.0, heart_rate_bpm=80.0))
    eds = [b.ed_frame for b in beats]
    ess = [b.es_frame for b in beats]
    assert eds == pytest.approx([7, 37, 67], abs=2)
    assert ess == pytest.approx([17, 47, 77], abs=2)
    assert [b.next_ed_frame is not None for b in beats] == [True, True, False]
    assert heart_rate_from_beats(beats, 25.0) == pytest.approx(60000 / (period * 25.0), abs=3.0)


def test_extremes_on_the_first_or_last_frame_are_not_taken() -> None:
    area = _synthetic_area(70, 30.0, 0.0, noise=0.0, seed=0)  # ED exactly on frame 0
    events = find_cycle_events(area, frame_time_ms=25.0)
    assert 0 not in events.ed_frames and events.ed_frames[0] == 30
