"""The artefacts real apical loops have, in beam space.

- lateral-wall dropout: the lateral wall runs almost along the beams, so it returns little
  specular echo; an extra loss over that wall's beams and depths makes it fade out;
- apical near-field clutter: stationary haze from the chest wall (reverberations, side lobes)
  lying over the apex, the reason apical borders are hard to trace;
- shadowing: a rib or lung edge blocks some beams beyond a depth;
- reverberation: the bright chest wall echoed again at two and three times its depth.
(Off-axis foreshortening is anatomical and lives in heart.py.) Each is drawn per loop with its
own probability so every combination occurs.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..anatomy import A4CShapes
from ..geometry import PolarGrid
from .families import uniform


@dataclass(frozen=True)
class Artefacts:
    gain: np.ndarray  # (n_r, n_theta) float32 multiplicative, dropout and shadows
    clutter_iq: np.ndarray  # (n_r, n_theta, 2) float32 added to the echo, stationary
    reverb_px: int  # chest-wall thickness in samples; 0: no reverberation
    reverb_gain: float
    names: tuple[str, ...]  # which artefacts this loop has, for the truth file


def _polar(grid: PolarGrid, xy_cm: np.ndarray) -> tuple[float, float]:
    return float(np.hypot(*xy_cm)), float(np.arctan2(xy_cm[0], xy_cm[1]))


def sample_artefacts(
    rng: np.random.Generator, grid: PolarGrid, ed: A4CShapes, chest_cm: float
) -> Artefacts:
    r = grid.radii_cm()[:, None].astype(np.float32)
    th = grid.angles_rad()[None, :].astype(np.float32)
    loss_db = np.zeros((grid.n_r, grid.n_theta), np.float32)
    names: list[str] = []
    if rng.random() < 0.6:
        n_side = (len(ed.lv_epi) - 1) // 2
        r0, t0 = _polar(grid, ed.lv_epi[int(0.55 * n_side)])
        dt = np.deg2rad(uniform(rng, (3.0, 7.0)))
        dr = uniform(rng, (1.5, 3.0))
        depth_db = uniform(rng, (6.0, 18.0))
        loss_db += depth_db * np.exp(-0.5 * (((th - t0) / dt) ** 2 + ((r - r0) / dr) ** 2))
        names.append("lateral_dropout")
    if rng.random() < 0.3:
        side = 1.0 if rng.random() < 0.5 else -1.0
        centre = side * grid.half_angle_rad * uniform(rng, (0.55, 0.9))
        half_w = np.deg2rad(uniform(rng, (1.5, 4.0)))
        start = uniform(rng, (1.0, 3.0))
        edge = 1.0 / (1.0 + np.exp(-(np.abs(th - centre) - half_w) / np.deg2rad(0.6)))
        loss_db += uniform(rng, (10.0, 25.0)) * (1.0 - edge) * (r > start)
        names.append("rib_shadow")
    gain = (10.0 ** (-loss_db / 20.0)).astype(np.float32)

    clutter = np.zeros((grid.n_r, grid.n_theta, 2), np.float32)
    if rng.random() < 0.7:
        z = rng.standard_normal((grid.n_r, grid.n_theta, 2), dtype=np.float32)
        z = cv2.GaussianBlur(z, (0, 0), sigmaX=2.0, sigmaY=3.0)
        z /= max(float(z.std()), 1e-6)
        reach = uniform(rng, (1.5, 4.0))
        level = uniform(rng, (0.08, 0.4))
        clutter = z * (level * np.exp(-r / reach))[..., None]
        names.append("near_field_clutter")
    reverb_px, reverb_gain = 0, 0.0
    if rng.random() < 0.4:
        reverb_px = max(2, round(chest_cm / grid.dr_cm))
        reverb_gain = uniform(rng, (0.15, 0.35))
        names.append("reverberation")
    return Artefacts(gain, clutter.astype(np.float32), reverb_px, reverb_gain, tuple(names))


def add_reverberation(iq: np.ndarray, art: Artefacts) -> np.ndarray:
    """Adds the chest-wall band again at 2x and 3x its depth, weaker each time."""
    if art.reverb_px <= 0:
        return iq
    n = art.reverb_px
    out = iq.copy()
    band = iq[:n]
    for k, g in ((2, art.reverb_gain), (3, art.reverb_gain**2)):
        lo = (k - 1) * n
        hi = min(iq.shape[0], lo + n)
        if lo < hi:
            out[lo:hi] += g * band[: hi - lo]
    return out
