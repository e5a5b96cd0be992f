"""JPEG XL pixel data (transfer syntaxes 1.2.840.10008.1.2.4.110, .111 and .112) -> arrays.

Current GE scanners write JPEG XL loops. pydicom 3.0 (the newest release the project installs)
does not know these transfer syntaxes: its ``UID`` refuses them as "not a transfer syntax" and
its decoder registry is keyed by the syntaxes it knows, so a decoder plugin cannot be added
without patching pydicom's module state. Instead the frames are taken out of the encapsulated
Pixel Data with pydicom's fragment reader and each is decoded with libjxl through the
``pillow-jxl-plugin`` package (small, needs only Pillow, decodes 8- and 16-bit grey and RGB and
also encodes, which the tests use to make JPEG XL loops).

The result matches what ``pydicom.pixels.pixel_array(ds, raw=False)`` gives for other
syntaxes: colour frames in RGB (libjxl converts from its internal XYB; a recompressed JPEG,
.111, is rebuilt and decoded by Pillow's JPEG decoder, which converts from YCbCr), grey frames
2-D, 16-bit samples kept 16-bit.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from types import MappingProxyType

import numpy as np
import pillow_jxl  # noqa: F401  (registers the JPEG XL format with Pillow)
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.filereader import read_file_meta_info
from pydicom.pixels import iter_pixels

from inference.errors import InferenceError
from inference.frame_size import FrameSizeError, check_decodable

JPEG_XL_LOSSLESS = "1.2.840.10008.1.2.4.110"
JPEG_XL_JPEG_RECOMPRESSION = "1.2.840.10008.1.2.4.111"
JPEG_XL = "1.2.840.10008.1.2.4.112"
JPEG_XL_SYNTAXES: frozenset[str] = frozenset(
    {JPEG_XL_LOSSLESS, JPEG_XL_JPEG_RECOMPRESSION, JPEG_XL}
)
JPEG_XL_NAMES: Mapping[str, str] = MappingProxyType(
    {
        JPEG_XL_LOSSLESS: "JPEG XL Lossless",
        JPEG_XL_JPEG_RECOMPRESSION: "JPEG XL JPEG Recompression",
        JPEG_XL: "JPEG XL",
    }
)
# ISO/IEC 18181-2: a bare codestream, or the ISOBMFF container around one
CODESTREAM_SIGNATURE = b"\xff\x0a"
CONTAINER_SIGNATURE = b"\x00\x00\x00\x0cJXL \r\n\x87\n"
_MODES = {"L": 1, "I;16": 1, "RGB": 3}  # Pillow mode -> samples per pixel


class JpegXLError(InferenceError, ValueError):
    """A JPEG XL frame that cannot be decoded, or does not fit the dataset's header."""


def transfer_syntax(ds: Dataset) -> str:
    """The dataset's transfer syntax UID ('' when it has no file meta)."""
    meta = getattr(ds, "file_meta", None)
    return str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""


def is_jpeg_xl(ds: Dataset) -> bool:
    return transfer_syntax(ds) in JPEG_XL_SYNTAXES


def decode_frame(data: bytes) -> np.ndarray:
    """One JPEG XL codestream (or container) -> (rows, cols) or (rows, cols, 3) array."""
    if not data.startswith((CODESTREAM_SIGNATURE, CONTAINER_SIGNATURE)):
        raise JpegXLError("the frame is not a JPEG XL codestream (no JPEG XL signature)")
    try:
        with Image.open(io.BytesIO(data), formats=["JXL"]) as image:
            image.load()
            mode = image.mode
            array = np.asarray(image)
    except Exception as exc:  # the codec raises its own types; all mean "cannot decode"
        raise JpegXLError(f"libjxl cannot decode the frame: {type(exc).__name__}: {exc}") from exc
    if mode not in _MODES:
        raise JpegXLError(f"JPEG XL frame in Pillow mode {mode!r}: only grey and RGB are used")
    return array


def decode_jpeg_xl(ds: Dataset, index: int | None = None) -> np.ndarray:
    """Frame ``index`` as (rows, cols[, samples]), or every frame as (frames, rows, cols
    [, samples]) when ``index`` is None; each frame is checked against Rows, Columns and
    Samples per Pixel so a wrong frame never reaches the analysis."""
    if not is_jpeg_xl(ds):
        raise JpegXLError(f"transfer syntax {transfer_syntax(ds) or '(none)'} is not JPEG XL")
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    indices = range(n_frames) if index is None else [index]
    frames = [_checked(ds, decode_frame(_bounded(ds, i, n_frames)), i) for i in indices]
    return np.stack(frames) if index is None else frames[0]


def _frame_bytes(ds: Dataset, index: int, n_frames: int) -> bytes:
    if not 0 <= index < n_frames:
        raise IndexError(f"frame {index} of a {n_frames}-frame loop")
    try:
        return get_frame(ds.PixelData, index, number_of_frames=n_frames)
    except Exception as exc:  # malformed items, a short offset table, missing fragments
        raise JpegXLError(f"frame {index} cannot be read from the pixel data: {exc}") from exc


def _bounded(ds: Dataset, index: int, n_frames: int) -> bytes:
    """Frame ``index``'s bytes, once its SizeHeader declares no more than Rows x Columns:
    libjxl allocates the declared size before ``_checked`` could see the result."""
    data = _frame_bytes(ds, index, n_frames)
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    try:
        check_decodable(data, rows, cols, int(ds.get("SamplesPerPixel", 1) or 1))
    except FrameSizeError as exc:
        raise JpegXLError(f"frame {index}: {exc}") from None
    return data


def _checked(ds: Dataset, frame: np.ndarray, index: int) -> np.ndarray:
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    found_samples = 1 if frame.ndim == 2 else int(frame.shape[2])
    if frame.shape[:2] != (rows, cols) or found_samples != samples:
        raise JpegXLError(
            f"frame {index} decodes to {frame.shape[1]} x {frame.shape[0]} with {found_samples} "
            f"sample(s); the header says {cols} x {rows} with {samples}"
        )
    return frame


def frames_at(path: str | os.PathLike[str], indices: Sequence[int]) -> np.ndarray:
    """Frames ``indices`` of the file at ``path``, stacked, as ``pydicom.pixels.iter_pixels``
    gives them (colour in RGB) for the syntaxes pydicom decodes, and from here for JPEG XL;
    for code that samples a few frames without decoding the whole loop."""
    meta = read_file_meta_info(path)
    if str(meta.get("TransferSyntaxUID", "")) not in JPEG_XL_SYNTAXES:
        return np.stack(list(iter_pixels(path, indices=list(indices))))
    ds = dcmread(path)
    return np.stack([decode_jpeg_xl(ds, index) for index in indices])
