"""DICOM cine -> ``Cine``: RGB frames, frame timing, physical spacing, heart rate.

Scanners write the same loop in many ways (YBR JPEG, RLE RGB, MONOCHROME2, palette colour;
Frame Time or a Frame Time Vector or only a Cine Rate), and downstream code must not care, so
everything is normalised here, once. Anything wrong with the pixel data becomes one error type,
``DecodeError``, that the pipeline records on the job instead of crashing a worker.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, pixel_array

from inference.types import Cine, RegionBox

# Sequence of Ultrasound Regions values (PS3.3 C.8.5.5.1)
REGION_SPATIAL_FORMAT_2D = 1
REGION_DATA_TYPE_TISSUE = 1
PHYSICAL_UNITS_CM = 3


class DecodeError(ValueError):
    """The loop's pixel data or header cannot be turned into frames (corrupt or unsupported)."""


def read_cine(source: str | Path | BinaryIO | Dataset) -> Cine:
    """Decodes a DICOM cine loop (or single frame) from a file, stream or dataset."""
    ds = source if isinstance(source, Dataset) else _read_dataset(source)
    frames = _decode_frames(ds)
    notes: list[str] = []
    frame_time_ms, time_source = frame_time_from_header(ds)
    if frame_time_ms is None and frames.shape[0] > 1:
        notes.append("no frame timing in the header: heart rate and clip timing unavailable")
    region = tissue_region(ds)
    spacing = None if region is None else region[1]
    if spacing is None:
        notes.append("no physical spacing in the header: volumes and areas are not reported")
    return Cine(
        frames=frames,
        frame_time_ms=frame_time_ms,
        frame_time_source=time_source,
        spacing_cm=spacing,
        tissue_region=None if region is None else region[0],
        heart_rate_bpm=_positive_float(ds.get("HeartRate")),
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
        notes=tuple(notes),
    )


def _read_dataset(source: str | Path | BinaryIO) -> Dataset:
    try:
        return pydicom.dcmread(source)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError) as exc:
        raise DecodeError(f"not a readable DICOM file: {exc}") from exc


def _decode_frames(ds: Dataset) -> np.ndarray:
    if "PixelData" not in ds:
        raise DecodeError("the dataset has no pixel data")
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    try:
        # raw=False converts YBR_FULL / YBR_FULL_422 to RGB as the decoder requires
        array = pixel_array(ds, raw=False)
    except Exception as exc:  # decoders raise many types; all mean "cannot decode"
        syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
        syntax_name = getattr(syntax, "name", None) or str(syntax or "unknown transfer syntax")
        raise DecodeError(
            f"cannot decode pixel data ({syntax_name}, {photometric}): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1))
    if photometric == "PALETTE COLOR":
        array = apply_color_lut(array, ds)
        samples = 3
        lut_bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        if lut_bits > 8:  # 16-bit palette entries: keep the most significant byte
            array = (array >> (lut_bits - 8)).astype(np.uint8)
    # put every loop in (frames, rows, cols[, samples]) whether it has one frame or many
    expected_ndim = 3 if samples == 1 else 4
    if n_frames == 1 and array.ndim == expected_ndim - 1:
        array = array[np.newaxis]
    if array.ndim != expected_ndim:
        raise DecodeError(f"unexpected pixel array shape {array.shape} for {photometric}")
    array = _to_uint8(array, ds, photometric)
    if samples == 1:
        array = np.repeat(array[..., np.newaxis], 3, axis=-1)
    elif array.shape[-1] != 3:
        raise DecodeError(f"unsupported samples per pixel: {array.shape[-1]}")
    return np.ascontiguousarray(array)


def _to_uint8(array: np.ndarray, ds: Dataset, photometric: str) -> np.ndarray:
    if array.dtype != np.uint8:
        # ultrasound is 8-bit almost always; scale deeper data by its stored range
        bits = int(ds.get("BitsStored", 16))
        top = float(2**bits - 1) if not np.issubdtype(array.dtype, np.floating) else array.max()
        array = np.clip(array.astype(np.float32) * (255.0 / max(top, 1.0)), 0, 255)
        array = array.astype(np.uint8)
    if photometric == "MONOCHROME1":
        array = 255 - array
    return array


def frame_time_from_header(ds: Dataset) -> tuple[float | None, str]:
    """The frame interval in ms and which attribute gave it, in the order the standard prefers."""
    frame_time = _positive_float(ds.get("FrameTime"))
    if frame_time is not None:
        return frame_time, "FrameTime"
    vector = ds.get("FrameTimeVector")
    if vector is not None:
        values = [float(v) for v in (vector if isinstance(vector, Sequence) else [vector])]
        # the first entry is 0 (time of the first frame); the rest are intervals
        intervals = [v for v in values[1:] if v > 0]
        if intervals:
            return float(np.mean(intervals)), "FrameTimeVector"
    for keyword in ("CineRate", "RecommendedDisplayFrameRate"):
        rate = _positive_float(ds.get(keyword))
        if rate is not None:
            return 1000.0 / rate, keyword
    return None, ""


def tissue_region(ds: Dataset) -> tuple[RegionBox, tuple[float, float]] | None:
    """The largest 2-D tissue region calibrated in cm, and its (row, column) cm per pixel."""
    best: tuple[int, RegionBox, tuple[float, float]] | None = None
    for item in ds.get("SequenceOfUltrasoundRegions", []):
        if int(item.get("RegionSpatialFormat", -1)) != REGION_SPATIAL_FORMAT_2D:
            continue
        if int(item.get("RegionDataType", -1)) != REGION_DATA_TYPE_TISSUE:
            continue
        units = (
            int(item.get("PhysicalUnitsXDirection", 0)),
            int(item.get("PhysicalUnitsYDirection", 0)),
        )
        dx, dy = (
            _positive_float(item.get("PhysicalDeltaX")),
            _positive_float(item.get("PhysicalDeltaY")),
        )
        if units != (PHYSICAL_UNITS_CM, PHYSICAL_UNITS_CM) or dx is None or dy is None:
            continue
        box = RegionBox(
            int(item.get("RegionLocationMinX0", 0)),
            int(item.get("RegionLocationMinY0", 0)),
            int(item.get("RegionLocationMaxX1", 0)),
            int(item.get("RegionLocationMaxY1", 0)),
        )
        area = box.width_px * box.height_px
        if best is None or area > best[0]:
            best = (area, box, (dy, dx))
    return None if best is None else (best[1], best[2])


def _positive_float(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) and number > 0 else None
