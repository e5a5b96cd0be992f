"""One A4C loop: sample a heart, a pose, machine settings and timing; simulate every frame
with its exact LV mask, method-of-disks volume and landmarks; find ED/ES beat by beat.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..disks import disks_volume_ml, ejection_fraction_percent
from .anatomy import A4CAnatomy, A4CShapes, Pose, a4c_shapes
from .geometry import PolarGrid, Sector, make_sector
from .loop_timing import Beat, LoopPlan, loop_events, plan_loop
from .motion import contraction, valve_opening
from .render import BeamRenderer, EchoStyle, Paint, fill_mask, sample_style

EF_RANGE_PERCENT = (15.0, 80.0)
EF_TARGET_PERCENT = (17.0, 78.0)  # leaves room for beat-to-beat variation inside the range
BEAT_EF_JITTER_PERCENT = 1.5
DEPTH_RANGE_CM = (13.0, 20.0)
N_DISKS = 20


@dataclass(frozen=True)
class Layout:
    """Image matrix and where the fan goes in it. rows/cols None: the image is just the fan's
    bounding box (EchoNet-style), sector_height_px tall."""

    rows: int | None
    cols: int | None
    top_px: int = 0
    bottom_px: int = 0
    sector_height_px: int = 0
    n_theta: int = 224

    def sector(self, depth_cm: float, half_angle_rad: float) -> Sector:
        if self.rows is not None and self.cols is not None:
            return make_sector(
                self.rows, self.cols, depth_cm, half_angle_rad, self.top_px, self.bottom_px
            )
        h = self.sector_height_px
        cols = int(np.ceil(2 * h * np.sin(half_angle_rad))) + 1
        return Sector(
            rows=h + 1,
            cols=cols,
            depth_cm=depth_cm,
            half_angle_rad=half_angle_rad,
            apex_row=0.0,
            apex_col=(cols - 1) / 2.0,
            spacing_cm=depth_cm / h,
        )


@dataclass(frozen=True)
class TissueLevels:
    myocardium: float
    blood: float
    pericardium: float
    valve: float


@dataclass(frozen=True)
class A4CCase:
    anatomy: A4CAnatomy
    pose: Pose
    plan: LoopPlan
    beat_long_frac: tuple[float, ...]  # per beat, index 0 is beat -1 (before the first R)
    beat_radial_frac: tuple[float, ...]
    resp_amp_cm: tuple[float, float]
    resp_period_s: float
    resp_phase_rad: float
    style: EchoStyle
    levels: TissueLevels
    sector: Sector
    grid: PolarGrid
    ef_target_percent: float


@dataclass(frozen=True)
class A4CLoop:
    """A simulated loop: grey fan images, exact LV masks and the truth derived from them."""

    case: A4CCase
    frames: np.ndarray  # (n, rows, cols) uint8, zero outside the fan
    masks: np.ndarray  # (n, rows, cols) bool
    volumes_ml: np.ndarray  # (n,)
    shapes_cm: tuple[A4CShapes, ...]  # physical coordinates per frame
    ed_frames: tuple[int, ...]
    es_frames: tuple[int, ...]
    beats: tuple[Beat, ...]

    @property
    def edv_ml(self) -> float:
        return float(np.mean([b.edv_ml for b in self.beats]))

    @property
    def esv_ml(self) -> float:
        return float(np.mean([b.esv_ml for b in self.beats]))

    @property
    def ef_percent(self) -> float:
        return ejection_fraction_percent(self.edv_ml, self.esv_ml)


def _shortening(ef_percent: float, long_share: float) -> tuple[float, float]:
    """Longitudinal and radial shortening fractions giving this EF, since V ~ L * R^2."""
    ef = ef_percent / 100.0
    a = ef * long_share
    b = 1.0 - np.sqrt((1.0 - ef) / (1.0 - a))
    return float(a), float(b)


def sample_anatomy(rng: np.random.Generator, ef_percent: float) -> A4CAnatomy:
    """ED geometry with EDV ~70-220 mL (larger when EF is low) and LV length 7-10 cm."""
    for _ in range(200):
        median = 115.0 * (1.0 + 0.012 * max(0.0, 55.0 - ef_percent))
        edv = float(np.clip(median * np.exp(rng.normal(0.0, 0.22)), 72.0, 215.0))
        frac = np.clip((edv - 70.0) / 150.0, 0.0, 1.0) ** 0.8
        length = float(np.clip(7.2 + 2.6 * frac + rng.normal(0.0, 0.45), 7.0, 10.0))
        unit = A4CAnatomy(
            lv_length_cm=length,
            lv_radius_cm=1.0,
            lv_asymmetry=float(rng.uniform(-0.04, 0.12)),
            lv_peak_frac=float(rng.uniform(0.55, 0.72)),
            lv_apex_power=float(rng.uniform(0.45, 0.62)),
            lv_annulus_ratio=float(rng.uniform(0.58, 0.72)),
            wall_septal_cm=float(rng.uniform(0.8, 1.2)),
            wall_lateral_cm=float(rng.uniform(0.8, 1.1)),
            wall_apex_cm=float(rng.uniform(0.6, 0.9)),
            rv_apex_frac=float(rng.uniform(0.25, 0.4)),
            rv_width_cm=1.0,
            rv_wall_cm=float(rng.uniform(0.35, 0.5)),
            rv_radial_ratio=float(rng.uniform(0.6, 1.0)),
            tv_offset_cm=float(rng.uniform(0.4, 0.9)),
            la_length_cm=float(rng.uniform(3.8, 5.2) * np.sqrt(length / 8.5)),
            la_width_ratio=float(rng.uniform(1.25, 1.55)),
            ra_length_cm=float(rng.uniform(3.5, 4.8)),
            ra_width_ratio=float(rng.uniform(1.1, 1.4)),
            mv_anterior_cm=1.0,
            mv_posterior_cm=1.0,
            tv_leaflet_cm=1.0,
        )
        shapes = a4c_shapes(unit, 0.0, 0.0, 0.0, 0.0)
        v1 = disks_volume_ml(shapes.lv_endo, shapes.lv_apex, shapes.mv_mid, N_DISKS)
        radius = float(np.sqrt(edv / v1))
        if not 0.42 <= 2.0 * radius / length <= 0.78:
            continue
        size = radius / 2.5
        return replace(
            unit,
            lv_radius_cm=radius,
            rv_width_cm=float(2.0 * radius * rng.uniform(0.6, 0.85)),
            mv_anterior_cm=float(rng.uniform(1.9, 2.4) * size),
            mv_posterior_cm=float(rng.uniform(1.2, 1.6) * size),
            tv_leaflet_cm=float(rng.uniform(1.4, 1.9) * size),
        )
    raise RuntimeError("could not sample a plausible LV")  # pragma: no cover


def sample_levels(rng: np.random.Generator) -> TissueLevels:
    return TissueLevels(
        myocardium=float(rng.uniform(0.25, 0.5)),
        blood=float(rng.uniform(0.003, 0.008)),
        pericardium=float(rng.uniform(1.0, 2.0)),
        valve=float(rng.uniform(0.5, 0.9)),
    )


def sample_a4c_case(
    rng: np.random.Generator,
    layout: Layout,
    max_frames: int,
    min_frames: int = 0,
    integer_fps: bool = False,
) -> A4CCase:
    ef = float(rng.uniform(*EF_TARGET_PERCENT))
    plan = plan_loop(rng, max_frames=max_frames, min_frames=min_frames, integer_fps=integer_fps)
    long_share = float(rng.uniform(0.22, 0.32))
    n_beat_slots = plan.n_beats + 4
    jitter = np.clip(rng.normal(0.0, 1.0, n_beat_slots), -1.0, 1.0) * BEAT_EF_JITTER_PERCENT
    beat_efs = ef + jitter
    long_r = tuple(_shortening(e, long_share) for e in beat_efs)
    fitted = None
    for _ in range(50):  # a very large heart may not fit any pose: draw another heart
        anat = sample_anatomy(rng, ef)
        fitted = _fit_pose(rng, layout, a4c_shapes(anat, 0.0, 0.0, 0.0, 0.0))
        if fitted is not None:
            break
    if fitted is None:
        raise RuntimeError("could not fit the LV in the sector")  # pragma: no cover
    pose, sector = fitted
    depth, half = sector.depth_cm, sector.half_angle_rad
    n_r = round(sector.height_px)
    grid = PolarGrid(n_r=n_r, n_theta=layout.n_theta, depth_cm=depth, half_angle_rad=half)
    amp = rng.uniform(-0.15, 0.15, 2)
    return A4CCase(
        anatomy=anat,
        pose=pose,
        plan=plan,
        beat_long_frac=tuple(a for a, _ in long_r),
        beat_radial_frac=tuple(b for _, b in long_r),
        resp_amp_cm=(float(amp[0]), float(amp[1])),
        resp_period_s=float(rng.uniform(3.0, 5.0)),
        resp_phase_rad=float(rng.uniform(0.0, 2 * np.pi)),
        style=sample_style(rng),
        levels=sample_levels(rng),
        sector=sector,
        grid=grid,
        ef_target_percent=ef,
    )


def _fit_pose(
    rng: np.random.Generator, layout: Layout, ed: A4CShapes, tries: int = 150
) -> tuple[Pose, Sector] | None:
    """Depth, fan angle, rotation about the apex and lateral offset that keep the whole LV
    (epicardium at ED, the largest it gets) inside the fan."""
    for _ in range(tries):
        half = float(np.deg2rad(rng.uniform(38.0, 45.0)))
        pose = Pose(
            apex_xy_cm=(float(rng.uniform(-0.6, 0.8)), float(rng.uniform(1.8, 3.0))),
            angle_rad=float(np.deg2rad(12.0 + rng.uniform(-15.0, 15.0))),
        )
        epi = pose.apply(ed.lv_epi)
        need = float(epi[:, 1].max()) + 1.0
        if need > DEPTH_RANGE_CM[1]:
            continue
        depth = float(rng.uniform(max(DEPTH_RANGE_CM[0], need), DEPTH_RANGE_CM[1]))
        sector = layout.sector(depth, half)
        if sector.contains_cm(epi, margin_cm=0.45).all():
            return pose, sector
    return None


def a4c_paints(s: A4CShapes, lv: TissueLevels) -> list[Paint]:
    """Painting order matters: walls first, cavities cut out of them, valves on top."""
    m = lv.myocardium
    return [
        Paint(s.la_wall, 0.45 * m),
        Paint(s.ra_wall, 0.4 * m),
        Paint(s.lv_epi, m),
        Paint(s.rv_wall, 0.85 * m),
        Paint(s.pericardium, lv.pericardium, "line", 0.2),
        Paint(s.la_cavity, lv.blood),
        Paint(s.ra_cavity, lv.blood),
        Paint(s.rv_cavity, lv.blood),
        Paint(s.lv_endo, lv.blood),
        Paint(s.mv_anterior, lv.valve, "line", 0.09),
        Paint(s.mv_posterior, lv.valve, "line", 0.09),
        Paint(s.tv_septal, 0.8 * lv.valve, "line", 0.08),
        Paint(s.tv_lateral, 0.8 * lv.valve, "line", 0.08),
        Paint(s.hinges, 1.3 * lv.valve, "dot", 0.1),
    ]


def shapes_at(case: A4CCase, t_s: float) -> A4CShapes:
    """The heart in physical coordinates at time t_s (s since the first frame)."""
    timing = case.plan.timing
    k, ph = timing.beat_and_phase(np.array([t_s]))
    slot = int(np.clip(k[0] + 1, 0, len(case.beat_long_frac) - 1))
    c = float(contraction(ph, timing.es_phase)[0])
    o = float(valve_opening(ph, timing.es_phase)[0])
    heart = a4c_shapes(
        case.anatomy, case.beat_long_frac[slot] * c, case.beat_radial_frac[slot] * c, c, o
    )
    w = 2 * np.pi * t_s / case.resp_period_s + case.resp_phase_rad
    dx, dy = case.resp_amp_cm[0] * np.sin(w), case.resp_amp_cm[1] * np.sin(w)
    ax, ay = case.pose.apex_xy_cm
    return heart.transformed(Pose((ax + dx, ay + dy), case.pose.angle_rad))


def simulate_a4c(case: A4CCase, rng: np.random.Generator, render: bool = True) -> A4CLoop:
    plan, sector = case.plan, case.sector
    times = plan.frame_times_s()
    renderer = BeamRenderer(sector, case.grid, case.style, rng) if render else None
    n = plan.n_frames
    frames = np.zeros((n, sector.rows, sector.cols), np.uint8)
    masks = np.zeros((n, sector.rows, sector.cols), bool)
    volumes = np.zeros(n)
    shapes: list[A4CShapes] = []
    for f, t in enumerate(times):
        s = shapes_at(case, float(t))
        shapes.append(s)
        volumes[f] = disks_volume_ml(s.lv_endo, s.lv_apex, s.mv_mid, N_DISKS)
        masks[f] = fill_mask((sector.rows, sector.cols), sector.to_px(s.lv_endo))
        if renderer is not None:
            frames[f] = renderer.frame(a4c_paints(s, case.levels), rng)

    events = loop_events(volumes, times, plan.timing)
    return A4CLoop(
        case=case,
        frames=frames,
        masks=masks,
        volumes_ml=volumes,
        shapes_cm=tuple(shapes),
        ed_frames=events.ed_frames,
        es_frames=events.es_frames,
        beats=events.beats,
    )
