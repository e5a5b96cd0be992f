"""Preprocessing: the fan is found from the pixels, everything outside it is blanked, and the
112 grid maps back to source pixels (and centimetres) exactly."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest
from support import phantom_truth

from inference.decode import read_cine
from inference.preprocess import (
    FanGeometry,
    PreprocessError,
    PreprocessParams,
    find_sector,
    preprocess_cine,
)
from inference.types import Cine, RegionBox

PARAMS = PreprocessParams(mean=(32.0, 33.0, 34.0), std=(48.0, 49.0, 50.0))


def true_fan(truth: dict) -> FanGeometry:
    s = truth["sector"]
    half = np.deg2rad(s["half_angle_deg"])
    return FanGeometry(
        apex_px=(s["apex_col"], s["apex_row"]),
        inner_radius_px=0.0,
        outer_radius_px=s["depth_cm"] / truth["spacing_cm"][0],
        left_angle_rad=-half,
        right_angle_rad=half,
        method="sector",
    )


@pytest.fixture(scope="module")
def loops(phantom_studies) -> list[tuple[Path, dict, Cine]]:
    return [
        (p, phantom_truth(p), read_cine(p))
        for p in phantom_studies
        if phantom_truth(p)["view"] == "A4C"
    ]


def _masks(path: Path, truth: dict) -> np.ndarray:
    return np.load(path.parent / truth["masks_file"])["masks"]


@pytest.mark.slow
@pytest.mark.parametrize("with_region", [True, False], ids=["header-region", "pixels-only"])
def test_the_fan_is_found_from_the_pixels(loops, with_region: bool) -> None:
    for _, truth, cine in loops:
        if not with_region:
            cine = dataclasses.replace(cine, tissue_region=None)
        fan = find_sector(cine)
        expected = true_fan(truth)
        assert fan.method == "sector"
        assert np.hypot(*np.subtract(fan.apex_px, expected.apex_px)) < 1.5
        assert fan.outer_radius_px == pytest.approx(expected.outer_radius_px, abs=3.0)
        assert np.rad2deg(fan.left_angle_rad) == pytest.approx(
            np.rad2deg(expected.left_angle_rad), abs=0.5
        )
        assert np.rad2deg(fan.right_angle_rad) == pytest.approx(
            np.rad2deg(expected.right_angle_rad), abs=0.5
        )
        shape = cine.frames.shape[1:3]
        found, real = fan.mask(shape), expected.mask(shape, margin_px=0.0)
        assert np.count_nonzero(found & real) / np.count_nonzero(found | real) > 0.98


@pytest.mark.slow
def test_text_ecg_and_scales_outside_the_fan_are_blanked(loops) -> None:
    for _, truth, cine in loops:
        pre = preprocess_cine(cine, PARAMS)
        shape = cine.frames.shape[1:3]
        outside = ~true_fan(truth).mask(shape, margin_px=-1.0)  # > 1 px outside the true fan
        fan_mask = pre.source_sector_mask()
        crop = pre.transform.crop
        in_crop = np.zeros(shape, bool)
        in_crop[crop.y0 : crop.y1 + 1, crop.x0 : crop.x1 + 1] = True
        for frame in cine.frames[:: max(1, cine.n_frames // 8)]:
            annotation = (frame.max(axis=-1) > 0) & outside
            # the crop itself holds annotations (text corners, depth scale): masking matters
            assert np.count_nonzero(annotation & in_crop) > 50
            assert not np.any(annotation & fan_mask)
        # on the grid: every pixel that the fan does not reach holds exactly the blank value
        reach = pre.transform.mask_to_grid(fan_mask) > 0
        blank = (0.0 - np.asarray(PARAMS.mean)) / np.asarray(PARAMS.std)
        for c in range(3):
            assert np.all(pre.frames[:, c][:, ~reach] == np.float32(blank[c]))


@pytest.mark.slow
def test_output_is_normalised_float32_on_the_grid(loops) -> None:
    _, _, cine = loops[0]
    pre = preprocess_cine(cine, PARAMS)
    assert pre.frames.shape == (cine.n_frames, 3, 112, 112)
    assert pre.frames.dtype == np.float32
    assert pre.sector_mask.shape == (112, 112) and pre.sector_mask.dtype == bool
    # the fan fills the square's width: it touches both sides of the grid
    assert pre.sector_mask[:, 0].any() or pre.sector_mask[:, 1].any()
    assert pre.sector_mask[:, -1].any() or pre.sector_mask[:, -2].any()
    # de-normalised values are pixel intensities
    raw = (
        pre.frames * np.asarray(PARAMS.std)[None, :, None, None]
        + np.asarray(PARAMS.mean)[None, :, None, None]
    )
    assert raw.min() >= -1e-3 and raw.max() <= 255 + 1e-3
    assert raw[:, :, pre.sector_mask].mean() > 10


@pytest.mark.slow
def test_true_lv_masks_survive_the_round_trip_to_the_grid_and_back(loops) -> None:
    for path, truth, cine in loops:
        tr = preprocess_cine(cine, PARAMS).transform
        masks = _masks(path, truth)
        ed_frames = {b["ed_frame"] for b in truth["beats"]}
        for f, mask in enumerate(masks):
            grid = tr.mask_to_grid(mask)  # area fractions, what a network's probability mimics
            back = tr.mask_to_source(grid)
            iou = np.count_nonzero(back & mask) / np.count_nonzero(back | mask)
            assert iou > 0.95, (path.name, f, iou)
            if f in ed_frames:  # a hard 0/1 grid mask loses more, and still keeps the LV
                hard = tr.mask_to_source((grid >= 0.5).astype(np.float32))
                assert np.count_nonzero(hard & mask) / np.count_nonzero(hard | mask) > 0.95


@pytest.mark.slow
def test_points_map_both_ways_and_land_on_the_lv(loops) -> None:
    for path, truth, cine in loops:
        tr = preprocess_cine(cine, PARAMS).transform
        rng = np.random.default_rng(0)
        pts = rng.uniform(0, 500, size=(50, 2))
        assert np.allclose(tr.points_to_source(tr.points_to_grid(pts)), pts, atol=1e-9)
        data = np.load(path.parent / truth["masks_file"])
        ed = truth["beats"][0]["ed_frame"]
        grid = tr.mask_to_grid(data["masks"][ed])
        # the LV centroid lands at the grid mask's centroid
        ys, xs = np.nonzero(data["masks"][ed])
        centre = tr.points_to_grid(np.array([xs.mean(), ys.mean()]))
        gy, gx = np.mgrid[0:112, 0:112]
        expected = np.array([(gx * grid).sum(), (gy * grid).sum()]) / grid.sum()
        assert np.allclose(centre, expected, atol=0.05)
        # the transducer maps to the middle column, on the first row under the top padding
        top = tr.points_to_grid(np.asarray(tr.transducer_px))
        assert top[0] == pytest.approx(55.5, abs=1.5)
        assert top[1] == pytest.approx((tr.pad_top_px + 0.5) * tr.scale - 0.5, abs=0.5)


@pytest.mark.slow
def test_areas_on_the_grid_match_areas_in_source_pixels(loops) -> None:
    for path, truth, cine in loops:
        tr = preprocess_cine(cine, PARAMS).transform
        sy, sx = truth["spacing_cm"]
        gy, gx = tr.grid_spacing_cm
        assert gy == pytest.approx(sy * tr.side_px / 112) and gx == pytest.approx(
            sx * tr.side_px / 112
        )
        masks = _masks(path, truth)
        for beat in truth["beats"]:
            for f in (beat["ed_frame"], beat["es_frame"]):
                source_cm2 = np.count_nonzero(masks[f]) * sy * sx
                grid = tr.mask_to_grid(masks[f])
                assert grid.sum() * gy * gx == pytest.approx(source_cm2, rel=0.02)
                hard_cm2 = np.count_nonzero(grid >= 0.5) * gy * gx
                assert hard_cm2 == pytest.approx(
                    source_cm2, rel=0.03 if f == beat["es_frame"] else 0.02
                )


def _synthetic_cine(
    rows: int = 300, cols: int = 400, inner_px: float = 0.0, n: int = 6, region: bool = False
) -> tuple[Cine, FanGeometry]:
    fan = FanGeometry(
        apex_px=(200.0, 20.0),
        inner_radius_px=inner_px,
        outer_radius_px=250.0,
        left_angle_rad=-np.deg2rad(35.0),
        right_angle_rad=np.deg2rad(35.0),
        method="sector",
    )
    inside = fan.mask((rows, cols), margin_px=0.0)
    rng = np.random.default_rng(1)
    frames = np.zeros((n, rows, cols, 3), np.uint8)
    for i in range(n):
        grey = (rng.uniform(20, 200, (rows, cols)) * inside).astype(np.uint8)
        frames[i] = grey[..., None]
        cv2.putText(
            frames[i],
            "PATIENT NAME 123",
            (5, 25),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.5,
            (230, 230, 230),
            1,
        )
        cv2.line(frames[i], (10 + 30 * i, 285), (10 + 30 * i, 298), (250, 230, 60), 2)  # cursor
    cine = Cine(
        frames=frames,
        frame_time_ms=20.0,
        frame_time_source="FrameTime",
        spacing_cm=(0.05, 0.05),
        tissue_region=RegionBox(0, 0, cols - 1, 270) if region else None,
        heart_rate_bpm=None,
        sop_instance_uid="1.2.3",
    )
    return cine, fan


@pytest.mark.parametrize("inner_px", [0.0, 30.0], ids=["pointed", "truncated-top"])
def test_synthetic_fan_with_text_and_ecg_cursor(inner_px: float) -> None:
    cine, fan = _synthetic_cine(inner_px=inner_px)
    found = find_sector(cine)
    assert found.method == "sector"
    assert np.hypot(*np.subtract(found.apex_px, fan.apex_px)) < 2.0
    assert found.inner_radius_px == pytest.approx(inner_px, abs=3.0)
    pre = preprocess_cine(cine, PARAMS)
    text = cine.frames[0].max(axis=-1) > 0
    text &= ~fan.mask(cine.frames.shape[1:3], margin_px=-1.0)
    assert not np.any(text & pre.source_sector_mask())


def test_a_fan_that_is_not_a_sector_falls_back_to_its_hull() -> None:
    cine, _ = _synthetic_cine()
    rng = np.random.default_rng(2)
    frames = np.zeros_like(cine.frames)
    frames[:, 40:260, 100:300] = rng.uniform(20, 200, (cine.n_frames, 220, 200, 1))
    found = find_sector(dataclasses.replace(cine, frames=frames))
    assert found.method == "hull"
    mask = found.mask(frames.shape[1:3])
    assert mask[45:255, 105:295].all() and not mask[:38].any() and not mask[:, :98].any()


def test_a_single_still_frame_uses_brightness() -> None:
    cine, fan = _synthetic_cine(n=1, region=True)
    found = find_sector(cine)
    assert np.hypot(*np.subtract(found.apex_px, fan.apex_px)) < 2.0


def test_blank_loops_and_bad_parameters_are_refused() -> None:
    cine, _ = _synthetic_cine()
    blank = dataclasses.replace(cine, frames=np.zeros_like(cine.frames))
    with pytest.raises(PreprocessError, match="no ultrasound fan"):
        preprocess_cine(blank, PARAMS)
    with pytest.raises(ValueError, match="std must be positive"):
        PreprocessParams(mean=(0.0, 0.0, 0.0), std=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="one value per RGB channel"):
        PreprocessParams(mean=(0.0, 0.0), std=(1.0, 1.0, 1.0))  # type: ignore[arg-type]
    tr = preprocess_cine(cine, PARAMS).transform
    with pytest.raises(ValueError, match="112x112"):
        tr.mask_to_source(np.zeros((64, 64)))
