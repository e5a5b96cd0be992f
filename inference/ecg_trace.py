"""The ECG trace burned into a cine's frames, as a 1-D signal over columns with a clock that
says which frame each column belongs to.

Scanners draw the ECG outside the ultrasound fan: a thin coloured (or, on greyscale exports, bright)
curve that stays put while the loop plays, and a cursor (or erase bar) that moves along it with
the displayed frame. Both facts are used, nothing vendor-specific:

* The trace is *static*: the per-pixel median of frames spread over the loop keeps it and drops
  the moving cursor; the median absolute deviation over the same frames tells static annotations
  from the fan, whose speckle changes every frame. Of the static, coloured (else bright) pixels
  outside the fan, the trace is the widest connected piece that is thin like a line (a few
  pixels per column) and covers nearly every column of its span; text, scales and markers are
  far narrower.
* The *clock*: in each frame the cursor is where that frame differs from the median within the
  trace's band of rows; a straight-line fit of cursor column against frame index maps any column
  of the trace to a frame. When nothing in the band changes at all (no cursor, no sweep), a
  trace that spans the loop's duration maps its first column to the first frame and its last to
  the last ("extent"): an assumption the caller must corroborate (``inference.ecg`` only accepts
  it when the header heart rate agrees). A band that changes in some other way (a sweeping
  redraw with an erase bar that does not fit one line, a blinking marker) gives no clock.

Anything that does not look like this (no thin wide trace, a cursor that does not move along a
line) gives None, never a guess.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

STAT_FRAMES = 7  # frames sampled for the median and the deviation (odd)
MIN_FRAMES = 5  # fewer frames have no usable median (the cursor would survive it)
STATIC_MAX_DEVIATION = 6.0  # grey levels: median |frame - median| of an annotation pixel
COLOUR_MIN_SATURATION = 60  # max - min channel, of a coloured trace pixel
COLOUR_MIN_VALUE = 80  # brightest channel of a coloured trace pixel
GREY_MIN_VALUE = 60  # a grey (monochrome) trace pixel
SECTOR_MARGIN_PX = 6  # pixels this close to the fan count as fan
MIN_TRACE_WIDTH_FRACTION = 0.25  # of the image width
MAX_TRACE_HEIGHT_FRACTION = 0.35  # of the image height
MAX_MEDIAN_PIXELS_PER_COLUMN = 6.0  # a line, not a filled shape or a block of text
MIN_COLUMN_COVERAGE = 0.9  # share of the span's columns that hold a trace pixel
BAND_MARGIN_PX = 3  # rows above and below the trace searched for the cursor
CURSOR_MIN_DIFFERENCE = 40  # grey levels a cursor pixel differs from the median
CURSOR_MIN_PIXELS = 4  # of one column, for a cursor to be seen in a frame
CURSOR_HALF_WIDTH_PX = 6  # the cursor's neighbourhood; elsewhere the frame must be quiet
MAX_CHANGED_FRAME_FRACTION_STILL = 0.05  # frames whose trace band changes, of a still trace
MIN_CURSOR_FIT_FRACTION = 0.8  # of frames on the fitted line, else the clock is not trusted
CURSOR_TOLERANCE_PX = 2.0  # distance from the line of a frame that fits it
MIN_CURSOR_SPEED_PX = 0.2  # per frame: a slower "cursor" is something else


@dataclass(frozen=True)
class TraceSignal:
    """The trace as a profile over its columns ``x0_px`` .. ``x0_px + len - 1``: the row of its
    top-most pixel (R waves are its upward spikes), gaps interpolated. The bottom-most pixel is
    not used: whatever hangs under a trace (text, a box) would pass for downward spikes.
    ``band_rows`` is the trace's row span; ``coloured`` says which pixels were taken (saturated
    colour, or bright grey)."""

    x0_px: int
    top_row_px: np.ndarray
    band_rows: tuple[int, int]
    coloured: bool

    @property
    def n_columns(self) -> int:
        return int(self.top_row_px.shape[0])

    @property
    def height_up_px(self) -> np.ndarray:
        """How far the trace rises above its typical row, per column (upward positive)."""
        return float(np.median(self.top_row_px)) - self.top_row_px


@dataclass(frozen=True)
class ColumnClock:
    """Column -> frame: ``frame = (column - column_at_frame0_px) / px_per_frame``. ``kind`` is
    "cursor" (fitted to the moving cursor) or "extent" (the trace's span taken as the loop's)."""

    column_at_frame0_px: float
    px_per_frame: float
    kind: str

    def frame_at(self, column_px: np.ndarray) -> np.ndarray:
        return (np.asarray(column_px, np.float64) - self.column_at_frame0_px) / self.px_per_frame


@dataclass(frozen=True)
class BurnedInTrace:
    """A trace found in the frames, and its cursor clock when one could be established.
    ``still`` says that nothing moved along the trace in any frame (no cursor, no sweep): only
    then may the trace be mapped by its extent. A band that changes, but not like one cursor
    moving along a line (a sweeping redraw, a blinking marker), has neither."""

    signal: TraceSignal
    clock: ColumnClock | None
    still: bool


def find_burned_in_trace(
    frames: np.ndarray, sector_mask: np.ndarray | None = None
) -> BurnedInTrace | None:
    """The ECG trace of ``frames`` (n, rows, cols, 3) uint8 RGB, or None when there is none.

    ``sector_mask`` (rows, cols), when known, excludes the fan (and a margin around it) from the
    search; without it the fan is still excluded by its changing speckle."""
    stack = np.asarray(frames)
    if stack.ndim != 4 or stack.shape[-1] != 3 or stack.shape[0] < MIN_FRAMES or not stack.size:
        return None
    n, rows, cols, _ = stack.shape
    # frames spread over the loop: a moving cursor sits on a pixel in fewer than half of them
    sample = list(stack[np.linspace(0, n - 1, STAT_FRAMES).round().astype(int)])
    median = _median(sample)
    value = _brightest_channel(median)
    saturation = value - np.minimum(np.minimum(median[..., 0], median[..., 1]), median[..., 2])
    deviation = _median([cv2.absdiff(_brightest_channel(f), value) for f in sample])
    allowed = deviation <= STATIC_MAX_DEVIATION
    if sector_mask is not None:
        fan = np.asarray(sector_mask, bool)
        if fan.shape != (rows, cols):
            raise ValueError(f"sector_mask shape {fan.shape} differs from the frames' {rows, cols}")
        k = 2 * SECTOR_MARGIN_PX + 1
        near_fan = cv2.dilate(fan.astype(np.uint8), np.ones((k, k), np.uint8)).astype(bool)
        allowed &= ~near_fan
    coloured = (saturation >= COLOUR_MIN_SATURATION) & (value >= COLOUR_MIN_VALUE)
    grey = (saturation < COLOUR_MIN_SATURATION) & (value >= GREY_MIN_VALUE)
    for candidates, is_colour in ((coloured & allowed, True), (grey & allowed, False)):
        signal = _widest_line(candidates, is_colour)
        if signal is not None:
            clock, still = _cursor_clock(stack, median, signal)
            return BurnedInTrace(signal=signal, clock=clock, still=still)
    return None


def extent_clock(signal: TraceSignal, n_frames: int) -> ColumnClock | None:
    """The clock of a trace drawn over exactly the loop: first column = first frame, last column
    = last frame. Only valid when something else confirms the trace spans the loop."""
    if n_frames < 2 or signal.n_columns < 2:
        return None
    return ColumnClock(
        column_at_frame0_px=float(signal.x0_px),
        px_per_frame=(signal.n_columns - 1) / (n_frames - 1),
        kind="extent",
    )


def _widest_line(candidates: np.ndarray, coloured: bool) -> TraceSignal | None:
    """The widest connected piece of ``candidates`` that is thin, low and nearly unbroken."""
    rows, cols = candidates.shape
    if not candidates.any():
        return None
    # close one-pixel gaps of anti-aliased, compressed lines so a trace is one piece
    closed = cv2.morphologyEx(candidates.astype(np.uint8), cv2.MORPH_CLOSE, np.ones((3, 3)))
    _count, labels, stats, _ = cv2.connectedComponentsWithStats(closed, connectivity=8)
    order = np.argsort(-stats[1:, cv2.CC_STAT_WIDTH]) + 1
    for label in order:
        x, y, w, h, pixels = (int(v) for v in stats[label, :5])
        if w < MIN_TRACE_WIDTH_FRACTION * cols:
            break  # sorted by width: nothing wider is left
        if h > MAX_TRACE_HEIGHT_FRACTION * rows:
            continue
        piece = (labels[y : y + h, x : x + w] == label) & candidates[y : y + h, x : x + w]
        per_column = piece.sum(axis=0)
        present = per_column > 0
        if present.mean() < MIN_COLUMN_COVERAGE:
            continue
        if np.median(per_column[present]) > MAX_MEDIAN_PIXELS_PER_COLUMN or pixels > 8 * w:
            continue
        top = piece.argmax(axis=0).astype(np.float64)
        idx = np.arange(w)
        top = np.interp(idx, idx[present], top[present]) + y
        return TraceSignal(
            x0_px=x,
            top_row_px=top,
            band_rows=(y, y + h - 1),
            coloured=coloured,
        )
    return None


def _cursor_clock(
    frames: np.ndarray, median: np.ndarray, signal: TraceSignal
) -> tuple[ColumnClock | None, bool]:
    """(clock, still): the line through each frame's cursor column, when frames have one that
    moves along a line; ``still`` when the trace's band does not change in (nearly) any frame."""
    n, rows, _cols, _ = frames.shape
    r0 = max(0, signal.band_rows[0] - BAND_MARGIN_PX)
    r1 = min(rows, signal.band_rows[1] + BAND_MARGIN_PX + 1)
    band_median = np.ascontiguousarray(median[r0:r1])
    positions = np.full(n, np.nan)
    changed = 0
    for i in range(n):
        diff = _brightest_channel(cv2.absdiff(np.ascontiguousarray(frames[i, r0:r1]), band_median))
        per_column = np.count_nonzero(diff >= CURSOR_MIN_DIFFERENCE, axis=0)
        changed += int(per_column.max() >= CURSOR_MIN_PIXELS)
        positions[i] = _cursor_column(per_column)
    if changed <= MAX_CHANGED_FRAME_FRACTION_STILL * n:
        return None, True
    seen = np.isfinite(positions)
    if seen.sum() < max(2, MIN_CURSOR_FIT_FRACTION * n):
        return None, False
    frame_idx = np.flatnonzero(seen).astype(np.float64)
    cursor = positions[seen]
    # slopes between frames half the loop apart: rounding of single steps averages out
    half = max(1, cursor.size // 2)
    slopes = (cursor[half:] - cursor[:-half]) / (frame_idx[half:] - frame_idx[:-half])
    speed = float(np.median(slopes))
    if abs(speed) < MIN_CURSOR_SPEED_PX:
        return None, False
    offset = float(np.median(cursor - speed * frame_idx))
    fits = np.abs(cursor - (offset + speed * frame_idx)) <= CURSOR_TOLERANCE_PX
    if fits.sum() < MIN_CURSOR_FIT_FRACTION * n:
        return None, False
    speed, offset = np.polyfit(frame_idx[fits], cursor[fits], 1)
    return ColumnClock(float(offset), float(speed), "cursor"), False


def _cursor_column(per_column: np.ndarray) -> float:
    """Where one frame's cursor is: the column that differs most from the median, when it
    stands alone (NaN when nothing, or something spread out, differs)."""
    peak = int(per_column.argmax())
    height = int(per_column[peak])
    if height < CURSOR_MIN_PIXELS:
        return float("nan")
    lo, hi = max(0, peak - CURSOR_HALF_WIDTH_PX), peak + CURSOR_HALF_WIDTH_PX + 1
    elsewhere = np.concatenate([per_column[:lo], per_column[hi:]])
    if elsewhere.size and elsewhere.max() > 0.5 * height:
        return float("nan")
    near = np.arange(lo, min(hi, per_column.size))
    strong = near[per_column[near] >= 0.5 * height]
    return float(strong.mean())


def _median(images: list[np.ndarray]) -> np.ndarray:
    """Per-pixel median of an odd number of same-shape uint8 images, by partial bubble sort
    with elementwise min/max (far faster than ``np.median`` along a short leading axis)."""
    values = list(images)
    k = len(values)
    for done in range(k // 2 + 1):
        for j in range(k - 1 - done):
            low = np.minimum(values[j], values[j + 1])
            values[j + 1] = np.maximum(values[j], values[j + 1])
            values[j] = low
    return values[k // 2]


def _brightest_channel(rgb: np.ndarray) -> np.ndarray:
    return np.maximum(np.maximum(rgb[..., 0], rgb[..., 1]), rgb[..., 2])
