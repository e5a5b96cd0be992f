"""The heart of one B-mode loop: phenotype, sector, pose and timing, and its exact truth.

The LV geometry, motion and method-of-disks volumes are the existing phantom's
(`anatomy.a4c_shapes`, `motion`, `cases`), so the truth (LV mask, volumes, EF, ED/ES frames) is
exact by the same construction. What is new: wider ranges (EF 10-80 %, heart rate 45-140 /min,
20-90 frames/s), phenotypes (dilated, hypertrophic, regional wall-motion abnormality, an
off-axis foreshortened cut), and the sector placed as a style family says.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ...disks import disks_volume_ml
from ..anatomy import A4CAnatomy, A4CShapes, Pose, a4c_shapes
from ..cases import N_DISKS, A4CCase, A4CLoop, _shortening, sample_anatomy, sample_levels
from ..geometry import PolarGrid, Sector
from ..loop_timing import loop_events, plan_loop
from ..motion import contraction, valve_opening
from ..render import fill_mask, sample_style
from .families import Family, uniform

EF_TARGET_PERCENT = (11.5, 78.5)  # beat-to-beat jitter keeps beats inside 10-80 %
HR_RANGE_BPM = (45, 140)
FPS_RANGE = (20.0, 90.0)
PHENOTYPES = ("normal", "dilated", "hypertrophic", "rwma", "foreshortened")
PHENOTYPE_P = (0.4, 0.15, 0.15, 0.2, 0.1)
RWMA_SEGMENTS = {  # (side, s_from, s_to) along the LV from apex (0) to base (1)
    "apical": ("both", 0.0, 0.35),
    "apical_lateral": ("lateral", 0.0, 0.55),
    "mid_septal": ("septal", 0.3, 0.75),
    "basal_lateral": ("lateral", 0.55, 1.0),
}


@dataclass(frozen=True)
class Rwma:
    """A segment that moves less: severity 1 is akinetic (stays where it is at ED)."""

    segment: str
    severity: float


@dataclass(frozen=True)
class HeartPlan:
    case: A4CCase
    phenotype: str
    rwma: Rwma | None


@dataclass(frozen=True)
class HeartFrame:
    """One instant: shapes in cm and what maps tissue back to its ED position (for speckle)."""

    shapes: A4CShapes
    pose: Pose
    long_frac: float
    radial_frac: float


def sector_for(rng: np.random.Generator, fam: Family, rows: int, cols: int, depth: float) -> Sector:
    """The family's fan in a rows x cols image: apex offset, zoom (apex above the image)."""
    half = float(np.deg2rad(uniform(rng, fam.half_angle_deg)))
    apex_row = uniform(rng, fam.apex_row_frac) * rows
    apex_col = (cols - 1) / 2.0 + uniform(rng, fam.apex_col_offset) * cols
    height = uniform(rng, fam.fan_height_frac) * rows
    room = min(apex_col, cols - 1 - apex_col) - 3.0
    height = float(np.floor(min(height, room / np.sin(half), rows - 2 - apex_row)))
    return Sector(
        rows=rows,
        cols=cols,
        depth_cm=float(depth),
        half_angle_rad=half,
        apex_row=float(apex_row),
        apex_col=float(apex_col),
        spacing_cm=float(depth) / height,
    )


def _phenotype_anatomy(rng: np.random.Generator, anat: A4CAnatomy, kind: str) -> A4CAnatomy:
    if kind == "dilated":
        return replace(
            anat,
            lv_radius_cm=anat.lv_radius_cm * uniform(rng, (1.12, 1.3)),
            lv_length_cm=anat.lv_length_cm * uniform(rng, (1.0, 1.1)),
            wall_septal_cm=anat.wall_septal_cm * 0.85,
            wall_lateral_cm=anat.wall_lateral_cm * 0.85,
        )
    if kind == "hypertrophic":
        k = uniform(rng, (1.4, 1.9))
        return replace(
            anat,
            lv_radius_cm=anat.lv_radius_cm * uniform(rng, (0.8, 0.95)),
            wall_septal_cm=anat.wall_septal_cm * k * uniform(rng, (1.0, 1.25)),
            wall_lateral_cm=anat.wall_lateral_cm * k,
            wall_apex_cm=anat.wall_apex_cm * k,
        )
    if kind == "foreshortened":  # the cut misses the true apex: short, round, thick-tipped LV
        return replace(
            anat,
            lv_length_cm=anat.lv_length_cm * uniform(rng, (0.78, 0.9)),
            wall_apex_cm=anat.wall_apex_cm * uniform(rng, (1.3, 1.8)),
            lv_apex_power=anat.lv_apex_power * 0.8,
        )
    return anat


def _fit(
    rng: np.random.Generator, fam: Family, rows: int, cols: int, ed: A4CShapes
) -> tuple[Pose, Sector] | None:
    """Pose and depth that keep the ED epicardium inside the fan and on the image."""
    apex_wall_cm = float(-ed.lv_epi[:, 0].min())  # thick apical walls need a deeper apex
    for _ in range(120):
        pose = Pose(
            apex_xy_cm=(
                float(rng.uniform(-0.6, 0.8)),
                apex_wall_cm + float(rng.uniform(1.0, 2.8)),
            ),
            angle_rad=float(np.deg2rad(12.0 + rng.uniform(-15.0, 15.0))),
        )
        epi = pose.apply(ed.lv_epi)
        need = float(epi[:, 1].max()) + 1.0
        lo, hi = fam.depth_cm
        if need > hi + 2.0:
            continue
        depth = float(rng.uniform(max(lo, need), max(hi, need + 0.5)))
        sector = sector_for(rng, fam, rows, cols, depth)
        px = sector.to_px(epi)
        on_image = (px[:, 1] >= 3).all() and (px[:, 0] >= 3).all() and (px[:, 0] < cols - 3).all()
        if on_image and sector.contains_cm(epi, margin_cm=0.4).all():
            return pose, sector
    return None


def sample_heart(
    rng: np.random.Generator,
    fam: Family,
    matrix: tuple[int, int],
    max_frames: int,
    min_frames: int = 0,
    integer_fps: bool = False,
) -> HeartPlan:
    """Draws a phenotype, a heart that fits the family's fan, and the loop's timing."""
    rows, cols = matrix
    ef = uniform(rng, EF_TARGET_PERCENT)
    kind = str(rng.choice(PHENOTYPES, p=PHENOTYPE_P))
    plan = plan_loop(
        rng,
        max_frames=max_frames,
        min_frames=min_frames,
        integer_fps=integer_fps,
        hr_range_bpm=HR_RANGE_BPM,
        fps_range=FPS_RANGE,
    )
    long_share = uniform(rng, (0.22, 0.32))
    jitter = np.clip(rng.normal(0.0, 1.0, plan.n_beats + 4), -1.0, 1.0) * 1.5
    shortening = [_shortening(float(e), long_share) for e in ef + jitter]
    fitted = None
    for _ in range(60):
        anat = _phenotype_anatomy(rng, sample_anatomy(rng, ef), kind)
        fitted = _fit(rng, fam, rows, cols, a4c_shapes(anat, 0.0, 0.0, 0.0, 0.0))
        if fitted is not None:
            break
    if fitted is None:
        raise RuntimeError(f"could not fit an LV in family {fam.name}'s fan")
    pose, sector = fitted
    # about 1.8 beams a degree (a phased array's 128-200 lines), a sample per display row
    n_theta = int(np.clip(round(np.rad2deg(2 * sector.half_angle_rad) * 1.8), 112, 200))
    n_r = int(np.clip(round(sector.height_px), 160, 360))
    grid = PolarGrid(
        n_r=n_r, n_theta=n_theta, depth_cm=sector.depth_cm, half_angle_rad=sector.half_angle_rad
    )
    amp = rng.uniform(-0.15, 0.15, 2)
    case = A4CCase(
        anatomy=anat,
        pose=pose,
        plan=plan,
        beat_long_frac=tuple(a for a, _ in shortening),
        beat_radial_frac=tuple(b for _, b in shortening),
        resp_amp_cm=(float(amp[0]), float(amp[1])),
        resp_period_s=uniform(rng, (3.0, 5.0)),
        resp_phase_rad=uniform(rng, (0.0, 2 * np.pi)),
        style=sample_style(rng),  # the classic renderer's settings; unused here, kept for truth
        levels=sample_levels(rng),
        sector=sector,
        grid=grid,
        ef_target_percent=ef,
    )
    rwma = None
    if kind == "rwma":
        seg = str(rng.choice(list(RWMA_SEGMENTS)))
        rwma = Rwma(segment=seg, severity=uniform(rng, (0.5, 1.0)))
    return HeartPlan(case=case, phenotype=kind, rwma=rwma)


def _segment_weights(n_points: int, rwma: Rwma) -> np.ndarray:
    """Per-point weight on an LV outline laid out as a4c_shapes does: lateral apex -> base,
    then septal base -> apex."""
    n_side = (n_points - 1) // 2
    s_lat = np.linspace(0.0, 1.0, n_side + 1) ** 1.5
    s = np.concatenate([s_lat, s_lat[::-1][:-1]])
    lateral = np.arange(n_points) <= n_side
    side, lo, hi = RWMA_SEGMENTS[rwma.segment]
    on_side = (
        np.ones(n_points, bool) if side == "both" else (lateral if side == "lateral" else ~lateral)
    )
    edge = 0.08
    w = np.clip((s - lo) / edge + 1.0, 0.0, 1.0) * np.clip((hi - s) / edge + 1.0, 0.0, 1.0)
    return np.where(on_side, w, 0.0) * rwma.severity


def heart_at(plan: HeartPlan, t_s: float) -> HeartFrame:
    """Like cases.shapes_at, plus the regional wall-motion abnormality."""
    case = plan.case
    timing = case.plan.timing
    k, ph = timing.beat_and_phase(np.array([t_s]))
    slot = int(np.clip(k[0] + 1, 0, len(case.beat_long_frac) - 1))
    c = float(contraction(ph, timing.es_phase)[0])
    o = float(valve_opening(ph, timing.es_phase)[0])
    a, b = case.beat_long_frac[slot] * c, case.beat_radial_frac[slot] * c
    heart = a4c_shapes(case.anatomy, a, b, c, o)
    if plan.rwma is not None:
        rest = a4c_shapes(case.anatomy, 0.0, 0.0, c, o)
        w = _segment_weights(len(heart.lv_endo), plan.rwma)[:, None]
        heart = replace(
            heart,
            lv_endo=heart.lv_endo + w * (rest.lv_endo - heart.lv_endo),
            lv_epi=heart.lv_epi + w * (rest.lv_epi - heart.lv_epi),
        )
    wr = 2 * np.pi * t_s / case.resp_period_s + case.resp_phase_rad
    ax, ay = case.pose.apex_xy_cm
    pose = Pose(
        (ax + case.resp_amp_cm[0] * np.sin(wr), ay + case.resp_amp_cm[1] * np.sin(wr)),
        case.pose.angle_rad,
    )
    return HeartFrame(heart.transformed(pose), pose, a, b)


def truth_loop(plan: HeartPlan) -> tuple[A4CLoop, list[HeartFrame]]:
    """Per-frame shapes, exact masks and volumes, ED/ES beat by beat (frames left blank for
    the scanner to fill)."""
    case = plan.case
    sector = case.sector
    times = case.plan.frame_times_s()
    n = case.plan.n_frames
    masks = np.zeros((n, sector.rows, sector.cols), bool)
    volumes = np.zeros(n)
    frames: list[HeartFrame] = []
    for f, t in enumerate(times):
        hf = heart_at(plan, float(t))
        frames.append(hf)
        s = hf.shapes
        volumes[f] = disks_volume_ml(s.lv_endo, s.lv_apex, s.mv_mid, N_DISKS)
        masks[f] = fill_mask((sector.rows, sector.cols), sector.to_px(s.lv_endo))
    events = loop_events(volumes, times, case.plan.timing)
    loop = A4CLoop(
        case=case,
        frames=np.zeros((n, sector.rows, sector.cols), np.uint8),
        masks=masks,
        volumes_ml=volumes,
        shapes_cm=tuple(hf.shapes for hf in frames),
        ed_frames=events.ed_frames,
        es_frames=events.es_frames,
        beats=events.beats,
    )
    return loop, frames
