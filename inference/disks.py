"""Single-plane method of disks (modified Simpson's rule) on a 2-D LV contour.

The same code computes the phantom's ground truth and, later, the volumes measured on predicted
masks, so both sides of every accuracy figure use one definition of "volume".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_N_DISKS = 20


@dataclass(frozen=True)
class DiskChords:
    """The chords that define each disk, in the contour's own units and coordinates.

    `side_a` / `side_b` hold, per disk (ordered apex to base), the chord endpoints on the two
    sides of the long axis; side_a lies along (-axis_y, axis_x), which is the viewer's left in a
    y-down image with the apex at the top. Joining side_a in order and side_b in reverse order
    traces the cavity, as EchoNet's VolumeTracings polygons do.
    """

    side_a: np.ndarray  # (n_disks, 2)
    side_b: np.ndarray  # (n_disks, 2)
    diameters: np.ndarray  # (n_disks,)
    axis_length: float
    apex: np.ndarray  # (2,)
    annulus_mid: np.ndarray  # (2,)


def _validated(contour: np.ndarray, apex: np.ndarray, annulus_mid: np.ndarray, n_disks: int):
    pts = np.asarray(contour, dtype=np.float64)
    a = np.asarray(apex, dtype=np.float64).reshape(-1)
    b = np.asarray(annulus_mid, dtype=np.float64).reshape(-1)
    if pts.ndim != 2 or pts.shape[1] != 2 or pts.shape[0] < 3:
        raise ValueError(f"contour must be an (N>=3, 2) array of points, got shape {pts.shape}")
    if a.shape != (2,) or b.shape != (2,):
        raise ValueError("apex and annulus_mid must be 2-vectors")
    if not (np.all(np.isfinite(pts)) and np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("contour, apex and annulus_mid must be finite")
    if int(n_disks) != n_disks or n_disks < 1:
        raise ValueError(f"n_disks must be a positive integer, got {n_disks!r}")
    length = float(np.hypot(*(b - a)))
    if length <= 0.0:
        raise ValueError("apex and annulus_mid coincide: the long axis has no length")
    return pts, a, b, length


def disk_chords(
    contour: np.ndarray,
    apex: np.ndarray,
    annulus_mid: np.ndarray,
    n_disks: int = DEFAULT_N_DISKS,
) -> DiskChords:
    """Cuts the closed contour perpendicular to the long axis at the middle of each slab.

    Each chord spans the extreme crossings of the contour on that perpendicular line, so a
    ragged (non-convex) predicted outline still yields one diameter per disk; a disk whose line
    misses the contour gets diameter 0 and both endpoints on the axis.
    """
    pts, a, b, length = _validated(contour, apex, annulus_mid, n_disks)
    n_disks = int(n_disks)
    axis = (b - a) / length
    normal = np.array([-axis[1], axis[0]])  # +90 deg in a y-down frame: viewer's left side

    rel = pts - a
    along = rel @ axis
    perp = rel @ normal
    along_next = np.roll(along, -1)
    perp_next = np.roll(perp, -1)

    levels = (np.arange(n_disks) + 0.5) * (length / n_disks)
    lo = np.minimum(along, along_next)[None, :]
    hi = np.maximum(along, along_next)[None, :]
    lv = levels[:, None]
    # half-open so a vertex lying exactly on a level is counted once per edge pair
    crosses = (lo <= lv) & (lv < hi)
    denom = (along_next - along)[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(crosses, (lv - along[None, :]) / np.where(denom == 0, 1.0, denom), 0.0)
    perp_at = perp[None, :] + t * (perp_next - perp)[None, :]
    has_any = crosses.any(axis=1)
    p_max = np.where(has_any, np.where(crosses, perp_at, -np.inf).max(axis=1), 0.0)
    p_min = np.where(has_any, np.where(crosses, perp_at, np.inf).min(axis=1), 0.0)

    centres = a[None, :] + levels[:, None] * axis[None, :]
    side_a = centres + p_max[:, None] * normal[None, :]
    side_b = centres + p_min[:, None] * normal[None, :]
    return DiskChords(
        side_a=side_a,
        side_b=side_b,
        diameters=p_max - p_min,
        axis_length=length,
        apex=a,
        annulus_mid=b,
    )


def disks_volume_ml(
    contour_cm: np.ndarray,
    apex_cm: np.ndarray,
    annulus_mid_cm: np.ndarray,
    n_disks: int = DEFAULT_N_DISKS,
) -> float:
    """Single-plane method of disks (Simpson): long axis from apex to mitral-annulus midpoint
    split into n_disks equal slabs; each slab is a disk whose diameter is the contour's width
    perpendicular to the axis at the slab's middle; V = sum(pi/4 * d_i^2 * L/n) in mL (cm^3).

    Inputs are in cm (x, y in any consistent orientation); 1 cm^3 == 1 mL.
    """
    chords = disk_chords(contour_cm, apex_cm, annulus_mid_cm, n_disks)
    slab_cm = chords.axis_length / len(chords.diameters)
    return float(np.sum(np.pi / 4.0 * chords.diameters**2) * slab_cm)


def ejection_fraction_percent(edv_ml: float, esv_ml: float) -> float:
    """EF from the two volumes; kept here so truth and measurement round identically."""
    if edv_ml <= 0:
        raise ValueError(f"EDV must be positive, got {edv_ml}")
    return 100.0 * (edv_ml - esv_ml) / edv_ml
