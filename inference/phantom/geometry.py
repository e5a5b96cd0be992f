"""Scan geometry: where the fan sits in the image and how beam (polar) samples map to pixels.

Physical coordinates are in cm with the transducer (the fan's apex) at the origin, x to the
viewer's right and y down into the body, which is also how DICOM ultrasound regions describe a
sector with ReferencePixelX0/Y0 at the transducer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Sector:
    """A phased-array fan in a rows x cols image with isotropic pixels."""

    rows: int
    cols: int
    depth_cm: float
    half_angle_rad: float
    apex_row: float  # pixel-centre coordinates of the transducer (virtual apex)
    apex_col: float
    spacing_cm: float  # cm per pixel, same in x and y

    def to_px(self, xy_cm: np.ndarray) -> np.ndarray:
        """Physical (x, y) cm -> pixel (col, row), float."""
        xy = np.asarray(xy_cm, dtype=np.float64)
        out = np.empty_like(xy)
        out[..., 0] = self.apex_col + xy[..., 0] / self.spacing_cm
        out[..., 1] = self.apex_row + xy[..., 1] / self.spacing_cm
        return out

    def to_cm(self, colrow: np.ndarray) -> np.ndarray:
        """Pixel (col, row) -> physical (x, y) cm."""
        cr = np.asarray(colrow, dtype=np.float64)
        out = np.empty_like(cr)
        out[..., 0] = (cr[..., 0] - self.apex_col) * self.spacing_cm
        out[..., 1] = (cr[..., 1] - self.apex_row) * self.spacing_cm
        return out

    @property
    def height_px(self) -> float:
        return self.depth_cm / self.spacing_cm

    def bbox(self) -> tuple[int, int, int, int]:
        """(min_col, min_row, max_col, max_row), inclusive pixel indices the fan touches."""
        half_w = self.height_px * np.sin(min(self.half_angle_rad, np.pi / 2))
        min_col = max(0, int(np.floor(self.apex_col - half_w)))
        max_col = min(self.cols - 1, int(np.ceil(self.apex_col + half_w)))
        min_row = max(0, int(np.floor(self.apex_row)))
        max_row = min(self.rows - 1, int(np.ceil(self.apex_row + self.height_px)))
        return min_col, min_row, max_col, max_row

    def polar_of_pixels(self) -> tuple[np.ndarray, np.ndarray]:
        """Radius (cm) and beam angle (rad, + to the right) of every pixel centre."""
        rr, cc = np.mgrid[0 : self.rows, 0 : self.cols].astype(np.float64)
        x = (cc - self.apex_col) * self.spacing_cm
        y = (rr - self.apex_row) * self.spacing_cm
        return np.hypot(x, y), np.arctan2(x, y)

    def mask(self) -> np.ndarray:
        """Pixels inside the fan (the scanned area)."""
        r, th = self.polar_of_pixels()
        return (r <= self.depth_cm) & (np.abs(th) <= self.half_angle_rad)

    def contains_cm(self, xy_cm: np.ndarray, margin_cm: float = 0.0) -> np.ndarray:
        """Whether points lie inside the fan with margin_cm to its sides and bottom."""
        xy = np.asarray(xy_cm, dtype=np.float64)
        r = np.hypot(xy[..., 0], xy[..., 1])
        th = np.arctan2(xy[..., 0], xy[..., 1])
        # distance to a side edge is r*sin(half - |theta|)
        side = r * np.sin(self.half_angle_rad - np.abs(th))
        return (r <= self.depth_cm - margin_cm) & (side >= margin_cm) & (xy[..., 1] > 0)


def make_sector(
    rows: int,
    cols: int,
    depth_cm: float,
    half_angle_rad: float,
    top_px: int,
    bottom_px: int,
    side_margin_px: int = 4,
) -> Sector:
    """Largest fan that fits between top_px and rows - bottom_px, centred horizontally."""
    height = rows - top_px - bottom_px
    max_half_w = (cols - 1) / 2.0 - side_margin_px
    height = min(height, max_half_w / np.sin(min(half_angle_rad, np.pi / 2)))
    height = float(np.floor(height))
    return Sector(
        rows=rows,
        cols=cols,
        depth_cm=float(depth_cm),
        half_angle_rad=float(half_angle_rad),
        apex_row=float(top_px),
        apex_col=(cols - 1) / 2.0,
        spacing_cm=float(depth_cm) / height,
    )


@dataclass(frozen=True)
class PolarGrid:
    """Beam-space sampling: n_r samples along each of n_theta beams.

    Speckle and the point-spread function are applied here because a real scanner's
    resolution is fixed per beam (fine axially, coarse laterally), which makes speckle grow
    with depth after scan conversion, as on real images.
    """

    n_r: int
    n_theta: int
    depth_cm: float
    half_angle_rad: float

    @property
    def dr_cm(self) -> float:
        return self.depth_cm / self.n_r

    @property
    def dtheta_rad(self) -> float:
        return 2.0 * self.half_angle_rad / self.n_theta

    def radii_cm(self) -> np.ndarray:
        return (np.arange(self.n_r) + 0.5) * self.dr_cm

    def angles_rad(self) -> np.ndarray:
        return -self.half_angle_rad + (np.arange(self.n_theta) + 0.5) * self.dtheta_rad

    def to_grid(self, xy_cm: np.ndarray) -> np.ndarray:
        """Physical (x, y) -> fractional (beam index, sample index), i.e. image (x, y)."""
        xy = np.asarray(xy_cm, dtype=np.float64)
        r = np.hypot(xy[..., 0], xy[..., 1])
        th = np.arctan2(xy[..., 0], xy[..., 1])
        out = np.empty_like(xy)
        out[..., 0] = (th + self.half_angle_rad) / self.dtheta_rad - 0.5
        out[..., 1] = r / self.dr_cm - 0.5
        return out


def scan_conversion_maps(sector: Sector, grid: PolarGrid) -> tuple[np.ndarray, np.ndarray]:
    """cv2.remap maps taking a (n_r, n_theta) beam image to the sector's pixel grid."""
    r, th = sector.polar_of_pixels()
    map_x = (th + grid.half_angle_rad) / grid.dtheta_rad - 0.5
    map_y = r / grid.dr_cm - 0.5
    outside = (r > sector.depth_cm) | (np.abs(th) > sector.half_angle_rad)
    map_x[outside] = -10.0
    map_y[outside] = -10.0
    return map_x.astype(np.float32), map_y.astype(np.float32)
