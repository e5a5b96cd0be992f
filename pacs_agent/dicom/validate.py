"""Checks a received dataset before anything is written, and reads what the database needs.

The dataset arrives as the sender encoded it and is stored byte for byte, so it is checked in
its encoded form: a small walk over the element headers proves the structure is sound (no
element runs past the end, sequences close, pixel fragments are complete) without copying the
pixel data, and pydicom then decodes only the header in front of the pixel data. Whatever fails
here is refused with a status the sender can act on, so a broken loop never reaches the
assembler and the analysis.
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset

from inference.frame_size import declared_size, mismatch
from pacs_agent.dicom import contexts
from pacs_agent.dicom.status import (
    CANNOT_PARSE,
    DATASET_DOES_NOT_MATCH_SOP_CLASS,
    PIXEL_DATA_INCOMPLETE,
    Refusal,
)

PIXEL_DATA_TAG = 0x7FE00010
ITEM_TAG = 0xFFFEE000
ITEM_DELIMITER_TAG = 0xFFFEE00D
SEQUENCE_DELIMITER_TAG = 0xFFFEE0DD
UNDEFINED_LENGTH = 0xFFFFFFFF
# Explicit VRs whose length field is 4 bytes after 2 reserved bytes (PS3.5 7.1.2)
LONG_LENGTH_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
# The UI VR: digits and dots, at most 64 characters. The node also uses UIDs as path names.
UID_PATTERN = re.compile(r"[0-9]+(\.[0-9]+)*")
UID_MAX_CHARS = 64
JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  "
# JPEG XL (ISO/IEC 18181-2): a bare codestream, or the ISOBMFF container around one
JXL_CODESTREAM_SIGNATURE = b"\xff\x0a"
JXL_CONTAINER_SIGNATURE = b"\x00\x00\x00\x0cJXL \r\n\x87\n"
# Sequence nesting deeper than this is not an echo dataset but an attempt to exhaust the stack.
MAX_NESTING = 32
# Groups no dataset holds at its top level: command elements (0000), File Meta (0002: a reader
# of the stored file takes them for the file's own, Transfer Syntax UID included) and item or
# delimitation tags (FFFE), which belong inside sequences only. Found by ``bench fuzz``.
FORBIDDEN_TOP_LEVEL_GROUPS = frozenset({0x0000, 0x0002, 0xFFFE})
# Pixel Data is OB or OW in an explicit VR syntax (PS3.5 8.2; OB when encapsulated, A.4)
PIXEL_DATA_VRS = frozenset({b"OB", b"OW"})
# An RLE frame's header: the segment count and 15 segment offsets (PS3.5 G.3.1)
RLE_HEADER_BYTES = 64
# A frame header split over fragments is read from at most this many of the frame's first bytes.
FRAME_HEADER_MAX_BYTES = 1024 * 1024
# SR-based documents: their content is a tree under a root CONTAINER (PS3.3 C.17.3).
SR_SOP_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.88."

# An IS value is a 32-bit signed integer (PS3.5 6.2)
IS_MIN, IS_MAX = -(2**31), 2**31 - 1

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_TAG = struct.Struct("<HH")


class InvalidInstanceError(Exception):
    """The dataset is refused; ``refusal`` carries the status and the reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.refusal = Refusal(status, reason)


class _StructureError(Exception):
    def __init__(self, reason: str, in_pixel_data: bool = False) -> None:
        super().__init__(reason)
        self.in_pixel_data = in_pixel_data


@dataclass(frozen=True)
class PixelDataLayout:
    """Where the pixel data sits in the encoded dataset and how it is laid out.

    ``fragments`` are (offset, length) of each encapsulated fragment after the Basic Offset
    Table, ``native_length_bytes`` the value length of native pixel data.
    """

    element_offset: int
    encapsulated: bool
    native_length_bytes: int = 0
    offset_table_entries: int = 0
    fragments: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class InstanceHeader:
    """What the node records about an instance; identifying fields stay out of ``repr``."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    modality: str = ""
    number_of_frames: int = 1
    rows: int | None = None
    columns: int | None = None
    instance_number: int | None = None
    series_number: int | None = None
    series_description: str = ""
    protocol_name: str = ""
    study_date: dt.date | None = None
    study_time: str = ""
    study_description: str = ""
    accession_number: str = field(default="", repr=False)
    referring_physician: str = field(default="", repr=False)
    patient_id: str = field(default="", repr=False)
    issuer_of_patient_id: str = field(default="", repr=False)
    patient_name: str = field(default="", repr=False)
    patient_birth_date: dt.date | None = field(default=None, repr=False)
    patient_sex: str = field(default="", repr=False)
    pixel_data: PixelDataLayout | None = None


def inspect_dataset(
    data: bytes | memoryview,
    transfer_syntax_uid: str,
    affected_sop_class_uid: str,
    affected_sop_instance_uid: str,
) -> InstanceHeader:
    """Validates an encoded dataset (no File Meta) received under ``transfer_syntax_uid``.

    Raises ``InvalidInstanceError`` with 0xC210 when the bytes are not a well-formed dataset, 0xA900
    when the dataset does not match its SOP class or the C-STORE request, and 0xC220 when the
    pixel data holds fewer bytes or frames than the header promises.
    """
    view = memoryview(data).cast("B")
    implicit = transfer_syntax_uid == contexts.IMPLICIT_VR_LITTLE_ENDIAN
    try:
        pixel = _walk_top_level(view, implicit)
    except _StructureError as exc:
        status = PIXEL_DATA_INCOMPLETE if exc.in_pixel_data else CANNOT_PARSE
        raise InvalidInstanceError(status, str(exc)) from None
    header_end = pixel.element_offset if pixel is not None else len(view)
    try:
        ds = read_dataset(BytesIO(view[:header_end].tobytes()), implicit, True)
    except Exception as exc:  # pydicom raises many types for malformed input
        # the exception's type only: pydicom's message can quote the dataset's bytes (a patient
        # name), and this reason goes to the log and to the sender's Error Comment
        raise InvalidInstanceError(
            CANNOT_PARSE, f"dataset header cannot be decoded ({type(exc).__name__})"
        ) from None
    header = _header_from(ds, transfer_syntax_uid, pixel)
    _check_matches_request(header, affected_sop_class_uid, affected_sop_instance_uid)
    _check_sop_class(ds, header)
    if pixel is not None and header.sop_class_uid in contexts.IMAGE_SOP_CLASSES:
        _check_pixel_data(view, ds, header, pixel)
    _check_decodable(ds, 0)  # last: it converts the raw values the checks above read
    return header


# --- structure -------------------------------------------------------------------------------


def _element_header(
    view: memoryview, pos: int, end: int, implicit: bool
) -> tuple[int, bytes, int, int]:
    """Returns (tag, VR or b"", value length, value offset) of the element at ``pos``."""
    if pos + 8 > end:
        raise _StructureError(f"dataset ends inside an element header at byte {pos}")
    group, element = _TAG.unpack_from(view, pos)
    tag = group << 16 | element
    if implicit or group == 0xFFFE:
        return tag, b"", _U32.unpack_from(view, pos + 4)[0], pos + 8
    vr = view[pos + 4 : pos + 6].tobytes()
    if vr in LONG_LENGTH_VRS:
        if pos + 12 > end:
            raise _StructureError(f"dataset ends inside an element header at byte {pos}")
        return tag, vr, _U32.unpack_from(view, pos + 8)[0], pos + 12
    if not (b"AA" <= vr <= b"ZZ" and vr.isalpha() and vr.isupper()):
        raise _StructureError(
            f"element ({group:04X},{element:04X}) at byte {pos} has no valid VR "
            "(not a dataset in the agreed transfer syntax)"
        )
    return tag, vr, _U16.unpack_from(view, pos + 6)[0], pos + 8


def _walk_top_level(view: memoryview, implicit: bool) -> PixelDataLayout | None:
    end = len(view)
    if end == 0:
        raise _StructureError("the dataset is empty")
    pos = 0
    last_tag = -1
    pixel: PixelDataLayout | None = None
    while pos < end:
        start = pos
        tag, vr, length, value_pos = _element_header(view, pos, end, implicit)
        if tag <= last_tag:
            raise _StructureError(
                f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}) at byte {start} is out of order "
                "(not a dataset in the agreed transfer syntax)"
            )
        last_tag = tag
        if tag >> 16 in FORBIDDEN_TOP_LEVEL_GROUPS:
            raise _StructureError(
                f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}) at byte {start} does not belong "
                "in a dataset (command, File Meta or item tag)"
            )
        in_pixel = tag == PIXEL_DATA_TAG
        if in_pixel and vr and vr not in PIXEL_DATA_VRS:
            # UN of undefined length reads as a sequence (PS3.5 6.2.2): the stored file would
            # not read back (found by bench fuzz)
            raise _StructureError(
                f"pixel data with VR {vr.decode('ascii', 'replace')!r}, not OB or OW",
                in_pixel_data=False,
            )
        if length == UNDEFINED_LENGTH:
            if in_pixel:
                pos, items = _walk_items(view, value_pos, end, implicit, 1, fragments_only=True)
                if not items:
                    raise _StructureError("encapsulated pixel data has no Basic Offset Table item")
                pixel = PixelDataLayout(
                    element_offset=start,
                    encapsulated=True,
                    offset_table_entries=items[0][1] // 4,
                    fragments=tuple(items[1:]),
                )
            else:
                pos, _ = _walk_items(view, value_pos, end, implicit, 1, fragments_only=False)
        else:
            if value_pos + length > end:
                what = "pixel data" if in_pixel else f"element ({tag >> 16:04X},{tag & 0xFFFF:04X})"
                raise _StructureError(
                    f"{what} claims {length} bytes but only {end - value_pos} arrived "
                    "(truncated dataset)",
                    in_pixel_data=in_pixel,
                )
            if in_pixel:
                pixel = PixelDataLayout(
                    element_offset=start, encapsulated=False, native_length_bytes=length
                )
            pos = value_pos + length
    return pixel


def _walk_items(
    view: memoryview, pos: int, end: int, implicit: bool, depth: int, *, fragments_only: bool
) -> tuple[int, list[tuple[int, int]]]:
    """Walks an undefined-length sequence (or encapsulated pixel data) to its delimiter."""
    if depth > MAX_NESTING:
        raise _StructureError(f"sequences nested deeper than {MAX_NESTING} levels")
    items: list[tuple[int, int]] = []
    while True:
        tag, _, length, value_pos = _element_header(view, pos, end, True)
        if tag == SEQUENCE_DELIMITER_TAG:
            return value_pos, items
        if tag != ITEM_TAG:
            raise _StructureError(
                f"expected an item at byte {pos}, found ({tag >> 16:04X},{tag & 0xFFFF:04X})",
                in_pixel_data=fragments_only,
            )
        if length == UNDEFINED_LENGTH:
            if fragments_only:
                raise _StructureError("a pixel data fragment has undefined length")
            pos = _walk_nested_dataset(view, value_pos, end, implicit, depth + 1)
            continue
        if value_pos + length > end:
            raise _StructureError(
                f"an item of {length} bytes runs past the end of the dataset (truncated dataset)",
                in_pixel_data=fragments_only,
            )
        items.append((value_pos, length))
        pos = value_pos + length


def _walk_nested_dataset(view: memoryview, pos: int, end: int, implicit: bool, depth: int) -> int:
    """Walks an undefined-length item's dataset; returns the offset after its delimiter."""
    while True:
        tag, _, length, value_pos = _element_header(view, pos, end, implicit)
        if tag == ITEM_DELIMITER_TAG:
            return value_pos
        if length == UNDEFINED_LENGTH:
            pos, _ = _walk_items(view, value_pos, end, implicit, depth, fragments_only=False)
            continue
        if value_pos + length > end:
            raise _StructureError(
                f"a nested element of {length} bytes runs past the end of the dataset "
                "(truncated dataset)"
            )
        pos = value_pos + length


def _check_decodable(ds: Dataset, depth: int) -> None:
    """Every element in front of the pixel data converts to its value, nested ones too.

    The structural walk checks lengths only: an element whose VR was changed (an FD of two
    bytes), or a defined-length sequence whose items do not parse, would be stored and then
    break every reader of the file. The reason names the tag, never the value (PHI).
    """
    if depth > MAX_NESTING:
        raise InvalidInstanceError(
            CANNOT_PARSE, f"sequences nested deeper than {MAX_NESTING} levels"
        )
    for tag in list(ds.keys()):
        try:
            element = ds[tag]
            value = element.value
        except Exception as exc:  # pydicom raises many types for what it cannot convert
            raise InvalidInstanceError(
                CANNOT_PARSE, f"element {tag} cannot be decoded ({type(exc).__name__})"
            ) from None
        if element.VR == "SQ":
            for item in value:
                _check_decodable(item, depth + 1)


# --- attributes ------------------------------------------------------------------------------


def _header_from(
    ds: Dataset, transfer_syntax_uid: str, pixel: PixelDataLayout | None
) -> InstanceHeader:
    uids = {}
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        value = _text(ds, keyword)
        if not value:
            raise InvalidInstanceError(DATASET_DOES_NOT_MATCH_SOP_CLASS, f"{keyword} is missing")
        if len(value) > UID_MAX_CHARS or not UID_PATTERN.fullmatch(value):
            raise InvalidInstanceError(
                DATASET_DOES_NOT_MATCH_SOP_CLASS, f"{keyword} {value[:80]!r} is not a valid UID"
            )
        uids[keyword] = value
    frames = _integer(ds, "NumberOfFrames", _parse_is)
    if frames is not None and frames < 1:
        raise InvalidInstanceError(
            DATASET_DOES_NOT_MATCH_SOP_CLASS, f"NumberOfFrames is {frames}, must be at least 1"
        )
    return InstanceHeader(
        sop_class_uid=uids["SOPClassUID"],
        sop_instance_uid=uids["SOPInstanceUID"],
        study_instance_uid=uids["StudyInstanceUID"],
        series_instance_uid=uids["SeriesInstanceUID"],
        transfer_syntax_uid=transfer_syntax_uid,
        modality=_text(ds, "Modality"),
        number_of_frames=frames if frames is not None else 1,
        rows=_integer(ds, "Rows", _parse_us),
        columns=_integer(ds, "Columns", _parse_us),
        instance_number=_integer(ds, "InstanceNumber", _parse_is, lenient=True),
        series_number=_integer(ds, "SeriesNumber", _parse_is, lenient=True),
        series_description=_text(ds, "SeriesDescription"),
        protocol_name=_text(ds, "ProtocolName"),
        study_date=_date(_text(ds, "StudyDate")),
        study_time=_text(ds, "StudyTime"),
        study_description=_text(ds, "StudyDescription"),
        accession_number=_text(ds, "AccessionNumber"),
        referring_physician=_text(ds, "ReferringPhysicianName"),
        patient_id=_text(ds, "PatientID"),
        issuer_of_patient_id=_text(ds, "IssuerOfPatientID"),
        patient_name=_text(ds, "PatientName"),
        patient_birth_date=_date(_text(ds, "PatientBirthDate")),
        patient_sex=_text(ds, "PatientSex"),
        pixel_data=pixel,
    )


def _text(ds: Dataset, keyword: str) -> str:
    """The element's value as text ('' when absent or undecodable; multiple values joined)."""
    try:
        value = ds.get(keyword)
    except Exception:  # a malformed optional text value does not make the instance useless
        return ""
    if value is None:
        return ""
    if isinstance(value, list | tuple):  # MultiValue
        return "\\".join(str(v) for v in value).strip()
    if isinstance(value, bytes):
        return value.decode("ascii", "replace").strip(" \x00")
    return str(value).strip(" \x00")


def _raw_bytes(ds: Dataset, keyword: str) -> bytes | None:
    if keyword not in ds:
        return None
    element = ds.get_item(keyword)
    if isinstance(element, RawDataElement):
        return element.value or b""
    value: Any = element.value
    if value is None:
        return b""
    if isinstance(value, bytes):
        return value
    return str(value).encode("ascii", "replace")


def _parse_is(raw: bytes) -> int | None:
    text = raw.decode("ascii", "replace").strip(" \x00")
    if not text:
        return None
    value = int(text.split("\\")[0])
    if not IS_MIN <= value <= IS_MAX:
        # beyond what IS may hold, and beyond the database's integer columns (a 20-digit
        # Series Number made the insert fail: 0x0110 and a traceback, found by bench fuzz)
        raise ValueError(f"{value} is outside the IS range")
    return value


def _parse_us(raw: bytes) -> int | None:
    if not raw:
        return None
    if len(raw) < 2:
        raise ValueError(f"{len(raw)} bytes for an US value")
    return _U16.unpack_from(raw, 0)[0]


def _integer(
    ds: Dataset, keyword: str, parse: Callable[[bytes], int | None], *, lenient: bool = False
) -> int | None:
    """Decodes an integer from the raw value, so a malformed one is reported, not guessed."""
    raw = _raw_bytes(ds, keyword)
    if raw is None:
        return None
    try:
        return parse(raw)
    except ValueError:
        if lenient:  # informative only (instance and series numbers)
            return None
        raise InvalidInstanceError(
            DATASET_DOES_NOT_MATCH_SOP_CLASS, f"{keyword} has an invalid value {raw[:32]!r}"
        ) from None


def _date(text: str) -> dt.date | None:
    try:
        return dt.datetime.strptime(text[:8], "%Y%m%d").date() if len(text) >= 8 else None
    except ValueError:
        return None


# --- rules -----------------------------------------------------------------------------------


def _check_matches_request(header: InstanceHeader, sop_class: str, sop_instance: str) -> None:
    if header.sop_class_uid != sop_class:
        raise InvalidInstanceError(
            DATASET_DOES_NOT_MATCH_SOP_CLASS,
            f"dataset SOP Class UID {header.sop_class_uid} differs from the request's {sop_class}",
        )
    if header.sop_instance_uid != sop_instance:
        raise InvalidInstanceError(
            DATASET_DOES_NOT_MATCH_SOP_CLASS,
            f"dataset SOP Instance UID {header.sop_instance_uid} differs from the request's "
            f"{sop_instance}",
        )


def _check_sop_class(ds: Dataset, header: InstanceHeader) -> None:
    sop = header.sop_class_uid
    if sop in contexts.IMAGE_SOP_CLASSES:
        required = ["Rows", "Columns", "SamplesPerPixel", "BitsAllocated", "PixelData"]
        if sop in contexts.MULTIFRAME_SOP_CLASSES:
            required.insert(0, "NumberOfFrames")
        missing = [kw for kw in required if kw not in ds and not _has_pixel(kw, header)]
        if missing:
            raise InvalidInstanceError(
                DATASET_DOES_NOT_MATCH_SOP_CLASS,
                f"{contexts.sop_class_name(sop)} without {', '.join(missing)}",
            )
        _check_image_size(ds, header)
        return
    if header.pixel_data is not None:
        raise InvalidInstanceError(
            DATASET_DOES_NOT_MATCH_SOP_CLASS,
            f"{contexts.sop_class_name(sop)} carries Pixel Data, which the class has none of",
        )
    if sop == contexts.ENCAPSULATED_PDF and "EncapsulatedDocument" not in ds:
        raise InvalidInstanceError(
            DATASET_DOES_NOT_MATCH_SOP_CLASS, "Encapsulated PDF without EncapsulatedDocument"
        )
    if sop.startswith(SR_SOP_CLASS_PREFIX):
        missing = [kw for kw in ("ValueType", "ContentSequence") if kw not in ds]
        if missing or _text(ds, "ValueType") != "CONTAINER":
            what = f"without {', '.join(missing)}" if missing else "whose root is no CONTAINER"
            raise InvalidInstanceError(
                DATASET_DOES_NOT_MATCH_SOP_CLASS,
                f"{contexts.sop_class_name(sop)} {what} (no SR content)",
            )


def _check_image_size(ds: Dataset, header: InstanceHeader) -> None:
    """An image of 0 rows, columns, samples or bits has nothing to show or analyse."""
    values = {
        "Rows": header.rows,
        "Columns": header.columns,
        "SamplesPerPixel": _integer(ds, "SamplesPerPixel", _parse_us),
        "BitsAllocated": _integer(ds, "BitsAllocated", _parse_us),
    }
    empty = [f"{keyword} {value}" for keyword, value in values.items() if not value]
    if empty:
        raise InvalidInstanceError(
            DATASET_DOES_NOT_MATCH_SOP_CLASS,
            f"{contexts.sop_class_name(header.sop_class_uid)} with {', '.join(empty)}",
        )


def _has_pixel(keyword: str, header: InstanceHeader) -> bool:
    # the header was decoded without the pixel data element, which the walk found instead
    return keyword == "PixelData" and header.pixel_data is not None


def _check_pixel_data(
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
    samples = _integer(ds, "SamplesPerPixel", _parse_us) or 1
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
    samples = _integer(ds, "SamplesPerPixel", _parse_us) or 1
    bits = _integer(ds, "BitsAllocated", _parse_us) or 8
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
    samples = _integer(ds, "SamplesPerPixel", _parse_us) or 1
    bits = _integer(ds, "BitsAllocated", _parse_us) or 8
    if _text(ds, "PhotometricInterpretation") == "YBR_FULL_422":
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
