"""Tissue labels painted in beam (polar) space, each with its own echogenicity and scatterer
density.

Why labels rather than grey levels: the scanner model needs to know what is where (which
scatterers move with the heart, which are sparse blood, which boundary is specular), and a
family's texture scales each tissue's properties, not a picture.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..anatomy import A4CShapes
from ..geometry import PolarGrid
from ..render import densify
from .families import uniform

SURROUND, MYOCARDIUM, SEPTUM, LV_BLOOD, RV_BLOOD, RV_WALL, ATRIAL_WALL, ATRIAL_BLOOD = range(8)
VALVE, PERICARDIUM = 8, 9
N_LABELS = 10
BLOOD_LABELS = (LV_BLOOD, RV_BLOOD, ATRIAL_BLOOD)
_SHIFT = 4


@dataclass(frozen=True)
class TissueTable:
    """Per label: linear echo amplitude (myocardium ~ 1) and scatterer density in (0, 1]
    (fraction of texture cells holding a scatterer; low density gives non-Rayleigh speckle)."""

    echo: np.ndarray  # (N_LABELS,) float32
    density: np.ndarray  # (N_LABELS,) float32


def sample_tissues(rng: np.random.Generator, density_scale: float) -> TissueTable:
    echo = np.zeros(N_LABELS, np.float32)
    dens = np.ones(N_LABELS, np.float32)
    echo[SURROUND] = uniform(rng, (0.25, 0.6))
    echo[MYOCARDIUM] = 1.0
    echo[SEPTUM] = uniform(rng, (0.9, 1.3))
    blood = uniform(rng, (0.008, 0.035))
    echo[[LV_BLOOD, RV_BLOOD, ATRIAL_BLOOD]] = blood
    echo[RV_WALL] = uniform(rng, (0.7, 1.0))
    echo[ATRIAL_WALL] = uniform(rng, (0.45, 0.8))
    echo[VALVE] = uniform(rng, (1.4, 2.4))
    echo[PERICARDIUM] = uniform(rng, (2.2, 4.0))
    dens[SURROUND] = uniform(rng, (0.5, 1.0))
    dens[[MYOCARDIUM, SEPTUM, RV_WALL]] = uniform(rng, (0.5, 0.9))
    dens[ATRIAL_WALL] = 0.6
    dens[[LV_BLOOD, RV_BLOOD, ATRIAL_BLOOD]] = uniform(rng, (0.03, 0.12))
    dens = np.clip(dens * density_scale, 0.02, 1.0).astype(np.float32)
    return TissueTable(echo=echo, density=dens)


def _septum(s: A4CShapes) -> np.ndarray:
    """The septal wall: the LV outline's septal half and the epicardium's, as one polygon."""
    n_side = (len(s.lv_endo) - 1) // 2
    endo_sep = s.lv_endo[n_side + 1 :]  # base -> apex
    epi_sep = s.lv_epi[n_side + 1 :]
    return np.concatenate([endo_sep, epi_sep[::-1]], axis=0)


class LabelPainter:
    """Draws the heart's polygons into an (n_r, n_theta) uint8 label image."""

    def __init__(self, grid: PolarGrid) -> None:
        self.grid = grid

    def _pts(self, points_cm: np.ndarray, closed: bool) -> np.ndarray:
        g = self.grid.to_grid(densify(points_cm, 0.15, closed))
        return np.round(g * (1 << _SHIFT)).astype(np.int32)

    def _thick(self, width_cm: float) -> int:
        return max(1, round(width_cm / self.grid.dr_cm))

    def paint(self, s: A4CShapes) -> np.ndarray:
        """Painting order matters: walls, then cavities cut out of them, valves on top."""
        img = np.zeros((self.grid.n_r, self.grid.n_theta), np.uint8)
        fills = (
            (s.la_wall, ATRIAL_WALL),
            (s.ra_wall, ATRIAL_WALL),
            (s.lv_epi, MYOCARDIUM),
            (s.rv_wall, RV_WALL),
            (_septum(s), SEPTUM),
        )
        for poly, label in fills:
            cv2.fillPoly(img, [self._pts(poly, True)], label, cv2.LINE_8, _SHIFT)
        cv2.polylines(
            img,
            [self._pts(s.pericardium, False)],
            False,
            PERICARDIUM,
            self._thick(0.2),
            cv2.LINE_8,
            _SHIFT,
        )
        for poly, label in (
            (s.la_cavity, ATRIAL_BLOOD),
            (s.ra_cavity, ATRIAL_BLOOD),
            (s.rv_cavity, RV_BLOOD),
            (s.lv_endo, LV_BLOOD),
        ):
            if len(poly):
                cv2.fillPoly(img, [self._pts(poly, True)], label, cv2.LINE_8, _SHIFT)
        for leaflet in (s.mv_anterior, s.mv_posterior, s.tv_septal, s.tv_lateral):
            cv2.polylines(
                img,
                [self._pts(leaflet, False)],
                False,
                VALVE,
                self._thick(0.09),
                cv2.LINE_8,
                _SHIFT,
            )
        for c in s.hinges:  # annulus: bright dots at the valve hinges
            g = np.round(self.grid.to_grid(c) * (1 << _SHIFT)).astype(int)
            cv2.circle(
                img,
                (int(g[0]), int(g[1])),
                self._thick(0.12) << _SHIFT,
                VALVE,
                -1,
                cv2.LINE_8,
                _SHIFT,
            )
        return img
