"""The five negative classes' content, in memory: grey frames with their fan and timing, the
counterpart of ``simulate_a4c`` and ``simulate_plax`` for loops the node must refuse to
publish an EF on (``blank``, ``noise``, ``non_cardiac``, ``wrong_view``, ``lv_cut_off``; see
``negatives``, which writes them as DICOM with their truth).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .abdomen import abdomen_paints, sample_abdomen
from .anatomy import Pose
from .cases import DEPTH_RANGE_CM, A4CCase, Layout, sample_a4c_case, shapes_at, simulate_a4c
from .distractors import simulate_plax
from .geometry import PolarGrid, Sector
from .loop_timing import LoopPlan, plan_loop
from .render import BeamRenderer, fill_mask, sample_style

NEGATIVE_CLASSES = ("blank", "noise", "non_cardiac", "wrong_view", "lv_cut_off")
NOISE_MAX_FRAMES = 64  # noise does not compress: fewer frames keep the files < ~70 MB
CUT_OFF_FRACTION = (0.3, 0.6)  # share of the LV outside the fan, least over the loop
_CUT_STEP_CM = 0.15
_DEPTH_STEP_CM = 0.2
_MIN_DEPTH_CM = 4.0


@dataclass(frozen=True)
class NegativeLoop:
    """One negative loop before it becomes DICOM: grey frames (zero outside the fan unless the
    whole image is the content), and what its header and truth need."""

    negative_class: str
    variant: str
    view: str  # "none", or the view it is ("PLAX", "A4C")
    frames: np.ndarray  # (n, rows, cols) uint8
    annotated: bool  # False: the content fills the image, no burned-in text or ECG
    sector: Sector
    plan: LoopPlan
    truth: dict[str, Any] = field(default_factory=dict)  # class-specific, JSON-ready


def _check_class(negative_class: str) -> None:
    if negative_class not in NEGATIVE_CLASSES:
        raise ValueError(
            f"negative class must be one of {', '.join(NEGATIVE_CLASSES)}, got {negative_class!r}"
        )


def _fan(rng: np.random.Generator, layout: Layout) -> Sector:
    """Depth and opening drawn as for the cardiac loops."""
    depth = float(rng.uniform(*DEPTH_RANGE_CM))
    half = float(np.deg2rad(rng.uniform(38.0, 45.0)))
    return layout.sector(depth, half)


def _blank(rng: np.random.Generator, layout: Layout, max_frames: int) -> NegativeLoop:
    sector = _fan(rng, layout)
    plan = plan_loop(rng, max_frames=max_frames)
    variant = str(rng.choice(["dark_fan", "flat_fan", "whole_image"]))
    shape = (plan.n_frames, sector.rows, sector.cols)
    if variant == "whole_image":
        level = int(rng.integers(0, 41))
        frames = np.full(shape, level, np.uint8)
    else:
        level = int(rng.integers(0, 9)) if variant == "dark_fan" else int(rng.integers(20, 161))
        frames = np.zeros(shape, np.uint8)
        frames[:, sector.mask()] = level
    return NegativeLoop(
        "blank",
        variant,
        "none",
        frames,
        variant != "whole_image",
        sector,
        plan,
        {"grey_level": level},
    )


def _noise(rng: np.random.Generator, layout: Layout, max_frames: int) -> NegativeLoop:
    sector = _fan(rng, layout)
    plan = plan_loop(rng, max_frames=min(max_frames, NOISE_MAX_FRAMES))
    variant = str(rng.choice(["fan", "whole_image"]))
    frames = rng.integers(0, 256, (plan.n_frames, sector.rows, sector.cols), dtype=np.uint8)
    if variant == "fan":
        frames[:, ~sector.mask()] = 0
    return NegativeLoop("noise", variant, "none", frames, variant == "fan", sector, plan)


def _non_cardiac(rng: np.random.Generator, layout: Layout, max_frames: int) -> NegativeLoop:
    sector = _fan(rng, layout)
    plan = plan_loop(rng, max_frames=max_frames)
    scene = sample_abdomen(rng, sector.depth_cm, sector.half_angle_rad)
    grid = PolarGrid(
        round(sector.height_px), layout.n_theta, sector.depth_cm, sector.half_angle_rad
    )
    renderer = BeamRenderer(sector, grid, sample_style(rng), rng)
    frames = np.zeros((plan.n_frames, sector.rows, sector.cols), np.uint8)
    for f, t in enumerate(plan.frame_times_s()):
        frames[f] = renderer.frame(abdomen_paints(scene, float(t)), rng)
    variant = "liver_static" if scene.drift_amp_cm == 0 else "liver_breathing"
    extra = {"drift_amp_cm": scene.drift_amp_cm, "n_vessels": len(scene.vessels)}
    return NegativeLoop("non_cardiac", variant, "none", frames, True, sector, plan, extra)


def _wrong_view(rng: np.random.Generator, layout: Layout, max_frames: int) -> NegativeLoop:
    loop = simulate_plax(rng, layout, max_frames)
    return NegativeLoop("wrong_view", "plax", "PLAX", loop.frames, True, loop.sector, loop.plan)


def lv_outside_fraction(lv_endo_cm: np.ndarray, sector: Sector, fan: np.ndarray) -> float:
    """Share of the LV cavity's area (cm^2) outside the fan; fan is sector.mask()."""
    x, y = lv_endo_cm[:, 0], lv_endo_cm[:, 1]
    total = 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
    inside_px = np.count_nonzero(fill_mask(fan.shape, sector.to_px(lv_endo_cm)) & fan)
    inside = inside_px * sector.spacing_cm**2
    return float(np.clip(1.0 - inside / max(total, 1e-9), 0.0, 1.0))


def _lv_outlines(case: A4CCase, n_times: int = 16) -> list[np.ndarray]:
    """The LV cavity at instants spread over the loop (it shrinks and breathes)."""
    times = np.linspace(0.0, case.plan.frame_times_s()[-1], n_times)
    return [shapes_at(case, float(t)).lv_endo for t in times]


def _least_outside(outlines: list[np.ndarray], sector: Sector, fan: np.ndarray) -> float:
    return min(lv_outside_fraction(o, sector, fan) for o in outlines)


def _cut_off_case(rng: np.random.Generator, layout: Layout, case: A4CCase) -> tuple[A4CCase, str]:
    """Moves the heart sideways out of the fan (off-axis probe) or makes the scan too shallow
    for its base, in small steps until at least the drawn share of the LV is outside."""
    target = float(rng.uniform(*CUT_OFF_FRACTION))
    if rng.random() < 0.7:
        # mostly the lateral wall out (the usual off-axis error); leftwards the RV goes first
        sign = 1.0 if rng.random() < 0.7 else -1.0
        tilt = float(np.deg2rad(rng.uniform(-10.0, 10.0)))
        (ax, ay), angle = case.pose.apex_xy_cm, case.pose.angle_rad
        tilted = replace(case, pose=Pose((ax, ay), angle + tilt))
        outlines = _lv_outlines(tilted)  # moving the apex by dx moves every point by dx
        fan = case.sector.mask()
        for step in range(1, 200):
            dx = sign * step * _CUT_STEP_CM
            moved = [o + np.array([dx, 0.0]) for o in outlines]
            if _least_outside(moved, case.sector, fan) >= target:
                pose = Pose((ax + dx, ay), angle + tilt)
                return replace(case, pose=pose), "side_right" if sign > 0 else "side_left"
    else:
        outlines = _lv_outlines(case)
        half = case.sector.half_angle_rad
        depth = case.sector.depth_cm
        while depth > _MIN_DEPTH_CM:
            depth -= _DEPTH_STEP_CM
            sector = layout.sector(depth, half)
            if _least_outside(outlines, sector, sector.mask()) >= target:
                grid = PolarGrid(round(sector.height_px), layout.n_theta, depth, half)
                return replace(case, sector=sector, grid=grid), "too_shallow"
    raise RuntimeError("could not move the LV out of the fan")  # pragma: no cover


def _lv_cut_off(rng: np.random.Generator, layout: Layout, max_frames: int) -> NegativeLoop:
    case = sample_a4c_case(rng, layout, max_frames=max_frames)
    case, variant = _cut_off_case(rng, layout, case)
    loop = simulate_a4c(case, rng)
    fan = case.sector.mask()
    shares = [lv_outside_fraction(s.lv_endo, case.sector, fan) for s in loop.shapes_cm]
    extra = {
        "lv_outside_fan_fraction_min": min(shares),
        "lv_outside_fan_fraction_max": max(shares),
        "reference_ef_percent": loop.ef_percent,
        "reference_edv_ml": loop.edv_ml,
        "reference_esv_ml": loop.esv_ml,
    }
    return NegativeLoop(
        "lv_cut_off", variant, "A4C", loop.frames, True, case.sector, case.plan, extra
    )


_SIMULATORS = {
    "blank": _blank,
    "noise": _noise,
    "non_cardiac": _non_cardiac,
    "wrong_view": _wrong_view,
    "lv_cut_off": _lv_cut_off,
}


def simulate_negative(
    negative_class: str, rng: np.random.Generator, layout: Layout, max_frames: int
) -> NegativeLoop:
    """One negative loop of the class, in memory (the counterpart of ``simulate_a4c`` and
    ``simulate_plax``): grey frames with their fan and timing."""
    _check_class(negative_class)
    return _SIMULATORS[negative_class](rng, layout, max_frames)
