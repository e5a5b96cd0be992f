"""Cine -> the networks' input: the scanned fan alone, square, 112x112, normalised.

Burned-in text, the ECG strip, depth scales and colour bars sit around the fan on every export;
a network trained on EchoNet-Dynamic's clean fans must not see them, and the LV measured on the
112 grid must map back to exact source pixels (and centimetres) for volumes, DICOM SEG and
overlays. So the fan is found geometrically (a circular sector: a virtual apex, two straight
edges and an outer arc), everything outside it is zeroed, and every step after that is a pure
crop / pad / uniform scale recorded in ``SectorTransform``, which inverts exactly.

The square is built as the phantom's EchoNet layout builds it (fan bounding box, centred
padding, ``cv2.INTER_AREA``), so loops seen here look like the loops the demo models trained on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from inference.errors import InferenceError
from inference.types import Cine, RegionBox

GRID_SIZE_PX = 112
# A pixel belongs to the fan when it changes over the loop (speckle is re-drawn every frame);
# annotations are static. 4 grey levels sits above JPEG ringing next to the fan and below the
# speckle of tissue; dark blood pools fall under it but the fan is convex, so its hull fills them.
STD_THRESHOLD = 4.0
LOW_STD_THRESHOLD = 1.0  # retried when the loop is nearly static (heavy persistence)
INTENSITY_THRESHOLD = 8.0  # single frames: no variance to use, bright pixels instead
MAX_STAT_FRAMES = 32
OPEN_KERNEL_PX = 3  # removes one-pixel text strokes and the ECG cursor before the hull
MIN_FAN_FRACTION = 0.02  # of the search box; less than this is no fan
EDGE_MARGIN_PX = 1.0  # the fitted fan is shrunk this much so marks touching its edge stay out
FIT_MIN_IOU = 0.9  # the sector model must agree with the pixels' hull, else the hull is used
FIT_ROWS = (0.08, 0.45)  # fraction of the fan's height where its sides are straight lines


class PreprocessError(InferenceError, ValueError):
    """No usable ultrasound fan in the loop (blank frames, or not a sector image)."""


@dataclass(frozen=True)
class PreprocessParams:
    """Input normalisation of one checkpoint: per-channel mean and SD in 0..255 pixel units
    (EchoNet-Dynamic's convention), and the grid size the network expects."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    size_px: int = GRID_SIZE_PX

    def __post_init__(self) -> None:
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("mean and std need one value per RGB channel")
        if not all(np.isfinite(v) for v in (*self.mean, *self.std)):
            raise ValueError("mean and std must be finite")
        if min(self.std) <= 0:
            raise ValueError(f"std must be positive, got {self.std}")
        if int(self.size_px) != self.size_px or self.size_px < 8:
            raise ValueError(f"size_px must be an integer >= 8, got {self.size_px!r}")


@dataclass(frozen=True)
class FanGeometry:
    """The scanned fan in source pixels (column, row; pixel-centre coordinates).

    Beam angles are measured from the image's downward direction, positive to the viewer's
    right. ``method`` is "sector" when the circular-sector model fitted the pixels, or "hull"
    when it did not (then ``hull_px`` defines the fan and the apex is its top point).
    """

    apex_px: tuple[float, float]
    inner_radius_px: float
    outer_radius_px: float
    left_angle_rad: float
    right_angle_rad: float
    method: str
    # (N, 2) int32 convex polygon when method == "hull"
    hull_px: np.ndarray | None = field(default=None, compare=False, repr=False)

    def mask(self, shape: tuple[int, int], margin_px: float = EDGE_MARGIN_PX) -> np.ndarray:
        """Pixels inside the fan, at least ``margin_px`` from its edges."""
        rows, cols = int(shape[0]), int(shape[1])
        if self.method == "hull":
            if self.hull_px is None:
                raise ValueError("a hull fan needs its polygon")
            out = np.zeros((rows, cols), np.uint8)
            cv2.fillConvexPoly(out, self.hull_px.astype(np.int32), 1)
            k = 2 * round(margin_px) + 1
            if k > 1:
                out = cv2.erode(out, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
            return out.astype(bool)
        rr, cc = np.mgrid[0:rows, 0:cols].astype(np.float64)
        x = cc - self.apex_px[0]
        y = rr - self.apex_px[1]
        r = np.hypot(x, y)
        # signed distance to each straight edge (positive inside)
        d_left = np.cos(self.left_angle_rad) * x - np.sin(self.left_angle_rad) * y
        d_right = np.sin(self.right_angle_rad) * y - np.cos(self.right_angle_rad) * x
        return (
            (r <= self.outer_radius_px - margin_px)
            & (r >= self.inner_radius_px + (margin_px if self.inner_radius_px > 0 else 0.0))
            & (d_left >= margin_px)
            & (d_right >= margin_px)
            & (y >= 0)
        )


@dataclass(frozen=True)
class SectorTransform:
    """Source pixels <-> the network grid: crop to ``crop``, pad to a ``side_px`` square
    (``pad_left_px`` / ``pad_top_px`` before the crop), scale uniformly to ``size_px``.

    Points use pixel-centre coordinates (column, row): a source point p lands at
    ``(p - crop_origin + pad + 0.5) * scale - 0.5`` on the grid, and the inverse is exact.
    """

    source_shape_px: tuple[int, int]  # (rows, cols)
    crop: RegionBox
    pad_left_px: int
    pad_top_px: int
    side_px: int
    size_px: int
    spacing_cm: tuple[float, float] | None  # source (row/y, column/x) cm per pixel
    transducer_px: tuple[float, float]  # fan apex, source (column, row)

    @property
    def scale(self) -> float:
        """Grid pixels per source pixel."""
        return self.size_px / self.side_px

    @property
    def grid_spacing_cm(self) -> tuple[float, float] | None:
        """(row/y, column/x) cm per grid pixel; None when the source has no calibration."""
        if self.spacing_cm is None:
            return None
        return (self.spacing_cm[0] / self.scale, self.spacing_cm[1] / self.scale)

    @property
    def _offset(self) -> np.ndarray:
        return np.array(
            [self.pad_left_px - self.crop.x0, self.pad_top_px - self.crop.y0], dtype=np.float64
        )

    def points_to_grid(self, points_px: np.ndarray) -> np.ndarray:
        """Source (column, row) points -> grid (column, row) points; any leading shape."""
        p = np.asarray(points_px, dtype=np.float64)
        return (p + self._offset + 0.5) * self.scale - 0.5

    def points_to_source(self, points_grid: np.ndarray) -> np.ndarray:
        """Grid (column, row) points -> source (column, row) points; exact inverse."""
        p = np.asarray(points_grid, dtype=np.float64)
        return (p + 0.5) / self.scale - 0.5 - self._offset

    def _square(self, image: np.ndarray) -> np.ndarray:
        """The crop of a source image placed in the zero-padded square (side x side)."""
        c = self.crop
        sq = np.zeros((self.side_px, self.side_px, *image.shape[2:]), image.dtype)
        sq[
            self.pad_top_px : self.pad_top_px + c.height_px,
            self.pad_left_px : self.pad_left_px + c.width_px,
        ] = image[c.y0 : c.y1 + 1, c.x0 : c.x1 + 1]
        return sq

    def image_to_grid(self, image: np.ndarray) -> np.ndarray:
        """One source image (rows x cols [x channels]) -> size x size, area-averaged."""
        sq = self._square(image)
        return cv2.resize(sq, (self.size_px, self.size_px), interpolation=cv2.INTER_AREA)

    def mask_to_grid(self, mask: np.ndarray) -> np.ndarray:
        """A source mask -> the fraction of each grid pixel it covers (float32, 0..1), which is
        what a segmentation network's probability approximates."""
        return self.image_to_grid(np.asarray(mask, dtype=np.float32))

    def probability_to_source(self, grid: np.ndarray) -> np.ndarray:
        """Grid values (size x size) -> source resolution (rows x cols, float32) by bilinear
        interpolation on the same pixel-centre mapping; zero outside the crop."""
        g = np.asarray(grid, dtype=np.float32)
        if g.shape != (self.size_px, self.size_px):
            raise ValueError(f"expected a {self.size_px}x{self.size_px} grid, got {g.shape}")
        sq = cv2.resize(g, (self.side_px, self.side_px), interpolation=cv2.INTER_LINEAR)
        c = self.crop
        out = np.zeros(self.source_shape_px, np.float32)
        out[c.y0 : c.y1 + 1, c.x0 : c.x1 + 1] = sq[
            self.pad_top_px : self.pad_top_px + c.height_px,
            self.pad_left_px : self.pad_left_px + c.width_px,
        ]
        return out

    def mask_to_source(self, grid: np.ndarray, threshold: float = 0.5) -> np.ndarray:
        """A grid mask or probability map -> a boolean source-resolution mask."""
        return self.probability_to_source(grid) >= threshold


@dataclass(frozen=True)
class Preprocessed:
    """The network input and what is needed to map results back."""

    frames: np.ndarray  # (frames, 3, size, size) float32, normalised
    transform: SectorTransform
    sector_mask: np.ndarray  # (size, size) bool: grid pixels inside the fan
    fan: FanGeometry

    def source_sector_mask(self) -> np.ndarray:
        return self.fan.mask(self.transform.source_shape_px)


def preprocess_cine(cine: Cine, params: PreprocessParams) -> Preprocessed:
    """Finds the fan, masks, crops, pads, resizes and normalises every frame."""
    shaper = SectorShaper.fit(cine, params)
    return shaper.preprocessed(shaper.network_input(cine.frames))


@dataclass(frozen=True)
class SectorShaper:
    """Preprocessing in two steps: the fan and transform, fitted once on frames that show the
    fan, then the per-frame mask / crop / pad / resize / normalise, applied to any batch of
    frames. ``inference.stream`` fits on a sample while the rest of the loop still decodes."""

    fan: FanGeometry
    transform: SectorTransform
    fan_mask: np.ndarray  # (rows, cols) bool, source pixels inside the fan
    keep: np.ndarray  # the fan mask inside the crop, uint8 for cv2.bitwise_and
    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, sample: Cine, params: PreprocessParams) -> SectorShaper:
        fan = find_sector(sample)
        rows, cols = sample.frames.shape[1:3]
        fan_mask = fan.mask((rows, cols))
        full = fan.mask((rows, cols), margin_px=0.0)
        transform = sector_transform(sample, full, fan, params.size_px)
        c = transform.crop
        return cls(
            fan=fan,
            transform=transform,
            fan_mask=fan_mask,
            keep=fan_mask[c.y0 : c.y1 + 1, c.x0 : c.x1 + 1].astype(np.uint8),
            mean=np.asarray(params.mean, np.float32),
            std=np.asarray(params.std, np.float32),
        )

    def network_input(self, frames: np.ndarray) -> np.ndarray:
        """(frames, rows, cols, 3) uint8 -> (frames, 3, size, size) float32, normalised."""
        t, c = self.transform, self.transform.crop
        square = np.zeros((t.side_px, t.side_px, 3), np.uint8)
        inner = square[
            t.pad_top_px : t.pad_top_px + c.height_px, t.pad_left_px : t.pad_left_px + c.width_px
        ]
        size = (t.size_px, t.size_px)
        small = np.empty((len(frames), t.size_px, t.size_px, 3), np.uint8)
        for i, frame in enumerate(frames):
            crop = frame[c.y0 : c.y1 + 1, c.x0 : c.x1 + 1]
            inner[...] = cv2.bitwise_and(crop, crop, mask=self.keep)
            small[i] = cv2.resize(square, size, interpolation=cv2.INTER_AREA)
        out = (small.astype(np.float32) - self.mean) / self.std
        return np.ascontiguousarray(out.transpose(0, 3, 1, 2))

    def preprocessed(self, network_input: np.ndarray) -> Preprocessed:
        sector_grid = self.transform.mask_to_grid(self.fan_mask) >= 0.5
        return Preprocessed(
            frames=network_input, transform=self.transform, sector_mask=sector_grid, fan=self.fan
        )


def sector_transform(
    cine: Cine, fan_mask: np.ndarray, fan: FanGeometry, size_px: int = GRID_SIZE_PX
) -> SectorTransform:
    """Crop box = the fan's bounding box (inside the header's tissue region when there is
    one), padded equally on both sides to a square."""
    rows, cols = cine.frames.shape[1:3]
    ys, xs = np.nonzero(fan_mask)
    if len(xs) == 0:
        raise PreprocessError("the fan mask is empty")
    x0, x1, y0, y1 = int(xs.min()), int(xs.max()), int(ys.min()), int(ys.max())
    region = _clipped_region(cine.tissue_region, rows, cols)
    if region is not None:
        x0, y0 = max(x0, region.x0), max(y0, region.y0)
        x1, y1 = min(x1, region.x1), min(y1, region.y1)
    crop = RegionBox(x0, y0, x1, y1)
    side = max(crop.width_px, crop.height_px)
    return SectorTransform(
        source_shape_px=(int(rows), int(cols)),
        crop=crop,
        pad_left_px=(side - crop.width_px) // 2,
        pad_top_px=(side - crop.height_px) // 2,
        side_px=int(side),
        size_px=int(size_px),
        spacing_cm=cine.spacing_cm,
        transducer_px=(float(fan.apex_px[0]), float(fan.apex_px[1])),
    )


def find_sector(cine: Cine) -> FanGeometry:
    """The fan from its pixels, searched inside the header's tissue region when there is one
    (the region bounds the fan but its corners hold text and scales, so pixels decide)."""
    frames = cine.frames
    if frames.ndim != 4 or frames.shape[0] == 0:
        raise PreprocessError(f"expected (frames, rows, cols, 3) pixels, got {frames.shape}")
    rows, cols = frames.shape[1:3]
    box = _clipped_region(cine.tissue_region, rows, cols) or RegionBox(0, 0, cols - 1, rows - 1)
    blob = _active_blob(frames, box)
    ys, xs = np.nonzero(blob)
    points = np.stack([xs + box.x0, ys + box.y0], axis=1).astype(np.int32)
    hull = cv2.convexHull(points.reshape(-1, 1, 2)).reshape(-1, 2)
    hull_mask = np.zeros((rows, cols), np.uint8)
    cv2.fillConvexPoly(hull_mask, hull, 1)
    hull_mask = hull_mask.astype(bool)
    fitted = _fit_sector(hull_mask, points)
    if fitted is not None:
        model = fitted.mask((rows, cols), margin_px=0.0)
        inter = np.count_nonzero(model & hull_mask)
        union = np.count_nonzero(model | hull_mask)
        if union and inter / union >= FIT_MIN_IOU:
            return fitted
    top = int(ys.min()) + box.y0
    top_cols = xs[ys == ys.min()] + box.x0
    return FanGeometry(
        apex_px=(float(top_cols.mean()), float(top)),
        inner_radius_px=0.0,
        outer_radius_px=float(np.hypot(rows, cols)),
        left_angle_rad=-np.pi / 2,
        right_angle_rad=np.pi / 2,
        method="hull",
        hull_px=hull.astype(np.int32),
    )


def _clipped_region(region: RegionBox | None, rows: int, cols: int) -> RegionBox | None:
    if region is None:
        return None
    x0, y0 = max(0, region.x0), max(0, region.y0)
    x1, y1 = min(cols - 1, region.x1), min(rows - 1, region.y1)
    if x1 - x0 < 16 or y1 - y0 < 16:
        return None  # a region that does not fit the image says nothing useful
    return RegionBox(x0, y0, x1, y1)


def _active_blob(frames: np.ndarray, box: RegionBox) -> np.ndarray:
    """The largest connected set of changing (or, for a still, bright) pixels in the box."""
    n = frames.shape[0]
    idx = np.unique(np.linspace(0, n - 1, min(n, MAX_STAT_FRAMES)).round().astype(int))
    sub = frames[idx, box.y0 : box.y1 + 1, box.x0 : box.x1 + 1]
    grey = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in sub]).astype(np.float32)
    min_px = MIN_FAN_FRACTION * grey.shape[1] * grey.shape[2]
    if len(idx) >= 3:
        spread = grey.std(axis=0)
        candidates = [spread > STD_THRESHOLD, spread > LOW_STD_THRESHOLD]
    else:
        candidates = []
    candidates.append(grey.max(axis=0) > INTENSITY_THRESHOLD)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (OPEN_KERNEL_PX, OPEN_KERNEL_PX))
    for active in candidates:
        opened = cv2.morphologyEx(active.astype(np.uint8), cv2.MORPH_OPEN, kernel)
        count, labels, stats, _ = cv2.connectedComponentsWithStats(opened, connectivity=8)
        if count < 2:
            continue
        best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        if stats[best, cv2.CC_STAT_AREA] >= min_px:
            return labels == best
    raise PreprocessError("no ultrasound fan found: the frames hold no changing or bright area")


def _fit_sector(hull_mask: np.ndarray, points: np.ndarray) -> FanGeometry | None:
    """Circular-sector model from a filled fan: straight side edges fitted on the upper rows
    meet at the virtual apex; the outer radius is the hull's furthest pixel from it, the inner
    one the nearest changing pixel (``points``, column/row), since a truncated top is an arc
    that the convex hull would cut with a chord."""
    ys, xs = np.nonzero(hull_mask)
    top, bottom = int(ys.min()), int(ys.max())
    height = bottom - top + 1
    if height < 20:
        return None
    fit_rows = np.arange(top + int(FIT_ROWS[0] * height), top + int(FIT_ROWS[1] * height) + 1)
    lefts, rights, used = [], [], []
    for r in fit_rows:
        cols = np.flatnonzero(hull_mask[r])
        if len(cols):
            lefts.append(cols[0] - 0.5)  # the pixel edge, not its centre
            rights.append(cols[-1] + 0.5)
            used.append(r)
    if len(used) < 5:
        return None
    rr = np.asarray(used, np.float64)
    bl, al = np.polyfit(rr, np.asarray(lefts), 1)  # column = a + b * row
    br, ar = np.polyfit(rr, np.asarray(rights), 1)
    if not (bl < -0.05 and br > 0.05):
        return None  # parallel or converging sides: not a sector (a linear probe, say)
    apex_row = (ar - al) / (bl - br)
    apex_col = al + bl * apex_row
    if apex_row > top + 0.25 * height:
        return None
    outer = float(np.hypot(xs - apex_col, ys - apex_row).max() + 0.5)
    near = np.hypot(points[:, 0] - apex_col, points[:, 1] - apex_row).min()
    inner = float(max(0.0, near - 0.5))
    if inner < 0.05 * outer:
        inner = 0.0  # the fan starts at the transducer; its tip is lost to the opening
    return FanGeometry(
        apex_px=(float(apex_col), float(apex_row)),
        inner_radius_px=inner,
        outer_radius_px=outer,
        left_angle_rad=float(np.arctan(bl)),
        right_angle_rad=float(np.arctan(br)),
        method="sector",
    )
