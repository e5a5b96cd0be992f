"""LV geometry from a mask alone: outline, apex, mitral annulus, method-of-disks volume.

A segmentation network gives a mask, not landmarks, and the volume depends on where the long
axis runs, so the landmarks are derived from the outline in a fixed, documented way:

* orientation: the mask's principal axis, pointed away from the transducer (the fan's apex),
  because in an apical view the LV apex is near the transducer and the base away from it;
* mitral annulus: the two basal corners, i.e. the outline points furthest out along directions
  30 degrees either side of that axis. The LV narrows towards a flat base, so each such support
  direction touches the outline exactly at a corner even if the axis estimate is off by 25 deg;
* apex: the outline point furthest from the annulus midpoint;
* the axis is then re-estimated from apex to annulus midpoint and the corners found again, until
  nothing moves.

Volumes use ``inference.disks`` (20 disks, apex to annulus midpoint), the definition the phantom
truth uses. Geometry runs in centimetres when the spacing is known (so anisotropic pixels are
handled), else in pixels.
"""

from __future__ import annotations

import cv2
import numpy as np

from inference.disks import DEFAULT_N_DISKS, disks_volume_ml
from inference.errors import InferenceError
from inference.types import Landmarks

CONTOUR_UPSAMPLE = 4  # outline traced on a 4x finer grid: 1/8 px from the true edge, not 1/2
CORNER_ANGLE_RAD = np.deg2rad(30.0)
MAX_AXIS_ITERATIONS = 5
FRAGMENT_FRACTION = 0.05  # a second component this large (of the total) fragments the mask


class GeometryError(InferenceError, ValueError):
    """The mask has no usable LV outline (empty, or too small to have an axis)."""


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a boolean mask (empty stays empty)."""
    m = np.asarray(mask, dtype=np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    if count <= 1:
        return np.zeros(m.shape, bool)
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == best


def is_fragmented(mask: np.ndarray) -> bool:
    """Whether the mask has a second component holding >= FRAGMENT_FRACTION of its area."""
    m = np.asarray(mask, dtype=np.uint8)
    count, _, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    if count <= 2:
        return False
    areas = np.sort(stats[1:, cv2.CC_STAT_AREA])[::-1]
    return bool(areas[1] >= FRAGMENT_FRACTION * areas.sum())


def lv_outline_px(mask: np.ndarray) -> np.ndarray:
    """Outline of the mask's largest component, (N, 2) source (column, row), sub-pixel.

    Traced on an upsampled copy of the mask's bounding box so the outline follows the pixels'
    edges rather than their centres (which would shave half a pixel off every diameter).
    """
    m = largest_component(mask)
    ys, xs = np.nonzero(m)
    if len(xs) < 3:
        raise GeometryError("the LV mask is empty")
    x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
    box = m[y0 : y1 + 1, x0 : x1 + 1].astype(np.uint8)
    k = CONTOUR_UPSAMPLE
    big = np.pad(np.repeat(np.repeat(box, k, axis=0), k, axis=1), 1)
    contours, _ = cv2.findContours(big, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        raise GeometryError("no outline found")
    c = max(contours, key=cv2.contourArea).reshape(-1, 2).astype(np.float64)
    if len(c) < 3:
        raise GeometryError("the LV outline is degenerate")
    # fine-grid pixel centre j (after the 1-pixel pad) sits at (j - 1 + 0.5) / k - 0.5
    return np.stack([x0 + (c[:, 0] - 0.5) / k - 0.5, y0 + (c[:, 1] - 0.5) / k - 0.5], axis=1)


def _scale(spacing_cm: tuple[float, float] | None) -> np.ndarray:
    """(x, y) multipliers from pixels to the working units (cm, or pixels)."""
    if spacing_cm is None:
        return np.ones(2)
    return np.array([float(spacing_cm[1]), float(spacing_cm[0])])


def find_landmarks(
    outline_px: np.ndarray,
    transducer_px: tuple[float, float] | None,
    spacing_cm: tuple[float, float] | None = None,
) -> Landmarks:
    """Apex and basal corners of an LV outline; see the module docstring for the method.

    Without a transducer position the base is assumed to be the lower end (A4C display).
    """
    s = _scale(spacing_cm)
    q = np.asarray(outline_px, dtype=np.float64) * s
    if q.ndim != 2 or q.shape[1] != 2 or len(q) < 3:
        raise GeometryError(f"an outline needs (N >= 3, 2) points, got {q.shape}")
    centre, axis = _principal_axis(q)
    toward_base = (
        centre - np.asarray(transducer_px, np.float64) * s
        if transducer_px is not None
        else np.array([0.0, 1.0])
    )
    if axis @ toward_base < 0:
        axis = -axis
    apex = left = right = None
    for _ in range(MAX_AXIS_ITERATIONS):
        left_new, right_new = _basal_corners(q, centre, axis)
        mid = 0.5 * (q[left_new] + q[right_new])
        apex_new = int(np.argmax(np.hypot(*(q - mid).T)))
        if (apex_new, left_new, right_new) == (apex, left, right):
            break
        apex, left, right = apex_new, left_new, right_new
        direction = mid - q[apex]
        norm = float(np.hypot(*direction))
        if norm == 0:
            raise GeometryError("apex and annulus coincide")
        axis = direction / norm
        centre = 0.5 * (mid + q[apex])
    if apex is None or left is None or right is None:  # pragma: no cover - loop runs once
        raise GeometryError("no landmarks found")
    mid = 0.5 * (q[left] + q[right])
    p = np.asarray(outline_px, dtype=np.float64)
    return Landmarks(
        apex_px=(float(p[apex, 0]), float(p[apex, 1])),
        annulus_left_px=(float(p[left, 0]), float(p[left, 1])),
        annulus_right_px=(float(p[right, 0]), float(p[right, 1])),
        long_axis_cm=None if spacing_cm is None else float(np.hypot(*(mid - q[apex]))),
    )


def _principal_axis(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centroid and major axis of the polygon (area moments, not the outline's points)."""
    m = cv2.moments(q.astype(np.float32).reshape(-1, 1, 2))
    if m["m00"] == 0:
        raise GeometryError("the LV outline encloses no area")
    centre = np.array([m["m10"] / m["m00"], m["m01"] / m["m00"]])
    cov = np.array([[m["mu20"], m["mu11"]], [m["mu11"], m["mu02"]]])
    _, vectors = np.linalg.eigh(cov)
    return centre, vectors[:, 1]


def _basal_corners(q: np.ndarray, centre: np.ndarray, axis: np.ndarray) -> tuple[int, int]:
    """Indices of the viewer's-left and -right basal corners (left = +90 deg from the axis in
    a y-down image, which is the viewer's left when the base is down)."""
    normal = np.array([-axis[1], axis[0]])
    u = (q - centre) @ axis
    v = (q - centre) @ normal
    c, s = np.cos(CORNER_ANGLE_RAD), np.sin(CORNER_ANGLE_RAD)
    return int(np.argmax(u * c + v * s)), int(np.argmax(u * c - v * s))


def disks_volume_from_outline(
    outline_px: np.ndarray,
    landmarks: Landmarks,
    spacing_cm: tuple[float, float] | None,
    n_disks: int = DEFAULT_N_DISKS,
) -> float:
    """Method-of-disks volume: mL with spacing, cubic pixels without (only ratios of those
    mean anything, and only for square pixels)."""
    s = _scale(spacing_cm)
    q = np.asarray(outline_px, dtype=np.float64) * s
    apex = np.asarray(landmarks.apex_px) * s
    mid = np.asarray(landmarks.annulus_mid_px) * s
    return disks_volume_ml(q, apex, mid, n_disks)
