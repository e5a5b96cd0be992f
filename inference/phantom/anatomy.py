"""Apical four-chamber anatomy as polygons, in a heart frame and then on the screen.

Heart frame: origin at the LV endocardial apex, u along the LV long axis towards the mitral
annulus (down the screen), v across it towards the LV lateral wall (viewer's right). Systole is
two scalings anchored at the apex, longitudinal (the base descends towards the apex) and radial
(the walls move in), because that keeps the method-of-disks volume an exact, monotone function
of the contraction state: ED is the largest LV and ES the smallest by construction.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np


def bullet_profile(s: np.ndarray, peak_frac: float, apex_power: float, end_ratio: float):
    """Relative half-width along the axis (0 at the apex, 1 at the widest, end_ratio at the
    base): a rounded cap that widens to a maximum, then tapers quadratically to the annulus."""
    s = np.clip(np.asarray(s, dtype=np.float64), 0.0, 1.0)
    rise = np.clip(1.0 - (1.0 - s / peak_frac) ** 2, 0.0, 1.0) ** apex_power
    fall = 1.0 - (1.0 - end_ratio) * ((s - peak_frac) / (1.0 - peak_frac)) ** 2
    return np.where(s <= peak_frac, rise, fall)


def clip_half_plane(poly: np.ndarray, axis: int, bound: float, keep_below: bool) -> np.ndarray:
    """Sutherland-Hodgman against one axis-aligned line: keeps coordinate <= (or >=) bound."""

    def inside(p: np.ndarray) -> bool:
        return bool(p[axis] <= bound) if keep_below else bool(p[axis] >= bound)

    out: list[np.ndarray] = []
    n = len(poly)
    for i in range(n):
        cur, nxt = poly[i], poly[(i + 1) % n]
        cin, nin = inside(cur), inside(nxt)
        if cin:
            out.append(cur)
        if cin != nin:
            t = (bound - cur[axis]) / (nxt[axis] - cur[axis])
            out.append(cur + t * (nxt - cur))
    return np.array(out) if out else np.zeros((0, 2))


@dataclass(frozen=True)
class A4CAnatomy:
    """End-diastolic dimensions of one heart (cm) and its shape parameters."""

    lv_length_cm: float
    lv_radius_cm: float
    lv_asymmetry: float  # > 0: lateral wall bulges more than the septum
    lv_peak_frac: float
    lv_apex_power: float
    lv_annulus_ratio: float
    wall_septal_cm: float
    wall_lateral_cm: float
    wall_apex_cm: float
    rv_apex_frac: float
    rv_width_cm: float
    rv_wall_cm: float
    rv_radial_ratio: float  # RV inward motion relative to the LV's
    tv_offset_cm: float  # tricuspid annulus sits this much nearer the apex than the mitral
    la_length_cm: float
    la_width_ratio: float
    ra_length_cm: float
    ra_width_ratio: float
    mv_anterior_cm: float
    mv_posterior_cm: float
    tv_leaflet_cm: float


@dataclass(frozen=True)
class Pose:
    """Where the heart frame sits in physical (x right, y down) coordinates, cm."""

    apex_xy_cm: tuple[float, float]
    angle_rad: float  # > 0 swings the base to the viewer's right

    def apply(self, uv: np.ndarray) -> np.ndarray:
        uv = np.asarray(uv, dtype=np.float64)
        ca, sa = np.cos(self.angle_rad), np.sin(self.angle_rad)
        u, v = uv[..., 0], uv[..., 1]
        out = np.empty_like(uv)
        out[..., 0] = self.apex_xy_cm[0] + v * ca + u * sa
        out[..., 1] = self.apex_xy_cm[1] - v * sa + u * ca
        return out


@dataclass(frozen=True)
class A4CShapes:
    """One instant of the heart. Arrays are (N, 2) points; leaflets and pericardium are open
    polylines, everything else closed polygons. Coordinates are whatever frame they were made
    in (heart frame from `a4c_shapes`, physical after `transformed`)."""

    lv_endo: np.ndarray
    lv_epi: np.ndarray
    rv_cavity: np.ndarray
    rv_wall: np.ndarray
    la_cavity: np.ndarray
    la_wall: np.ndarray
    ra_cavity: np.ndarray
    ra_wall: np.ndarray
    pericardium: np.ndarray
    mv_anterior: np.ndarray
    mv_posterior: np.ndarray
    tv_septal: np.ndarray
    tv_lateral: np.ndarray
    hinges: np.ndarray  # mitral septal, mitral lateral, tricuspid septal, tricuspid lateral
    lv_apex: np.ndarray  # (2,)
    mv_septal: np.ndarray  # (2,)
    mv_lateral: np.ndarray  # (2,)

    @property
    def mv_mid(self) -> np.ndarray:
        return 0.5 * (self.mv_septal + self.mv_lateral)

    def transformed(self, pose: Pose) -> A4CShapes:
        return replace(self, **{f.name: pose.apply(getattr(self, f.name)) for f in fields(self)})


def _offset(curve: np.ndarray, dist: np.ndarray, outward_sign: float) -> np.ndarray:
    """Moves each point of an open curve by dist along its normal; outward_sign picks the side
    (+1: left of the direction of travel in (u, v), which is outward for the lateral wall)."""
    tang = np.gradient(curve, axis=0)
    tang /= np.maximum(np.hypot(tang[:, 0], tang[:, 1]), 1e-12)[:, None]
    normal = outward_sign * np.stack([-tang[:, 1], tang[:, 0]], axis=1)
    return curve + normal * np.asarray(dist)[:, None]


def _ellipse_cap(
    u_cut: float, u_roof: float, v_mid: float, half_w: float, b: float, n: int = 48
) -> tuple[np.ndarray, float, float]:
    """Atrium: the part of an ellipse beyond the plane u = u_cut whose chord there is 2*half_w,
    reaching u_roof. Returns the outline from the lateral hinge round to the septal hinge, and
    the ellipse centre u and semi-axis along u (for the wall drawn around it)."""
    b = max(b, 1.05 * half_w)
    k = np.sqrt(1.0 - (half_w / b) ** 2)
    a = max(u_roof - u_cut, 0.5) / (1.0 + k)
    u_c = u_cut + k * a
    phi0 = np.arcsin(half_w / b)
    phi = np.linspace(phi0, 2 * np.pi - phi0, n)
    pts = np.stack([u_c - a * np.cos(phi), v_mid + b * np.sin(phi)], axis=1)
    return pts, u_c, a


def _ellipse_wall(u_cut: float, u_c: float, a: float, v_mid: float, b: float, n: int = 48):
    """The ellipse grown by the wall, cut a little before the valve plane so it merges with the
    ventricular base."""
    cos0 = np.clip((u_c - u_cut) / a, -1.0, 1.0)
    phi0 = np.arccos(cos0)
    phi = np.linspace(phi0, 2 * np.pi - phi0, n)
    return np.stack([u_c - a * np.cos(phi), v_mid + b * np.sin(phi)], axis=1)


def _leaflet(
    hinge: np.ndarray,
    length_cm: float,
    inward: np.ndarray,
    coapt: np.ndarray,
    opening: float,
) -> np.ndarray:
    """Three-point leaflet: closed it runs to the coaptation point and folds towards the apex;
    open it hangs towards the apex, slightly splayed."""
    apexward = np.array([-1.0, 0.0])
    to_c = coapt - hinge
    d_c = float(np.hypot(*to_c))
    seg = min(d_c, 0.95 * length_cm)
    p1_closed = hinge + to_c / max(d_c, 1e-9) * seg
    p2_closed = p1_closed + apexward * max(length_cm - seg, 0.15)

    def direction(deg: float) -> np.ndarray:
        th = np.deg2rad(deg)
        return np.cos(th) * inward + np.sin(th) * apexward

    p1_open = hinge + 0.55 * length_cm * direction(78.0)
    p2_open = p1_open + 0.45 * length_cm * direction(98.0)
    o = float(np.clip(opening, 0.0, 1.0))
    return np.stack(
        [hinge, (1 - o) * p1_closed + o * p1_open, (1 - o) * p2_closed + o * p2_open], axis=0
    )


def lv_half_widths(anat: A4CAnatomy, radial_frac: float) -> tuple[float, float]:
    r = anat.lv_radius_cm * (1.0 - radial_frac)
    return r * (1.0 + anat.lv_asymmetry), r * (1.0 - anat.lv_asymmetry)


def a4c_shapes(
    anat: A4CAnatomy,
    long_frac: float,
    radial_frac: float,
    contraction: float,
    av_opening: float,
    n_side: int = 48,
) -> A4CShapes:
    """The heart at one instant, in the heart frame.

    long_frac / radial_frac: current shortening of the LV long axis and half-widths (0 at ED).
    contraction: 0..1 systolic state, drives the atria and RV. av_opening: valve opening 0..1.
    """
    length = anat.lv_length_cm * (1.0 - long_frac)
    r_lat, r_sep = lv_half_widths(anat, radial_frac)
    thick = (1.0 / max(1.0 - radial_frac, 0.3)) ** 0.6
    t_sep, t_lat = anat.wall_septal_cm * thick, anat.wall_lateral_cm * thick
    t_apex = anat.wall_apex_cm * thick**0.5

    def g(s: np.ndarray) -> np.ndarray:
        return bullet_profile(s, anat.lv_peak_frac, anat.lv_apex_power, anat.lv_annulus_ratio)

    s = np.linspace(0.0, 1.0, n_side + 1) ** 1.5
    u = s * length
    lateral = np.stack([u, r_lat * g(s)], axis=1)
    septal = np.stack([u, -r_sep * g(s)], axis=1)
    lv_endo = np.concatenate([lateral, septal[::-1][:-1]], axis=0)
    mv_lat, mv_sep = lateral[-1].copy(), septal[-1].copy()

    # epicardium: the endocardium pushed out along its normals, thinner at the apex
    blend = np.clip(s / 0.35, 0.0, 1.0)
    blend = blend * blend * (3.0 - 2.0 * blend)
    epi_lat = _offset(lateral, t_apex + (t_lat - t_apex) * blend, outward_sign=1.0)
    epi_sep = _offset(septal, t_apex + (t_sep - t_apex) * blend, outward_sign=-1.0)
    lv_epi = np.concatenate([epi_lat, epi_sep[::-1][:-1]], axis=0)

    order = np.argsort(epi_sep[:, 0])
    sep_u, sep_v = epi_sep[order, 0], epi_sep[order, 1]

    def septum_rv_side(uu: np.ndarray) -> np.ndarray:
        return np.interp(uu, sep_u, sep_v)

    # right ventricle along the septum, its apex part-way down, tricuspid annulus more apical
    u_rva = anat.rv_apex_frac * length
    u_ta = length - anat.tv_offset_cm * length / anat.lv_length_cm
    rv_w = anat.rv_width_cm * (1.0 - min(0.75, anat.rv_radial_ratio * radial_frac))
    uu = np.linspace(u_rva, u_ta, n_side)
    sigma = (uu - u_rva) / (u_ta - u_rva)
    h = bullet_profile(sigma, 0.8, 0.6, 0.85)
    v_sept = septum_rv_side(uu)
    v_free = v_sept - rv_w * h
    rv_cavity = np.concatenate(
        [np.stack([uu, v_sept - 0.02], 1), np.stack([uu[::-1], v_free[::-1]], 1)], axis=0
    )
    u_cap = u_rva - 0.8 * anat.rv_wall_cm
    rv_outer_free = np.stack([uu, v_free - anat.rv_wall_cm], 1)
    uu_back = np.linspace(u_ta, u_cap, n_side)
    rv_wall = np.concatenate(
        [
            np.array([[u_cap, septum_rv_side(np.array([u_cap]))[0] - 0.3 * anat.rv_wall_cm]]),
            rv_outer_free,
            np.stack([uu_back, septum_rv_side(uu_back) + 0.2], 1),
        ],
        axis=0,
    )
    tv_sep = np.array([u_ta, v_sept[-1]])
    tv_lat = np.array([u_ta, v_free[-1]])

    # atria: ellipses beyond each valve plane, roofs fixed so they stretch when the base descends
    c = float(np.clip(contraction, 0.0, 1.0))
    la_half = 0.5 * (mv_lat[1] - mv_sep[1])
    la_mid = 0.5 * (mv_lat[1] + mv_sep[1])
    la_b = anat.lv_radius_cm * anat.lv_annulus_ratio * anat.la_width_ratio * (1.0 + 0.08 * c)
    la_roof = anat.lv_length_cm + anat.la_length_cm
    la_cav, la_uc, la_a = _ellipse_cap(length, la_roof, la_mid, la_half, la_b)
    la_b_eff = max(la_b, 1.05 * la_half)
    la_wall = _ellipse_wall(length - 0.15, la_uc, la_a + 0.25, la_mid, la_b_eff + 0.25)

    ra_half = 0.5 * (tv_sep[1] - tv_lat[1])
    ra_mid = 0.5 * (tv_sep[1] + tv_lat[1])
    ra_b = anat.rv_width_cm * 0.85 * 0.5 * anat.ra_width_ratio * (1.0 + 0.08 * c)
    ra_roof = anat.lv_length_cm - anat.tv_offset_cm + anat.ra_length_cm
    ra_cav, ra_uc, ra_a = _ellipse_cap(u_ta, ra_roof, ra_mid, ra_half, ra_b)
    ra_b_eff = max(ra_b, 1.05 * ra_half)
    ra_wall = _ellipse_wall(u_ta - 0.15, ra_uc, ra_a + 0.2, ra_mid, ra_b_eff + 0.2)

    # a thin interatrial septum between the two cavities
    v_ias = 0.5 * (mv_sep[1] + tv_sep[1])
    la_cav = clip_half_plane(la_cav, 1, v_ias + 0.16, keep_below=False)
    ra_cav = clip_half_plane(ra_cav, 1, v_ias - 0.16, keep_below=True)

    # pericardium: RV free wall up to its apex, over the LV apex and down the lateral wall
    gap = 0.14
    peri_rv = np.stack([uu[::-1], v_free[::-1] - anat.rv_wall_cm - gap], 1)
    peri_sep = _offset(epi_sep, np.full(len(epi_sep), gap), outward_sign=-1.0)
    peri_sep = peri_sep[epi_sep[:, 0] <= u_rva][::-1]
    peri_lat = _offset(epi_lat, np.full(len(epi_lat), gap), outward_sign=1.0)[1:]
    pericardium = np.concatenate([peri_rv, peri_sep, peri_lat], axis=0)

    # valves
    o = float(np.clip(av_opening, 0.0, 1.0))
    mv_c = np.array([length - 0.35, la_mid + 0.15])
    mv_ant = _leaflet(mv_sep, anat.mv_anterior_cm, np.array([0.0, 1.0]), mv_c, o)
    mv_post = _leaflet(mv_lat, anat.mv_posterior_cm, np.array([0.0, -1.0]), mv_c, o)
    tv_c = np.array([u_ta - 0.3, ra_mid])
    tv_s = _leaflet(tv_sep, anat.tv_leaflet_cm * 0.8, np.array([0.0, -1.0]), tv_c, o)
    tv_l = _leaflet(tv_lat, anat.tv_leaflet_cm, np.array([0.0, 1.0]), tv_c, o)

    return A4CShapes(
        lv_endo=lv_endo,
        lv_epi=lv_epi,
        rv_cavity=rv_cavity,
        rv_wall=rv_wall,
        la_cavity=la_cav,
        la_wall=la_wall,
        ra_cavity=ra_cav,
        ra_wall=ra_wall,
        pericardium=pericardium,
        mv_anterior=mv_ant,
        mv_posterior=mv_post,
        tv_septal=tv_s,
        tv_lateral=tv_l,
        hinges=np.stack([mv_sep, mv_lat, tv_sep, tv_lat], axis=0),
        lv_apex=np.zeros(2),
        mv_septal=mv_sep,
        mv_lateral=mv_lat,
    )
