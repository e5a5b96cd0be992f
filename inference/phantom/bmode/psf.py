"""The beam's point-spread function, applied in beam (polar) coordinates.

Axially the pulse is a fixed Gaussian envelope (the simulation is at baseband: I/Q, so the
carrier is demodulated away and the envelope is |I + jQ|). Laterally a focused beam is
narrowest at its focus and widens away from it like a Gaussian beam, w(r) = w_f *
sqrt(1 + ((r - r_f) / z_R)^2); since that width is an angle, the lateral resolution in cm
(r * w) coarsens with depth, which is why speckle grows down the sector on real scanners.
A depth-varying blur is done as a few fixed blurs blended row by row (exact at the levels,
linear between), which keeps it to a handful of separable convolutions per frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..geometry import PolarGrid

N_LEVELS = 4


def _gauss_kernel(sigma_px: float) -> np.ndarray:
    half = max(1, int(np.ceil(3.0 * sigma_px)))
    x = np.arange(-half, half + 1, dtype=np.float32)
    k = np.exp(-0.5 * (x / max(sigma_px, 1e-3)) ** 2)
    # energy-normalised: random scatterers keep their mean power whatever the beam width
    return (k / np.sqrt(np.sum(k * k))).astype(np.float32)


@dataclass(frozen=True)
class BeamPSF:
    axial_sigma_px: float  # along the beam, in radial samples
    lateral_sigma_beams: np.ndarray  # (n_r,) lateral sigma per depth, in beam spacings
    level_sigmas: tuple[float, ...]
    level_weights: np.ndarray  # (N_LEVELS, n_r, 1, 1) blend weights per depth


def make_psf(
    grid: PolarGrid, axial_px: float, lateral_deg: float, focus_frac: float, rayleigh_frac: float
) -> BeamPSF:
    r = grid.radii_cm()
    r_f = focus_frac * grid.depth_cm
    z_r = rayleigh_frac * grid.depth_cm
    width_rad = np.deg2rad(lateral_deg) * np.sqrt(1.0 + ((r - r_f) / z_r) ** 2)
    sig = width_rad / grid.dtheta_rad
    levels = np.geomspace(sig.min(), sig.max() * 1.0001, N_LEVELS)
    idx = np.clip(np.searchsorted(levels, sig) - 1, 0, N_LEVELS - 2)
    t = (sig - levels[idx]) / (levels[idx + 1] - levels[idx])
    w = np.zeros((N_LEVELS, len(r)), np.float32)
    w[idx, np.arange(len(r))] = 1.0 - t
    w[idx + 1, np.arange(len(r))] += t
    return BeamPSF(
        axial_sigma_px=float(axial_px),
        lateral_sigma_beams=sig.astype(np.float32),
        level_sigmas=tuple(float(s) for s in levels),
        level_weights=w[:, :, None, None],
    )


def apply_psf(iq: np.ndarray, psf: BeamPSF) -> np.ndarray:
    """(n_r, n_theta, 2) I/Q scatterers -> I/Q echo signal."""
    one = np.ones(1, np.float32)
    axial = cv2.sepFilter2D(
        iq, -1, one, _gauss_kernel(psf.axial_sigma_px), borderType=cv2.BORDER_REFLECT
    )
    out = np.zeros_like(iq)
    for k, s in enumerate(psf.level_sigmas):
        rows = psf.level_weights[k, :, 0, 0] > 0
        if not rows.any():
            continue
        lo, hi = np.flatnonzero(rows)[[0, -1]]
        band = axial[lo : hi + 1]
        blurred = cv2.sepFilter2D(band, -1, _gauss_kernel(s), one, borderType=cv2.BORDER_CONSTANT)
        out[lo : hi + 1] += psf.level_weights[k, lo : hi + 1] * blurred
    return out
