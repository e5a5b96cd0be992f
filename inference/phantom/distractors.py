"""Loops that are not a usable A4C cine, for view selection to reject: a parasternal long-axis
loop, a single still frame and a colour-Doppler A4C loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .anatomy import A4CShapes
from .cases import A4CLoop, Layout, sample_levels
from .geometry import PolarGrid, Sector
from .loop_timing import LoopPlan, plan_loop
from .motion import contraction, valve_opening
from .render import BeamRenderer, Paint, fill_mask, sample_style

# ---------------------------------------------------------------------------------------------
# parasternal long axis


@dataclass(frozen=True)
class PlaxHeart:
    """PLAX dimensions (cm) in an untilted frame: x to the viewer's right (towards the aorta),
    y depth; the LV apex lies off the left of the screen."""

    rv_top_cm: float
    rv_height_cm: float
    ivs_cm: float
    lv_diameter_cm: float
    pw_cm: float
    aorta_cm: float
    la_cm: float
    radial_frac: float
    tilt_rad: float
    shift_x_cm: float


def sample_plax(rng: np.random.Generator) -> PlaxHeart:
    return PlaxHeart(
        rv_top_cm=float(rng.uniform(1.3, 2.0)),
        rv_height_cm=float(rng.uniform(1.8, 2.8)),
        ivs_cm=float(rng.uniform(0.8, 1.2)),
        lv_diameter_cm=float(rng.uniform(4.2, 6.0)),
        pw_cm=float(rng.uniform(0.8, 1.1)),
        aorta_cm=float(rng.uniform(2.5, 3.3)),
        la_cm=float(rng.uniform(3.0, 4.2)),
        radial_frac=float(rng.uniform(0.15, 0.4)),
        tilt_rad=float(np.deg2rad(rng.uniform(-22.0, -4.0))),
        shift_x_cm=float(rng.uniform(-1.0, 1.0)),
    )


def _band(xs: np.ndarray, top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    return np.concatenate([np.stack([xs, top], 1), np.stack([xs[::-1], bottom[::-1]], 1)], 0)


def _ellipse(cx: float, cy: float, ax: float, ay: float, n: int = 40) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + ax * np.cos(t), cy + ay * np.sin(t)], 1)


def plax_paints(h: PlaxHeart, c: float, mv_open: float, levels) -> list[Paint]:
    m, blood = levels.myocardium, levels.blood
    thick = 1.0 / (1.0 - 0.6 * h.radial_frac * c)
    ivs, pw = h.ivs_cm * thick, h.pw_cm * thick
    rv_top = h.rv_top_cm
    rv_bot = rv_top + h.rv_height_cm * (1.0 - 0.2 * c)
    ivs_bot = rv_bot + ivs
    dia = h.lv_diameter_cm * (1.0 - h.radial_frac * c)
    x_mv = 1.0
    xs = np.linspace(-9.0, x_mv, 40)
    taper = np.clip(0.35 + 0.65 * (xs + 9.0) / 6.0, 0.35, 1.0)
    lv_bot = ivs_bot + dia * taper
    ao_top = rv_bot - 0.1
    ao_bot = ao_top + h.aorta_cm * (1.0 + 0.05 * c)
    la_top = ao_bot + 0.35
    la_h = h.la_cm * (1.0 + 0.1 * c)
    pw_bot = lv_bot + pw

    x_all = np.linspace(-9.0, 8.0, 60)
    paints = [
        # anterior RV wall and the whole ventricular mass as one myocardial band
        Paint(
            _band(x_all, np.full_like(x_all, rv_top - 0.45), np.full_like(x_all, rv_bot)), 0.8 * m
        ),
        Paint(_band(xs, np.full_like(xs, rv_bot), pw_bot), m),
        Paint(
            _band(np.linspace(x_mv - 0.8, 8.0, 30), np.full(30, ao_top), np.full(30, ao_bot)),
            0.9 * m,
        ),  # aortic root walls
        Paint(_ellipse(x_mv + 2.6, la_top + la_h / 2, 2.6, la_h / 2 + 0.25), 0.45 * m),
        Paint(_ellipse(x_mv + 3.0, la_top + la_h + 1.4, 1.0, 1.0), 0.5 * m),  # descending aorta
        Paint(
            np.array([[x_mv - 2, pw_bot[-1] + 0.15], [x_mv + 6, la_top + la_h + 0.35]]),
            levels.pericardium,
            "line",
            0.2,
        ),
        Paint(np.stack([xs, pw_bot + 0.15], 1), levels.pericardium, "line", 0.2),
        Paint(
            _band(np.linspace(-9, 8, 40), np.full(40, rv_top), np.full(40, rv_bot - 0.25)), blood
        ),  # RV / RVOT
        Paint(
            _band(
                np.linspace(x_mv - 0.6, 8.0, 30),
                np.full(30, ao_top + 0.3),
                np.full(30, ao_bot - 0.3),
            ),
            blood,
        ),  # aortic root lumen
        Paint(_band(xs, np.full_like(xs, ivs_bot), lv_bot), blood),  # LV
        Paint(_ellipse(x_mv + 2.6, la_top + la_h / 2, 2.4, la_h / 2), blood),  # LA
        Paint(_ellipse(x_mv + 3.0, la_top + la_h + 1.4, 0.75, 0.75), blood),
    ]
    # mitral leaflets from the aortic root (anterior) and the posterior annulus, opening into
    # the LV towards the apex (left)
    o = float(np.clip(mv_open, 0.0, 1.0))
    aml_hinge = np.array([x_mv, ao_bot])
    pml_hinge = np.array([x_mv + 0.3, lv_bot[-1]])
    coapt = 0.5 * (aml_hinge + pml_hinge) + np.array([-0.3, 0.0])
    aml_open = aml_hinge + np.array([-2.2, 0.5])
    pml_open = pml_hinge + np.array([-1.3, -0.4])
    paints.append(
        Paint(np.stack([aml_hinge, (1 - o) * coapt + o * aml_open]), levels.valve, "line", 0.09)
    )
    paints.append(
        Paint(np.stack([pml_hinge, (1 - o) * coapt + o * pml_open]), levels.valve, "line", 0.09)
    )
    # aortic cusps: open (against the walls) in systole, closed in the middle in diastole
    a = float(np.clip(2.5 * c, 0.0, 1.0))
    ao_mid = 0.5 * (ao_top + ao_bot)
    x_av = x_mv + 0.6
    for y_wall in (ao_top + 0.3, ao_bot - 0.3):
        tip = np.array([x_av + 0.9 * a, (1 - a) * ao_mid + a * y_wall])
        paints.append(Paint(np.stack([[x_av, y_wall], tip]), levels.valve, "line", 0.07))
    return paints


def _tilted(paints: list[Paint], h: PlaxHeart, pivot_y: float) -> list[Paint]:
    ca, sa = np.cos(h.tilt_rad), np.sin(h.tilt_rad)
    out = []
    for p in paints:
        pts = np.asarray(p.points_cm, dtype=np.float64)
        x, y = pts[:, 0], pts[:, 1] - pivot_y
        rot = np.stack([x * ca - y * sa + h.shift_x_cm, x * sa + y * ca + pivot_y], 1)
        out.append(Paint(rot, p.level, p.kind, p.width_cm))
    return out


@dataclass(frozen=True)
class PlainLoop:
    """A rendered non-A4C loop: grey fan frames plus what its header needs."""

    frames: np.ndarray  # (n, rows, cols) uint8
    sector: Sector
    plan: LoopPlan


def simulate_plax(rng: np.random.Generator, layout: Layout, max_frames: int) -> PlainLoop:
    heart = sample_plax(rng)
    plan = plan_loop(rng, max_frames=max_frames)
    depth = float(rng.uniform(14.0, 20.0))
    half = float(np.deg2rad(rng.uniform(38.0, 45.0)))
    sector = layout.sector(depth, half)
    grid = PolarGrid(round(sector.height_px), layout.n_theta, depth, half)
    renderer = BeamRenderer(sector, grid, sample_style(rng), rng)
    levels = sample_levels(rng)
    timing = plan.timing
    frames = np.zeros((plan.n_frames, sector.rows, sector.cols), np.uint8)
    for f, t in enumerate(plan.frame_times_s()):
        _, ph = timing.beat_and_phase(np.array([t]))
        c = float(contraction(ph, timing.es_phase)[0])
        o = float(valve_opening(ph, timing.es_phase)[0])
        paints = _tilted(plax_paints(heart, c, o, levels), heart, pivot_y=6.0)
        frames[f] = renderer.frame(paints, rng)
    return PlainLoop(frames=frames, sector=sector, plan=plan)


# ---------------------------------------------------------------------------------------------
# colour Doppler over an A4C loop

NYQUIST_CM_S = 60.0


@dataclass(frozen=True)
class ColourBox:
    """The colour-flow ROI: an annular sector of the fan."""

    theta_min_rad: float
    theta_max_rad: float
    r_min_cm: float
    r_max_cm: float

    def mask(self, sector: Sector) -> np.ndarray:
        r, th = sector.polar_of_pixels()
        return (
            (r >= self.r_min_cm)
            & (r <= self.r_max_cm)
            & (th >= self.theta_min_rad)
            & (th <= self.theta_max_rad)
        )

    def bbox_px(self, sector: Sector) -> tuple[int, int, int, int]:
        rows, cols = np.nonzero(self.mask(sector))
        return int(cols.min()), int(rows.min()), int(cols.max()), int(rows.max())


def colour_box_for(loop: A4CLoop, rng: np.random.Generator) -> ColourBox:
    s0 = loop.shapes_cm[loop.ed_frames[0]]
    mid, apex = s0.mv_mid, s0.lv_apex
    th_mid = float(np.arctan2(mid[0], mid[1]))
    half = loop.case.sector.half_angle_rad
    width = float(np.deg2rad(rng.uniform(11.0, 16.0)))
    r_mid = float(np.hypot(*mid))
    lo = max(float(np.hypot(*apex)) + 1.0, r_mid - 4.5)
    return ColourBox(
        theta_min_rad=max(-half + 0.02, th_mid - width),
        theta_max_rad=min(half - 0.02, th_mid + width),
        r_min_cm=lo,
        r_max_cm=min(loop.case.sector.depth_cm - 0.3, r_mid + 2.5),
    )


def _colour_map(x: np.ndarray) -> np.ndarray:
    """Velocity / Nyquist in [-1, 1] -> RGB: red to yellow towards the probe, blue to cyan away."""
    a = np.abs(x)
    main = np.clip(0.35 + 1.1 * a, 0.0, 1.0) * 255
    hi = np.clip((a - 0.55) * 2.0, 0.0, 1.0) * 230
    rgb = np.zeros((*x.shape, 3), np.float32)
    pos = x > 0
    rgb[..., 0] = np.where(pos, main, 0)
    rgb[..., 2] = np.where(pos, 0, main)
    rgb[..., 1] = hi
    return rgb.astype(np.uint8)


def colourise(
    rgb_frames: np.ndarray, loop: A4CLoop, box: ColourBox, rng: np.random.Generator
) -> np.ndarray:
    """Paints mitral inflow (diastole, towards the probe) and weak systolic outflow (away) over
    blood pixels in the box, with aliasing above the Nyquist limit and blotchy texture."""
    sector = loop.case.sector
    bmask = box.mask(sector)
    c0, r0, c1, r1 = box.bbox_px(sector)
    sub = (slice(r0, r1 + 1), slice(c0, c1 + 1))
    rr, cc = np.mgrid[r0 : r1 + 1, c0 : c1 + 1]
    xy = sector.to_cm(np.stack([cc, rr], -1).astype(np.float64))
    beam = xy / np.maximum(np.hypot(xy[..., 0], xy[..., 1]), 1e-6)[..., None]
    timing = loop.case.plan.timing
    out = rgb_frames.copy()
    outline = bmask ^ cv2.erode(bmask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    peak = float(rng.uniform(70.0, 110.0))
    for f, s in enumerate(loop.shapes_cm):
        t = f * loop.case.plan.frame_time_ms / 1000.0
        _, ph = timing.beat_and_phase(np.array([t]))
        c = float(contraction(ph, timing.es_phase)[0])
        o = float(valve_opening(ph, timing.es_phase)[0])
        blood = _blood_mask(s, sector)[sub] & bmask[sub]
        axis = s.lv_apex - s.mv_mid
        length = float(np.hypot(*axis))
        axis /= length
        rel = xy - s.mv_mid
        along = rel @ axis
        perp = np.abs(rel @ np.array([-axis[1], axis[0]]))
        width = 0.45 * float(np.hypot(*(s.mv_lateral - s.mv_septal)))
        core = np.exp(-0.5 * (perp / width) ** 2)
        reach = np.where(along >= 0, np.exp(-along / (0.45 * length)), np.exp(along / 1.2))
        systolic = 1.0 if ph[0] <= timing.es_phase else 0.0
        speed = peak * (o * core * reach - 0.25 * systolic * np.sin(np.pi * c) * core)
        noise = cv2.GaussianBlur(rng.standard_normal(speed.shape).astype(np.float32), (0, 0), 2.0)
        speed = speed * (1.0 + 0.5 * noise / max(float(noise.std()), 1e-6))
        flow = speed[..., None] * axis
        v = -(flow * beam).sum(-1)  # towards the probe is positive
        v = (v + NYQUIST_CM_S) % (2 * NYQUIST_CM_S) - NYQUIST_CM_S
        x = v / NYQUIST_CM_S
        show = blood & (np.abs(x) > 0.1)
        frame_sub = out[f][sub]
        frame_sub[show] = _colour_map(x[show])
        out[f][outline] = (150, 150, 150)
    return out


def _blood_mask(s: A4CShapes, sector: Sector) -> np.ndarray:
    m = fill_mask((sector.rows, sector.cols), sector.to_px(s.lv_endo))
    if len(s.la_cavity):
        m |= fill_mask((sector.rows, sector.cols), sector.to_px(s.la_cavity))
    return m


def colour_bar(img: np.ndarray, x: int, y: int, height: int) -> None:
    """Velocity scale at the screen edge (outside the fan), with its Nyquist labels."""
    vals = np.linspace(1.0, -1.0, height)
    bar = _colour_map(vals)[:, None, :].repeat(10, axis=1)
    img[y : y + height, x : x + 10] = bar
    scale = 0.35 * img.shape[1] / 800
    for txt, yy in ((f"+{NYQUIST_CM_S:.0f}", y - 4), (f"-{NYQUIST_CM_S:.0f}", y + height + 12)):
        (w, _), _ = cv2.getTextSize(txt, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        cv2.putText(
            img,
            txt,
            (x + 10 - w, yy),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            (225, 225, 225),
            1,
            cv2.LINE_AA,
        )
