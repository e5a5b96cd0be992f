"""The walk over a dataset's encoded element headers: proves that no element runs past the end,
sequences close and nesting stays bounded, without copying the pixel data.
"""

from __future__ import annotations

import struct

from pydicom.dataset import Dataset

from pacs_agent.dicom.status import (
    CANNOT_PARSE,
)
from pacs_agent.dicom.validate_types import InvalidInstanceError, PixelDataLayout, StructureError

PIXEL_DATA_TAG = 0x7FE00010
ITEM_TAG = 0xFFFEE000
ITEM_DELIMITER_TAG = 0xFFFEE00D
SEQUENCE_DELIMITER_TAG = 0xFFFEE0DD
UNDEFINED_LENGTH = 0xFFFFFFFF
# Explicit VRs whose length field is 4 bytes after 2 reserved bytes (PS3.5 7.1.2)
LONG_LENGTH_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
# Sequence nesting deeper than this is not an echo dataset but an attempt to exhaust the stack.
MAX_NESTING = 32
# Groups no dataset holds at its top level: command elements (0000), File Meta (0002: a reader
# of the stored file takes them for the file's own, Transfer Syntax UID included) and item or
# delimitation tags (FFFE), which belong inside sequences only. Found by ``bench fuzz``.
FORBIDDEN_TOP_LEVEL_GROUPS = frozenset({0x0000, 0x0002, 0xFFFE})
# Pixel Data is OB or OW in an explicit VR syntax (PS3.5 8.2; OB when encapsulated, A.4)
PIXEL_DATA_VRS = frozenset({b"OB", b"OW"})
U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_TAG = struct.Struct("<HH")


def _element_header(
    view: memoryview, pos: int, end: int, implicit: bool
) -> tuple[int, bytes, int, int]:
    """Returns (tag, VR or b"", value length, value offset) of the element at ``pos``."""
    if pos + 8 > end:
        raise StructureError(f"dataset ends inside an element header at byte {pos}")
    group, element = _TAG.unpack_from(view, pos)
    tag = group << 16 | element
    if implicit or group == 0xFFFE:
        return tag, b"", _U32.unpack_from(view, pos + 4)[0], pos + 8
    vr = view[pos + 4 : pos + 6].tobytes()
    if vr in LONG_LENGTH_VRS:
        if pos + 12 > end:
            raise StructureError(f"dataset ends inside an element header at byte {pos}")
        return tag, vr, _U32.unpack_from(view, pos + 8)[0], pos + 12
    if not (b"AA" <= vr <= b"ZZ" and vr.isalpha() and vr.isupper()):
        raise StructureError(
            f"element ({group:04X},{element:04X}) at byte {pos} has no valid VR "
            "(not a dataset in the agreed transfer syntax)"
        )
    return tag, vr, U16.unpack_from(view, pos + 6)[0], pos + 8


def walk_top_level(view: memoryview, implicit: bool) -> PixelDataLayout | None:
    end = len(view)
    if end == 0:
        raise StructureError("the dataset is empty")
    pos = 0
    last_tag = -1
    pixel: PixelDataLayout | None = None
    while pos < end:
        start = pos
        tag, vr, length, value_pos = _element_header(view, pos, end, implicit)
        if tag <= last_tag:
            raise StructureError(
                f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}) at byte {start} is out of order "
                "(not a dataset in the agreed transfer syntax)"
            )
        last_tag = tag
        if tag >> 16 in FORBIDDEN_TOP_LEVEL_GROUPS:
            raise StructureError(
                f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}) at byte {start} does not belong "
                "in a dataset (command, File Meta or item tag)"
            )
        in_pixel = tag == PIXEL_DATA_TAG
        if in_pixel and vr and vr not in PIXEL_DATA_VRS:
            # UN of undefined length reads as a sequence (PS3.5 6.2.2): the stored file would
            # not read back (found by bench fuzz)
            raise StructureError(
                f"pixel data with VR {vr.decode('ascii', 'replace')!r}, not OB or OW",
                in_pixel_data=False,
            )
        if length == UNDEFINED_LENGTH:
            if in_pixel:
                pos, items = _walk_items(view, value_pos, end, implicit, 1, fragments_only=True)
                if not items:
                    raise StructureError("encapsulated pixel data has no Basic Offset Table item")
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
                raise StructureError(
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
        raise StructureError(f"sequences nested deeper than {MAX_NESTING} levels")
    items: list[tuple[int, int]] = []
    while True:
        tag, _, length, value_pos = _element_header(view, pos, end, True)
        if tag == SEQUENCE_DELIMITER_TAG:
            return value_pos, items
        if tag != ITEM_TAG:
            raise StructureError(
                f"expected an item at byte {pos}, found ({tag >> 16:04X},{tag & 0xFFFF:04X})",
                in_pixel_data=fragments_only,
            )
        if length == UNDEFINED_LENGTH:
            if fragments_only:
                raise StructureError("a pixel data fragment has undefined length")
            pos = _walk_nested_dataset(view, value_pos, end, implicit, depth + 1)
            continue
        if value_pos + length > end:
            raise StructureError(
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
            raise StructureError(
                f"a nested element of {length} bytes runs past the end of the dataset "
                "(truncated dataset)"
            )
        pos = value_pos + length


def check_decodable(ds: Dataset, depth: int) -> None:
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
                check_decodable(item, depth + 1)
