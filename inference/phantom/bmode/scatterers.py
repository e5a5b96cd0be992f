"""Scatterer fields that move with the tissue and decorrelate slowly.

Each loop holds two fixed random textures of complex scatterer amplitudes (plus a uniform
channel that decides, per cell, whether a sparse tissue holds a scatterer there): one in the
heart's own frame at end-diastole, one in the lab frame for the chest wall and surroundings.
Every frame maps each beam sample back to where its tissue sits at rest (undoing pose,
respiration and the apex-anchored contraction) and reads the texture there, so speckle
follows the myocardium. A fresh AR(1) field mixed in makes it decorrelate slowly, and blood,
whose scatterers flow, uses mostly that fresh field.
"""

from __future__ import annotations

import cv2
import numpy as np

from ..anatomy import Pose
from ..geometry import PolarGrid
from .tissue import BLOOD_LABELS, N_LABELS, SURROUND, TissueTable

CELL_CM = 0.035  # texture cell: finer than any beam resolution cell
HEART_U_CM = (-5.0, 17.0)
HEART_V_CM = (-9.0, 9.0)
TISSUE_SHARE = 0.85  # of the speckle power that is locked to the tissue


def _texture(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    tex = np.empty((rows, cols, 3), np.float32)
    tex[..., :2] = rng.standard_normal((rows, cols, 2), dtype=np.float32) * np.float32(np.sqrt(0.5))
    tex[..., 2] = rng.random((rows, cols), dtype=np.float32)
    return tex


class ScattererField:
    """Per-frame complex scatterer amplitudes on the beam grid, (n_r, n_theta, 2) float32."""

    def __init__(
        self, grid: PolarGrid, tissues: TissueTable, memory: float, rng: np.random.Generator
    ) -> None:
        self.grid = grid
        self.memory = float(memory)
        r = grid.radii_cm()[:, None]
        th = grid.angles_rad()[None, :]
        self.x_cm = (r * np.sin(th)).astype(np.float32)
        self.y_cm = (r * np.cos(th)).astype(np.float32)
        nu = int((HEART_U_CM[1] - HEART_U_CM[0]) / CELL_CM)
        nv = int((HEART_V_CM[1] - HEART_V_CM[0]) / CELL_CM)
        self.heart_tex = _texture(rng, nu, nv)
        d = grid.depth_cm
        lab_tex = _texture(rng, int(d / CELL_CM) + 2, int(2 * d / CELL_CM) + 2)
        # the surroundings do not move: their scatterers on the beam grid are fixed per loop
        self.lab_iq = cv2.remap(
            lab_tex,
            ((self.x_cm + d) / CELL_CM).astype(np.float32),
            (self.y_cm / CELL_CM).astype(np.float32),
            cv2.INTER_NEAREST,
            borderMode=cv2.BORDER_WRAP,
        )
        echo = tissues.echo / np.sqrt(np.maximum(tissues.density, 1e-3))
        self.amp_lut = echo.astype(np.float32)
        self.density_lut = tissues.density.astype(np.float32)
        blood = np.zeros(N_LABELS, bool)
        blood[list(BLOOD_LABELS)] = True
        self.blood_lut = blood
        self._fresh: np.ndarray | None = None
        self.innovation: np.ndarray | None = None  # this frame's fresh white noise
        self._rng = rng

    def _heart_maps(self, pose: Pose, long_frac: float, radial_frac: float, length_cm: float):
        """Beam samples -> texture indices of where that tissue sits at end-diastole."""
        dx = self.x_cm - np.float32(pose.apex_xy_cm[0])
        dy = self.y_cm - np.float32(pose.apex_xy_cm[1])
        ca, sa = np.float32(np.cos(pose.angle_rad)), np.float32(np.sin(pose.angle_rad))
        u = dx * sa + dy * ca
        v = dx * ca - dy * sa
        base = np.float32(length_cm * (1.0 - long_frac))
        u0 = np.where(u <= base, u / np.float32(1.0 - long_frac), u + (length_cm - base))
        v0 = v / np.float32(1.0 - radial_frac)
        mu = (u0 - np.float32(HEART_U_CM[0])) / np.float32(CELL_CM)
        mv = (v0 - np.float32(HEART_V_CM[0])) / np.float32(CELL_CM)
        return mv.astype(np.float32), mu.astype(np.float32)

    def _fresh_step(self) -> np.ndarray:
        shape = (self.grid.n_r, self.grid.n_theta, 2)
        z = self._rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(0.5))
        self.innovation = z
        if self._fresh is None:
            self._fresh = z
        else:
            rho = np.float32(self.memory)
            self._fresh = rho * self._fresh + np.float32(np.sqrt(1.0 - rho * rho)) * z
        return self._fresh

    def frame(
        self,
        labels: np.ndarray,
        pose: Pose,
        long_frac: float,
        radial_frac: float,
        length_cm: float,
        surround_gain: np.ndarray,
    ) -> np.ndarray:
        """Complex scatterer amplitudes (I, Q channels) weighted by each tissue's echo (and,
        for the surroundings, by the loop's slowly varying surround_gain map)."""
        mx, my = self._heart_maps(pose, long_frac, radial_frac, length_cm)
        # nearest texel: a scatterer keeps its identity as the tissue moves
        tex = cv2.remap(self.heart_tex, mx, my, cv2.INTER_NEAREST, borderMode=cv2.BORDER_WRAP)
        surround = (labels == SURROUND).view(np.uint8)
        cv2.copyTo(self.lab_iq, surround, tex)
        fresh = self._fresh_step()
        amp = self.amp_lut[labels] * (tex[..., 2] < self.density_lut[labels])
        amp = np.where(surround, amp * surround_gain, amp)
        w_t, w_f = np.float32(np.sqrt(TISSUE_SHARE)), np.float32(np.sqrt(1.0 - TISSUE_SHARE))
        iq = tex[..., :2] * w_t
        iq += w_f * fresh
        cv2.copyTo(fresh, self.blood_lut[labels].view(np.uint8), iq)
        return iq * amp[..., None]
