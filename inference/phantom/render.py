"""B-mode image formation: reflectivity painted in beam space, speckle, attenuation, log
compression, scan conversion.

Speckle is a complex Gaussian field smoothed with the beam's (anisotropic) point-spread
function whose envelope is Rayleigh distributed, which is what fully developed speckle is; it
evolves frame to frame as an AR(1) process so loops shimmer like real ones without flicker.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .geometry import PolarGrid, Sector, scan_conversion_maps

_SHIFT = 4  # fixed-point bits for cv2 drawing (1/16 pixel)


@dataclass(frozen=True)
class Paint:
    """One structure to paint: a filled polygon, a polyline or a dot, in physical cm."""

    points_cm: np.ndarray
    level: float  # linear echo amplitude; myocardium ~ 1
    kind: str = "fill"  # "fill" | "line" | "dot"
    width_cm: float = 0.1


@dataclass(frozen=True)
class EchoStyle:
    """Machine settings and tissue backdrop for one loop."""

    gain_db: float  # display level of the brightest echoes
    dynamic_range_db: float
    attenuation_db_per_cm: float  # net of TGC
    background_level: float  # tissue outside the heart
    near_field_level: float  # chest wall in the first centimetre
    haze_level: float  # near-field clutter over the apex
    psf_axial_px: float
    psf_lateral_px: float
    speckle_axial_px: float
    speckle_lateral_px: float
    speckle_memory: float  # frame-to-frame correlation of the speckle
    gamma: float


def sample_style(rng: np.random.Generator) -> EchoStyle:
    return EchoStyle(
        gain_db=float(rng.uniform(2.0, 8.0)),
        dynamic_range_db=float(rng.uniform(45.0, 58.0)),
        attenuation_db_per_cm=float(rng.uniform(0.3, 0.8)),
        background_level=float(rng.uniform(0.03, 0.08)),
        near_field_level=float(rng.uniform(0.12, 0.3)),
        haze_level=float(rng.uniform(0.0, 0.02)),
        psf_axial_px=float(rng.uniform(0.7, 1.1)),
        psf_lateral_px=float(rng.uniform(0.8, 1.4)),
        speckle_axial_px=float(rng.uniform(0.7, 1.1)),
        speckle_lateral_px=float(rng.uniform(0.9, 1.5)),
        speckle_memory=float(rng.uniform(0.55, 0.8)),
        gamma=float(rng.uniform(0.9, 1.15)),
    )


def densify(points: np.ndarray, max_step_cm: float, closed: bool) -> np.ndarray:
    """Adds points along long edges: straight edges in physical space are curves in beam space,
    so each must be short before it is drawn there."""
    pts = np.asarray(points, dtype=np.float64)
    if len(pts) < 2:
        return pts
    nxt = np.roll(pts, -1, axis=0) if closed else pts[1:]
    cur = pts if closed else pts[:-1]
    seg = np.hypot(*(nxt - cur).T)
    n_sub = np.maximum(1, np.ceil(seg / max_step_cm).astype(int))
    idx = np.repeat(np.arange(len(cur)), n_sub)
    starts = np.repeat(np.cumsum(n_sub) - n_sub, n_sub)
    t = (np.arange(len(idx)) - starts) / n_sub[idx]
    out = cur[idx] + t[:, None] * (nxt - cur)[idx]
    if not closed:
        out = np.concatenate([out, pts[-1:]], axis=0)
    return out


class BeamRenderer:
    """Renders a sequence of frames of one loop; holds the per-loop fixed fields."""

    def __init__(
        self, sector: Sector, grid: PolarGrid, style: EchoStyle, rng: np.random.Generator
    ) -> None:
        self.sector = sector
        self.grid = grid
        self.style = style
        self.map_x, self.map_y = scan_conversion_maps(sector, grid)
        self.sector_mask = sector.mask()
        r = grid.radii_cm()[:, None]
        th = grid.angles_rad()[None, :]
        shape = (grid.n_r, grid.n_theta)

        # tissue backdrop: low-frequency texture, bright chest wall near the probe
        tex = rng.standard_normal(shape, dtype=np.float32)
        tex = cv2.GaussianBlur(tex, (0, 0), sigmaX=grid.n_theta / 14, sigmaY=grid.n_r / 14)
        tex /= max(float(tex.std()), 1e-6)
        chest_cm = rng.uniform(0.8, 1.4)
        base = style.background_level * np.exp(0.8 * tex)
        base = np.where(r < chest_cm, style.near_field_level, base)
        self.background = base.astype(np.float32)
        self.haze = (style.haze_level * np.exp(-r / 2.0) * np.ones_like(th)).astype(np.float32)
        att_db = -style.attenuation_db_per_cm * r - 4.0 * (np.abs(th) / grid.half_angle_rad) ** 4
        self.attenuation = (10.0 ** (att_db / 20.0) * np.ones_like(th)).astype(np.float32)
        self._speckle: tuple[np.ndarray, np.ndarray] | None = None
        self._norm = 1.0
        self._noise_floor = 10.0 ** ((style.gain_db - style.dynamic_range_db - 3.0) / 20.0)

    def _speckle_step(self, rng: np.random.Generator) -> np.ndarray:
        st, shape = self.style, (self.grid.n_r, self.grid.n_theta)

        def field() -> np.ndarray:
            z = rng.standard_normal(shape, dtype=np.float32)
            return cv2.GaussianBlur(
                z, (0, 0), sigmaX=st.speckle_lateral_px, sigmaY=st.speckle_axial_px
            )

        re, im = field(), field()
        if self._speckle is None:
            self._norm = float(np.sqrt(np.mean(re**2 + im**2)))
        else:
            rho = st.speckle_memory
            w = np.sqrt(1.0 - rho * rho)
            re = rho * self._speckle[0] + w * re
            im = rho * self._speckle[1] + w * im
        self._speckle = (re, im)
        return np.sqrt(re * re + im * im) / self._norm

    def to_grid_int(self, points_cm: np.ndarray, closed: bool) -> np.ndarray:
        pts = densify(points_cm, 0.15, closed)
        g = self.grid.to_grid(pts)
        return np.round(g * (1 << _SHIFT)).astype(np.int32)

    def reflectivity(self, paints: list[Paint]) -> np.ndarray:
        """Beam-space echo amplitude map before speckle (painted in order, later on top)."""
        img = self.background.copy()
        for p in paints:
            if len(p.points_cm) == 0:
                continue
            thick = max(1, round(p.width_cm / self.grid.dr_cm))
            if p.kind == "fill":
                pts = self.to_grid_int(p.points_cm, closed=True)
                cv2.fillPoly(img, [pts], float(p.level), lineType=cv2.LINE_8, shift=_SHIFT)
            elif p.kind == "line":
                pts = self.to_grid_int(p.points_cm, closed=False)
                cv2.polylines(img, [pts], False, float(p.level), thick, cv2.LINE_8, _SHIFT)
            elif p.kind == "dot":
                for c in np.atleast_2d(p.points_cm):
                    g = np.round(self.grid.to_grid(c) * (1 << _SHIFT)).astype(int)
                    cv2.circle(
                        img,
                        (int(g[0]), int(g[1])),
                        int(thick) << _SHIFT,
                        float(p.level),
                        -1,
                        cv2.LINE_8,
                        _SHIFT,
                    )
            else:
                raise ValueError(f"unknown paint kind {p.kind!r}")
        return img

    def beam_image(self, paints: list[Paint], rng: np.random.Generator) -> np.ndarray:
        """8-bit log-compressed beam-space image of one frame."""
        st = self.style
        refl = self.reflectivity(paints)
        refl = cv2.GaussianBlur(refl, (0, 0), sigmaX=st.psf_lateral_px, sigmaY=st.psf_axial_px)
        amp = (refl + self.haze) * self._speckle_step(rng) * self.attenuation
        amp += self._noise_floor
        db = 20.0 * np.log10(amp)
        x = (db - (st.gain_db - st.dynamic_range_db)) / st.dynamic_range_db
        x = np.clip(x, 0.0, 1.0) ** st.gamma
        return (x * 255.0 + 0.5).astype(np.uint8)

    def frame(self, paints: list[Paint], rng: np.random.Generator) -> np.ndarray:
        """Scan-converted grey frame (rows x cols), zero outside the fan."""
        beam = self.beam_image(paints, rng)
        img = cv2.remap(
            beam,
            self.map_x,
            self.map_y,
            cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0,
        )
        img[~self.sector_mask] = 0
        return img


def fill_mask(shape: tuple[int, int], polygon_px: np.ndarray) -> np.ndarray:
    """Boolean mask of a polygon given in (col, row) pixel coordinates (pixel centres)."""
    m = np.zeros(shape, dtype=np.uint8)
    pts = np.round(np.asarray(polygon_px) * (1 << _SHIFT)).astype(np.int32)
    cv2.fillPoly(m, [pts], 1, lineType=cv2.LINE_8, shift=_SHIFT)
    return m.astype(bool)
