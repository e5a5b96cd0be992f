"""Data that crosses package lines: frozen dataclasses with units in their field names."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class RegionBox:
    """A rectangle in source pixels, inclusive corners, as DICOM ultrasound regions give them."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width_px(self) -> int:
        return self.x1 - self.x0 + 1

    @property
    def height_px(self) -> int:
        return self.y1 - self.y0 + 1


@dataclass(frozen=True)
class Cine:
    """A decoded cine loop: RGB frames plus the timing and geometry that turn pixels into
    physiology. ``spacing_cm`` is None when the header gives no physical calibration: EF can still
    be measured, volumes and areas in physical units cannot, and ``notes`` says so."""

    frames: np.ndarray = field(repr=False)  # (frames, rows, cols, 3) uint8 RGB
    frame_time_ms: float | None
    frame_time_source: str
    spacing_cm: tuple[float, float] | None  # (row/y, column/x) cm per pixel
    tissue_region: RegionBox | None
    heart_rate_bpm: float | None
    sop_instance_uid: str
    notes: tuple[str, ...] = ()

    @property
    def n_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def frames_per_s(self) -> float | None:
        return None if not self.frame_time_ms else 1000.0 / self.frame_time_ms

    @property
    def duration_s(self) -> float | None:
        return None if not self.frame_time_ms else self.n_frames * self.frame_time_ms / 1000.0
