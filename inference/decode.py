"""DICOM cine -> ``Cine``: RGB frames, frame timing, physical spacing, heart rate.

Scanners write the same loop in many ways (YBR JPEG, RLE RGB, MONOCHROME2, palette colour;
Frame Time or a Frame Time Vector or only a Cine Rate), and downstream code must not care, so
everything is normalised here, once. Anything wrong with the pixel data becomes one error type,
``DecodeError``, that the pipeline records on the job instead of crashing a worker.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames, get_frame
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, pixel_array
from pydicom.uid import RLELossless

from inference.calibration import calibrate
from inference.decode_jpeg import NotYCbCrError, decode_all, decode_rgb, turbo_applies
from inference.ecg import ecg_from_waveform
from inference.errors import InferenceError
from inference.frame_size import check_decodable
from inference.jpegxl import JPEG_XL_NAMES, decode_jpeg_xl, is_jpeg_xl
from inference.types import Cine


class DecodeError(InferenceError, ValueError):
    """The loop's pixel data or header cannot be turned into frames (corrupt or unsupported)."""


def read_cine(source: str | Path | BinaryIO | Dataset) -> Cine:
    """Decodes a DICOM cine loop (or single frame) from a file, stream or dataset."""
    ds = source if isinstance(source, Dataset) else _read_dataset(source)
    layout = _pixel_layout(ds)
    return cine_from_header(ds, _decode_frames(ds, layout))


def cine_from_header(ds: Dataset, frames: np.ndarray) -> Cine:
    """The ``Cine`` of decoded ``frames`` with the timing and geometry that ``ds`` states."""
    notes: list[str] = []
    frame_time_ms, time_source = frame_time_from_header(ds)
    if frame_time_ms is None and frames.shape[0] > 1:
        notes.append("no frame timing in the header: heart rate and clip timing unavailable")
    # the header's size, not the frames': FrameReader passes an empty array for the header
    shape_px = (int(ds.get("Rows") or frames.shape[1]), int(ds.get("Columns") or frames.shape[2]))
    calibration = calibrate(ds, shape_px)
    if calibration.flags:
        notes.append("physical calibration refused: volumes and areas are not reported")
    elif calibration.spacing_cm is None:
        notes.append("no physical spacing in the header: volumes and areas are not reported")
    # R waves from an ECG waveform stored with the loop (the burned-in trace needs the frames:
    # ``inference.analyze`` reads it)
    ecg = ecg_from_waveform(ds, int(frames.shape[0]), frame_time_ms)
    return Cine(
        frames=frames,
        frame_time_ms=frame_time_ms,
        frame_time_source=time_source,
        spacing_cm=calibration.spacing_cm,
        tissue_region=calibration.region,
        heart_rate_bpm=_positive_float(ds.get("HeartRate")),
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
        notes=tuple(notes),
        flags=calibration.flags,
        ecg_r_wave_frames=None if ecg is None else ecg.r_wave_frames,
        ecg_heart_rate_bpm=None if ecg is None else ecg.heart_rate_bpm,
    )


class FrameReader:
    """One loop opened for decoding a frame at a time, so decoding can run beside analysis.

    The header is read and checked here, once; ``decode`` turns one frame into the same RGB
    pixels that ``read_cine`` gives for it (same decoder, same colour handling), and
    ``cine`` wraps a full frame array with the header's timing and geometry. ``decode`` only
    reads the dataset, so one thread may decode while another holds the header ``Cine``.
    """

    def __init__(self, source: str | Path | BinaryIO | Dataset) -> None:
        self.dataset = source if isinstance(source, Dataset) else _read_dataset(source)
        self.layout = _pixel_layout(self.dataset)
        self.rows = int(self.dataset.get("Rows", 0) or 0)
        self.cols = int(self.dataset.get("Columns", 0) or 0)
        if self.rows < 1 or self.cols < 1:
            raise DecodeError(f"the header gives no image size ({self.rows} x {self.cols})")
        # an empty frame array carries the header's timing, geometry and notes
        self.header = cine_from_header(self.dataset, np.zeros((self.n_frames, 0, 0, 3), np.uint8))

    @property
    def n_frames(self) -> int:
        return self.layout.n_frames

    def decode(self, index: int) -> np.ndarray:
        """Frame ``index`` as (rows, cols, 3) uint8 RGB; ``DecodeError`` when it cannot be."""
        if not 0 <= index < self.n_frames:
            raise IndexError(f"frame {index} of a {self.n_frames}-frame loop")
        array = _decode_array(self.dataset, self.layout, index)
        return _normalise_frames(array[np.newaxis], self.dataset, self.layout)[0]

    def cine(self, frames: np.ndarray) -> Cine:
        """The loop's ``Cine`` around all its decoded frames."""
        if frames.shape != (self.n_frames, self.rows, self.cols, 3):
            raise ValueError(f"expected {self.n_frames} frames of {self.rows} x {self.cols}")
        return dataclasses.replace(self.header, frames=frames)


@dataclass(frozen=True)
class _PixelLayout:
    n_frames: int
    samples: int
    photometric: str


def _read_dataset(source: str | Path | BinaryIO) -> Dataset:
    try:
        return pydicom.dcmread(source)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError) as exc:
        raise DecodeError(f"not a readable DICOM file: {exc}") from exc


def _pixel_layout(ds: Dataset) -> _PixelLayout:
    if "PixelData" not in ds:
        raise DecodeError("the dataset has no pixel data")
    return _PixelLayout(
        n_frames=int(ds.get("NumberOfFrames", 1) or 1),
        samples=int(ds.get("SamplesPerPixel", 1)),
        photometric=str(ds.get("PhotometricInterpretation", "")).upper(),
    )


def _decode_array(ds: Dataset, layout: _PixelLayout, index: int | None = None) -> np.ndarray:
    """The decoder's array for one frame (``index``) or all of them, in RGB for colour."""
    try:
        if is_jpeg_xl(ds):  # pydicom 3.0 has no JPEG XL decoder (see inference.jpegxl)
            array = decode_jpeg_xl(ds, index)
        else:
            fragments = _check_frame_sizes(ds, layout, index)
            array = _decode_turbo(ds, layout, fragments, index)
            if array is None:
                # raw=False converts YBR_FULL / YBR_FULL_422 to RGB as the decoder requires
                array = pixel_array(ds, raw=False, index=index)
    except Exception as exc:  # decoders raise many types; all mean "cannot decode"
        syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
        syntax_name = JPEG_XL_NAMES.get(str(syntax)) or getattr(syntax, "name", None)
        syntax_name = syntax_name or str(syntax or "unknown transfer syntax")
        raise DecodeError(
            f"cannot decode pixel data ({syntax_name}, {layout.photometric}): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    # put a whole loop in (frames, rows, cols[, samples]) whether it has one frame or many
    frame_ndim = 2 if layout.samples == 1 else 3
    if index is None and layout.n_frames == 1 and array.ndim == frame_ndim:
        array = array[np.newaxis]
    return array


def _check_frame_sizes(ds: Dataset, layout: _PixelLayout, index: int | None) -> list[bytes]:
    """Caps decoder memory: a compressed frame is decoded to the size its own header declares,
    so one declaring more than Rows x Columns x SamplesPerPixel is refused before decoding
    (``FrameSizeError``). RLE and native data have no size of their own to lie about.
    Returns the checked frames (frame ``index``, or all of them; none for RLE and native)."""
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if syntax is None or not syntax.is_encapsulated or syntax == RLELossless:
        return []
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    n_frames = layout.n_frames
    frames = (
        [get_frame(ds.PixelData, index, number_of_frames=n_frames)]
        if index is not None
        else list(generate_frames(ds.PixelData, number_of_frames=n_frames))
    )
    for frame in frames:
        check_decodable(frame, rows, columns, layout.samples)
    return frames


def _decode_turbo(
    ds: Dataset, layout: _PixelLayout, frames: list[bytes], index: int | None
) -> np.ndarray | None:
    """JPEG Baseline YCbCr frames through libjpeg-turbo straight to RGB (``inference.
    decode_jpeg``): (rows, cols, 3) for one frame, (frames, rows, cols, 3) for all of them;
    None when the loop (or one of its frames) is not such a stream, for pydicom to decode."""
    if not frames or not turbo_applies(ds, layout.samples, layout.photometric):
        return None
    if index is None and len(frames) != layout.n_frames:
        return None  # pydicom says what is wrong with the fragments
    rows, cols = int(ds.Rows), int(ds.Columns)
    try:
        if index is not None:
            return decode_rgb(frames[0], rows, cols)
        out = np.empty((len(frames), rows, cols, 3), np.uint8)
        return decode_all(frames, out, lambda i: decode_rgb(frames[i], rows, cols))
    except NotYCbCrError:
        return None


def _decode_frames(ds: Dataset, layout: _PixelLayout) -> np.ndarray:
    return _normalise_frames(_decode_array(ds, layout), ds, layout)


def _normalise_frames(array: np.ndarray, ds: Dataset, layout: _PixelLayout) -> np.ndarray:
    """Decoder output (frames, rows, cols[, samples]) -> (frames, rows, cols, 3) uint8 RGB."""
    photometric, samples = layout.photometric, layout.samples
    if photometric == "PALETTE COLOR":
        array = apply_color_lut(array, ds)
        samples = 3
        lut_bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        if lut_bits > 8:  # 16-bit palette entries: keep the most significant byte
            array = (array >> (lut_bits - 8)).astype(np.uint8)
    expected_ndim = 3 if samples == 1 else 4
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


def _positive_float(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) and number > 0 else None
