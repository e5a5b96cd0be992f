"""Physical calibration of a loop (cm per pixel) from its Sequence of Ultrasound Regions, and
whether that calibration can be trusted.

Every distance, area and volume we report is pixels times this spacing, so a wrong spacing gives
wrong numbers that look right. Exports get it wrong in known ways: the image is rescaled after
the scanner wrote the region (pydicom's SonoSite loop: a region up to x 595 on a 320-pixel-wide
image), the region is calibrated in other units, or its deltas are zero. Such a calibration is
refused, spacing becomes None (EF is still measured, volumes are not), and a ``QualityFlag`` says
why in words a cardiologist reads. A negative Physical Delta X/Y only gives the axis direction
(PS3.3 C.8.5.5.1.13): the spacing is its magnitude.

``calibrate`` decides from the header alone; ``sector_mismatch`` checks the chosen region against
the scanned fan once preprocessing has found it, and ``without_untrusted_spacing`` applies that
check to a ``Cine``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

from inference.types import Cine, QualityFlag, RegionBox

# Sequence of Ultrasound Regions values (PS3.3 C.8.5.5.1)
REGION_SPATIAL_FORMAT_2D = 1
REGION_DATA_TYPE_TISSUE = 1
PHYSICAL_UNITS_CM = 3
PHYSICAL_UNIT_NAMES = {
    0: "no unit",
    1: "percent",
    2: "dB",
    3: "cm",
    4: "seconds",
    5: "hertz",
    6: "dB/s",
    7: "cm/s",
    8: "cm2",
    9: "cm2/s",
    10: "cm3",
    11: "cm3/s",
    12: "degrees",
}

# Stable identifiers of the calibration flags (software matches on these; the text is for people).
# A loop with no calibrated tissue region at all gets ``inference.measure.FLAG_NO_SPACING``.
FLAG_CALIBRATION_OUTSIDE_IMAGE = "calibration_outside_image"
FLAG_CALIBRATION_UNITS = "calibration_units_not_cm"
FLAG_CALIBRATION_NO_DELTA = "calibration_delta_missing"
FLAG_CALIBRATION_SECTOR_MISMATCH = "calibration_sector_mismatch"
CALIBRATION_FLAG_CODES = (
    FLAG_CALIBRATION_OUTSIDE_IMAGE,
    FLAG_CALIBRATION_UNITS,
    FLAG_CALIBRATION_NO_DELTA,
    FLAG_CALIBRATION_SECTOR_MISMATCH,
)

# The fan must lie in the region it is measured with; a few pixels of the fan's antialiased
# edge or a rounded region corner may fall outside, so "mostly" is 90 % of its bounding box.
MIN_SECTOR_INSIDE_FRACTION = 0.9
# Regions often span the whole display (a 16:9 frame around a narrow 45-degree fan differs by
# about 2.3x), so only a larger disagreement of width/height means the region is another image's.
MAX_ASPECT_FACTOR = 3.0

_NOT_REPORTED = "distances, areas and volumes are not reported."


@dataclass(frozen=True)
class Calibration:
    """The spacing to measure with, or None with the flags that say why there is none.

    ``spacing_cm`` is (row/y, column/x) cm per pixel, always positive; ``region`` the tissue
    region it came from (inside the image). No tissue region at all gives no flag here: that is
    the plain "no spacing" case the measurements already flag.
    """

    spacing_cm: tuple[float, float] | None
    region: RegionBox | None
    flags: tuple[QualityFlag, ...] = ()

    @classmethod
    def of_cine(cls, cine: Cine) -> Calibration:
        """The calibration a decoded ``Cine`` carries (its spacing, region and flags)."""
        region = cine.tissue_region if cine.spacing_cm is not None else None
        return cls(cine.spacing_cm, region, cine.flags)


@dataclass(frozen=True)
class _Candidate:
    """One 2-D tissue region read from the header, before it is accepted or refused."""

    box: RegionBox | None  # None when the location attributes are missing
    units: tuple[int, int]  # (x, y) Physical Units codes
    delta_x_cm: float | None  # |Physical Delta X|; None when missing, zero or not finite
    delta_y_cm: float | None


def calibrate(ds: Dataset, image_shape_px: tuple[int, int]) -> Calibration:
    """The trusted calibration of a loop whose frames are ``image_shape_px`` (rows, cols).

    Of the 2-D tissue regions, those calibrated in cm in both directions, with non-zero deltas
    and lying inside the image qualify; the largest one wins, since the region that holds the
    whole fan is the one that calibrates it (``sector_mismatch`` checks that later). When none
    qualifies, every refused region's reason becomes a flag.
    """
    rows, cols = int(image_shape_px[0]), int(image_shape_px[1])
    accepted: list[tuple[int, RegionBox, tuple[float, float]]] = []
    refusals: list[QualityFlag] = []
    for candidate in _tissue_regions(ds):
        refusal = _refusal(candidate, rows, cols)
        if refusal is not None:
            refusals.append(refusal)
            continue
        box = candidate.box
        assert box is not None and candidate.delta_x_cm and candidate.delta_y_cm  # by _refusal
        area = box.width_px * box.height_px
        accepted.append((area, box, (candidate.delta_y_cm, candidate.delta_x_cm)))
    if accepted:
        _, box, spacing = max(accepted, key=lambda item: item[0])
        return Calibration(spacing_cm=spacing, region=box)
    return Calibration(spacing_cm=None, region=None, flags=_unique(refusals))


def sector_mismatch(
    calibration: Calibration, sector_bbox_px: tuple[int, int, int, int]
) -> QualityFlag | None:
    """A flag when the scanned fan (bounding box x0, y0, x1, y1 in source pixels, inclusive)
    does not lie in the calibration region, or the two have clearly different shapes; None when
    they agree or there is no spacing to check.

    A region that does not hold the fan was written for another image (or another part of this
    one), so its cm per pixel says nothing about the fan's pixels.
    """
    region = calibration.region
    if calibration.spacing_cm is None or region is None:
        return None
    x0, y0, x1, y1 = (int(v) for v in sector_bbox_px)
    if x1 < x0 or y1 < y0:
        raise ValueError(f"the sector bounding box {sector_bbox_px} is empty")
    fan_area = (x1 - x0 + 1) * (y1 - y0 + 1)
    overlap_w = min(x1, region.x1) - max(x0, region.x0) + 1
    overlap_h = min(y1, region.y1) - max(y0, region.y0) + 1
    inside = max(0, overlap_w) * max(0, overlap_h) / fan_area
    region_aspect = region.width_px / region.height_px
    fan_aspect = (x1 - x0 + 1) / (y1 - y0 + 1)
    aspect_factor = max(region_aspect / fan_aspect, fan_aspect / region_aspect)
    where = f"(x {region.x0}-{region.x1}, y {region.y0}-{region.y1})"
    fan = f"(x {x0}-{x1}, y {y0}-{y1})"
    if inside < MIN_SECTOR_INSIDE_FRACTION:
        return QualityFlag(
            FLAG_CALIBRATION_SECTOR_MISMATCH,
            f"Only {100 * inside:.0f} % of the scanned sector {fan} lies inside the calibration "
            f"region {where}, so that calibration does not belong to the sector: volumes are "
            "not reported.",
        )
    if aspect_factor > MAX_ASPECT_FACTOR:
        return QualityFlag(
            FLAG_CALIBRATION_SECTOR_MISMATCH,
            f"The calibration region {where} has a width-to-height ratio of {region_aspect:.2f}, "
            f"far from the scanned sector's {fan_aspect:.2f} {fan}, so that calibration does not "
            "belong to the sector: volumes are not reported.",
        )
    return None


def mask_bbox_px(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) inclusive bounding box of a boolean mask; None when it is empty."""
    ys, xs = np.nonzero(np.asarray(mask))
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def without_untrusted_spacing(cine: Cine, sector_mask_px: np.ndarray) -> Cine:
    """``cine`` unchanged when its calibration fits the scanned fan (a source-pixel mask), else
    a copy with no spacing and the ``calibration_sector_mismatch`` flag added, so nothing
    downstream computes areas or volumes from it."""
    bbox = mask_bbox_px(sector_mask_px)
    if bbox is None:
        return cine
    flag = sector_mismatch(Calibration.of_cine(cine), bbox)
    if flag is None:
        return cine
    return dataclasses.replace(cine, spacing_cm=None, flags=(*cine.flags, flag))


def _tissue_regions(ds: Dataset) -> list[_Candidate]:
    """The header's 2-D tissue regions (other regions: Doppler, M-mode, colour, are not)."""
    out = []
    for item in ds.get("SequenceOfUltrasoundRegions", []) or []:
        if _int(item.get("RegionSpatialFormat")) != REGION_SPATIAL_FORMAT_2D:
            continue
        if _int(item.get("RegionDataType")) != REGION_DATA_TYPE_TISSUE:
            continue
        corners = [
            _int(item.get(keyword))
            for keyword in (
                "RegionLocationMinX0",
                "RegionLocationMinY0",
                "RegionLocationMaxX1",
                "RegionLocationMaxY1",
            )
        ]
        box = None
        if all(c is not None for c in corners):
            x0, y0, x1, y1 = corners  # type: ignore[misc]
            box = RegionBox(x0, y0, x1, y1)
        units_x = _int(item.get("PhysicalUnitsXDirection"))
        units_y = _int(item.get("PhysicalUnitsYDirection"))
        out.append(
            _Candidate(
                box=box,
                units=(-1 if units_x is None else units_x, -1 if units_y is None else units_y),
                delta_x_cm=_magnitude(item.get("PhysicalDeltaX")),
                delta_y_cm=_magnitude(item.get("PhysicalDeltaY")),
            )
        )
    return out


def _refusal(candidate: _Candidate, rows: int, cols: int) -> QualityFlag | None:
    """Why a tissue region cannot calibrate this image, or None when it can."""
    box = candidate.box
    where = "" if box is None else f" (x {box.x0}-{box.x1}, y {box.y0}-{box.y1})"
    if candidate.units != (PHYSICAL_UNITS_CM, PHYSICAL_UNITS_CM):
        x_name, y_name = (PHYSICAL_UNIT_NAMES.get(u, f"unit code {u}") for u in candidate.units)
        if candidate.units[0] < 0 or candidate.units[1] < 0:
            stated = "does not state its units"
        else:
            stated = f"is calibrated in {x_name} across and {y_name} down"
        return QualityFlag(
            FLAG_CALIBRATION_UNITS,
            f"The calibration region{where} {stated}, not centimetres in both directions: "
            f"{_NOT_REPORTED}",
        )
    if candidate.delta_x_cm is None or candidate.delta_y_cm is None:
        return QualityFlag(
            FLAG_CALIBRATION_NO_DELTA,
            f"The calibration region{where} gives no usable pixel size (a physical delta is "
            f"missing or zero): {_NOT_REPORTED}",
        )
    if box is None or box.x1 < box.x0 or box.y1 < box.y0:
        return QualityFlag(
            FLAG_CALIBRATION_OUTSIDE_IMAGE,
            f"The calibration region has no valid location in the {cols} x {rows} image: "
            f"{_NOT_REPORTED}",
        )
    if box.x0 < 0 or box.y0 < 0 or box.x1 > cols - 1 or box.y1 > rows - 1:
        return QualityFlag(
            FLAG_CALIBRATION_OUTSIDE_IMAGE,
            f"The calibration region{where} lies outside the {cols} x {rows} image (the image "
            f"was probably rescaled after calibration): {_NOT_REPORTED}",
        )
    return None


def _unique(flags: list[QualityFlag]) -> tuple[QualityFlag, ...]:
    """The flags in order, without repeating a sentence (two regions may fail alike)."""
    return tuple(dict.fromkeys(flags))


def _int(value: object) -> int | None:
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _magnitude(value: object) -> float | None:
    """|value| when it is a finite non-zero number (the sign of a delta is only direction)."""
    try:
        number = abs(float(value))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None
