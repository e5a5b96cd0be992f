"""Checks of the pixel data against the header: sizes, fragments per frame, codec signatures
and RLE segment headers.
"""

from __future__ import annotations

import itertools
import struct

from pydicom.dataset import Dataset

from inference.frame_size import declared_size, mismatch
from pacs_agent.dicom import contexts
from pacs_agent.dicom.status import (
    CANNOT_PARSE,
    DATASET_DOES_NOT_MATCH_SOP_CLASS,
    PIXEL_DATA_INCOMPLETE,
)
from pacs_agent.dicom.validate_header import element_integer, element_text, parse_us
from pacs_agent.dicom.validate_types import InstanceHeader, InvalidInstanceError, PixelDataLayout

JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  "
# JPEG XL (ISO/IEC 18181-2): a bare codestream, or the ISOBMFF container around one
JXL_CODESTREAM_SIGNATURE = b"\xff\x0a"
JXL_CONTAINER_SIGNATURE = b"\x00\x00\x00\x0cJXL \r\n\x87\n"
# An RLE frame's header: the segment count and 15 segment offsets (PS3.5 G.3.1)
RLE_HEADER_BYTES = 64
# A frame header split over fragments is read from at most this many of the frame's first bytes.
FRAME_HEADER_MAX_BYTES = 1024 * 1024


def check_image_size(ds: Dataset, header: InstanceHeader) -> None:
    """An image of 0 rows, columns, samples or bits has nothing to show or analyse."""
    values = {
        "Rows": header.rows,
        "Columns": header.columns,
        "SamplesPerPixel": element_integer(ds, "SamplesPerPixel", parse_us),
        "BitsAllocated": element_integer(ds, "BitsAllocated", parse_us),
    }
    empty = [f"{keyword} {value}" for keyword, value in values.items() if not value]
    if empty:
        raise InvalidInstanceError(
            DATASET_DOES_NOT_MATCH_SOP_CLASS,
            f"{contexts.sop_class_name(header.sop_class_uid)} with {', '.join(empty)}",
        )


def has_pixel(keyword: str, header: InstanceHeader) -> bool:
    # the header was decoded without the pixel data element, which the walk found instead
    return keyword == "PixelData" and header.pixel_data is not None


def check_pixel_data(
    view: memoryview, ds: Dataset, header: InstanceHeader, pixel: PixelDataLayout
) -> None:
    syntax = header.transfer_syntax_uid
    frames = header.number_of_frames
    encapsulated_syntax = syntax in contexts.ENCAPSULATED_TRANSFER_SYNTAXES
    if encapsulated_syntax != pixel.encapsulated:
        kind = "encapsulated" if encapsulated_syntax else "native"
        raise InvalidInstanceError(
            CANNOT_PARSE, f"{contexts.transfer_syntax_name(syntax)} needs {kind} pixel data"
        )
    if not pixel.encapsulated:
        expected = _native_pixel_bytes(ds, header)
        if pixel.native_length_bytes < expected:
            raise InvalidInstanceError(
                PIXEL_DATA_INCOMPLETE,
                f"pixel data holds {pixel.native_length_bytes} bytes, Rows x Columns x "
                f"SamplesPerPixel x BitsAllocated/8 x NumberOfFrames needs {expected}",
            )
        return
    found = _count_frames(view, syntax, pixel.fragments)
    if found < frames:
        raise InvalidInstanceError(
            PIXEL_DATA_INCOMPLETE,
            f"encapsulated pixel data holds {found} frames in {len(pixel.fragments)} fragments, "
            f"NumberOfFrames is {frames}",
        )
    if 0 < pixel.offset_table_entries < frames:
        raise InvalidInstanceError(
            PIXEL_DATA_INCOMPLETE,
            f"Basic Offset Table lists {pixel.offset_table_entries} frames, "
            f"NumberOfFrames is {frames}",
        )
    _check_declared_sizes(view, ds, header, pixel.fragments)


def _check_declared_sizes(
    view: memoryview, ds: Dataset, header: InstanceHeader, fragments: tuple[tuple[int, int], ...]
) -> None:
    """Each frame's own header (SOF, SOF55, SIZ, JPEG XL SizeHeader) must declare Rows x
    Columns: a decoder allocates what the frame declares, so a small loop whose frames claim
    16000 x 16000 would cost gigabytes at analysis. A frame without a readable header is left
    to the decoder, which refuses it without allocating (``inference.frame_size``)."""
    syntax = header.transfer_syntax_uid
    if syntax == contexts.RLE_LOSSLESS:
        _check_rle_headers(view, ds, fragments)  # RLE declares no size, only its segments
        return
    rows, columns = header.rows or 0, header.columns or 0
    samples = element_integer(ds, "SamplesPerPixel", parse_us) or 1
    for number, frame in enumerate(_frame_fragments(view, syntax, fragments), start=1):
        size = declared_size(view[frame[0][0] : frame[0][0] + frame[0][1]])
        if size is None and len(frame) > 1:  # the header may continue in the next fragment
            size = declared_size(_joined_head(view, frame))
        problem = mismatch(size, rows, columns, samples) if size is not None else ""
        if problem:
            raise InvalidInstanceError(
                DATASET_DOES_NOT_MATCH_SOP_CLASS, f"frame {number}: {problem}"
            )


def _check_rle_headers(
    view: memoryview, ds: Dataset, fragments: tuple[tuple[int, int], ...]
) -> None:
    """Each RLE frame starts with its 64-byte header (PS3.5 G.3.1): as many segments as
    SamplesPerPixel x BitsAllocated/8, the first right after the header, each inside the
    frame. Without this a frame of some other encoding (JPEG bytes sent as RLE, found by
    bench fuzz) was stored and failed only at decoding."""
    samples = element_integer(ds, "SamplesPerPixel", parse_us) or 1
    bits = element_integer(ds, "BitsAllocated", parse_us) or 8
    expected = samples * ((bits + 7) // 8)
    for number, (offset, length) in enumerate(fragments, start=1):
        header = view[offset : offset + min(length, RLE_HEADER_BYTES)].tobytes()
        problem = ""
        if len(header) < RLE_HEADER_BYTES:
            problem = f"{length} bytes, shorter than the RLE header"
        else:
            segments, *offsets = struct.unpack("<16I", header)
            used = offsets[:segments]
            if segments != expected or not 0 < segments <= len(offsets):
                problem = f"{segments} RLE segments, {expected} expected"
            elif (
                used[0] != RLE_HEADER_BYTES
                or any(b <= a for a, b in itertools.pairwise(used))
                or used[-1] >= length
            ):
                problem = "RLE segment offsets outside the frame"
        if problem:
            raise InvalidInstanceError(CANNOT_PARSE, f"frame {number}: {problem}")


def _frame_fragments(
    view: memoryview, syntax: str, fragments: tuple[tuple[int, int], ...]
) -> list[list[tuple[int, int]]]:
    """Fragments grouped by frame: a frame starts at a fragment with a start marker."""
    markers = _frame_markers(syntax)
    frames: list[list[tuple[int, int]]] = []
    for offset, length in fragments:
        if view[offset : offset + min(length, 12)].tobytes().startswith(markers):
            frames.append([(offset, length)])
        elif frames:
            frames[-1].append((offset, length))
    return frames


def _joined_head(view: memoryview, frame: list[tuple[int, int]]) -> bytes:
    parts, total = [], 0
    for offset, length in frame:
        take = min(length, FRAME_HEADER_MAX_BYTES - total)
        parts.append(view[offset : offset + take].tobytes())
        total += take
        if total >= FRAME_HEADER_MAX_BYTES:
            break
    return b"".join(parts)


def _native_pixel_bytes(ds: Dataset, header: InstanceHeader) -> int:
    rows = header.rows or 0
    columns = header.columns or 0
    samples = element_integer(ds, "SamplesPerPixel", parse_us) or 1
    bits = element_integer(ds, "BitsAllocated", parse_us) or 8
    if element_text(ds, "PhotometricInterpretation") == "YBR_FULL_422":
        samples = 2  # two chroma samples shared by each pair of pixels (PS3.3 C.7.6.3.1.2)
    total_bits = rows * columns * samples * bits * header.number_of_frames
    return (total_bits + 7) // 8


def _count_frames(view: memoryview, syntax: str, fragments: tuple[tuple[int, int], ...]) -> int:
    """Frames present, counted by their start markers (a frame may span several fragments)."""
    if syntax == contexts.RLE_LOSSLESS:
        return len(fragments)  # PS3.5 A.4.2: one fragment per frame
    markers = _frame_markers(syntax)
    count = 0
    for offset, length in fragments:
        head = view[offset : offset + min(length, 12)].tobytes()
        if head.startswith(markers):
            count += 1
    return count


def _frame_markers(syntax: str) -> tuple[bytes, ...]:
    """The bytes a frame of ``syntax`` starts with (encapsulated syntaxes other than RLE)."""
    if syntax in contexts.JPEG_FAMILY:
        return (b"\xff\xd8",)  # SOI
    if syntax in contexts.JPEG_XL_FAMILY:
        return (JXL_CODESTREAM_SIGNATURE, JXL_CONTAINER_SIGNATURE)
    return (b"\xff\x4f\xff\x51", JP2_SIGNATURE)  # J2K SOC+SIZ, or a JP2 file
