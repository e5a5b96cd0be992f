"""The fuzz cases' encoded datasets, element by element: where every element, item, delimiter
and fragment sits (``index_elements``), and byte-level edits that keep the rest intact.

Mutations work on these bytes rather than on pydicom datasets, because pydicom would refuse to
write most of the broken objects.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.datadict import dictionary_VR

TAG = struct.Struct("<HH")
U16 = struct.Struct("<H")
U32 = struct.Struct("<I")
UNDEFINED_LENGTH = 0xFFFFFFFF
ITEM_TAG = 0xFFFEE000
ITEM_DELIMITER_TAG = 0xFFFEE00D
SEQUENCE_DELIMITER_TAG = 0xFFFEE0DD
PIXEL_DATA_TAG = 0x7FE00010
SOP_INSTANCE_UID_TAG = 0x00080018
SERIES_INSTANCE_UID_TAG = 0x0020000E
LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
# fmt: off
SHORT_VRS = (
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"PN",
    b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US",
)
# fmt: on


@dataclass(frozen=True)
class Element:
    """Where one element (or item, delimiter, fragment) sits in an encoded dataset.

    ``stop`` is the offset after it, delimiters included; ``depth`` 0 is the top level.
    """

    tag: int
    vr: bytes
    start: int
    length_at: int
    length_bytes: int
    length: int
    value_at: int
    stop: int
    depth: int
    kind: str  # element, sequence, item, item_end, seq_end, pixel_encapsulated, fragment

    @property
    def top_level(self) -> bool:
        return self.depth == 0


def index_elements(data: bytes, implicit: bool) -> list[Element]:
    """Every element of a well-formed encoded dataset, items and fragments included, in order."""
    out: list[Element] = []
    _index_dataset(data, 0, len(data), implicit, 0, out, in_item=False)
    return out


def element_header(data: bytes, pos: int, implicit: bool) -> tuple[int, bytes, int, int, int, int]:
    group, number = TAG.unpack_from(data, pos)
    tag = group << 16 | number
    if implicit or group == 0xFFFE:
        return tag, b"", pos + 4, 4, U32.unpack_from(data, pos + 4)[0], pos + 8
    vr = data[pos + 4 : pos + 6]
    if vr in LONG_VRS:
        return tag, vr, pos + 8, 4, U32.unpack_from(data, pos + 8)[0], pos + 12
    return tag, vr, pos + 6, 2, U16.unpack_from(data, pos + 6)[0], pos + 8


def _is_sequence(tag: int, vr: bytes, length: int, implicit: bool) -> bool:
    if not implicit:
        return vr == b"SQ"
    if length == UNDEFINED_LENGTH:
        return True

    try:
        return dictionary_VR(tag) == "SQ"
    except KeyError:
        return False


def _index_dataset(
    data: bytes,
    pos: int,
    end: int,
    implicit: bool,
    depth: int,
    out: list[Element],
    *,
    in_item: bool,
) -> int:
    while pos < end:
        tag, vr, length_at, length_bytes, length, value_at = element_header(data, pos, implicit)
        if in_item and tag == ITEM_DELIMITER_TAG:
            out.append(
                Element(tag, b"", pos, length_at, 4, length, value_at, value_at, depth, "item_end")
            )
            return value_at
        slot = len(out)
        if tag == PIXEL_DATA_TAG and length == UNDEFINED_LENGTH:
            stop = _index_items(data, value_at, implicit, depth + 1, out, fragments=True)
            kind = "pixel_encapsulated"
        elif _is_sequence(tag, vr, length, implicit):
            if length == UNDEFINED_LENGTH:
                stop = _index_items(data, value_at, implicit, depth + 1, out, fragments=False)
            else:
                stop = value_at + length
                _index_items(data, value_at, implicit, depth + 1, out, fragments=False, end=stop)
            kind = "sequence"
        else:
            stop = value_at + length
            kind = "element"
        element = Element(
            tag, vr, pos, length_at, length_bytes, length, value_at, stop, depth, kind
        )
        out.insert(slot, element)
        pos = stop
    return pos


def _index_items(
    data: bytes,
    pos: int,
    implicit: bool,
    depth: int,
    out: list[Element],
    *,
    fragments: bool,
    end: int | None = None,
) -> int:
    limit = len(data) if end is None else end
    while pos < limit:
        tag, _, length_at, _, length, value_at = element_header(data, pos, True)
        if tag == SEQUENCE_DELIMITER_TAG:
            out.append(
                Element(tag, b"", pos, length_at, 4, length, value_at, value_at, depth, "seq_end")
            )
            return value_at
        slot = len(out)
        if fragments:
            stop, kind = value_at + length, "fragment"
        elif length == UNDEFINED_LENGTH:
            stop = _index_dataset(data, value_at, len(data), implicit, depth, out, in_item=True)
            kind = "item"
        else:
            stop, kind = value_at + length, "item"
            _index_dataset(data, value_at, stop, implicit, depth, out, in_item=False)
        out.insert(slot, Element(tag, b"", pos, length_at, 4, length, value_at, stop, depth, kind))
        pos = stop
    return pos


def encode_element(tag: int, vr: bytes, value: bytes, implicit: bool) -> bytes:
    """One element's bytes; the length field wraps for a short-VR value over 64 KiB (which
    is then a mutation of its own)."""
    head = TAG.pack(tag >> 16, tag & 0xFFFF)
    if implicit:
        return head + U32.pack(len(value)) + value
    if vr in LONG_VRS:
        return head + vr + b"\x00\x00" + U32.pack(len(value)) + value
    return head + vr + U16.pack(len(value) & 0xFFFF) + value


def tag_text(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def splice(data: bytes, start: int, stop: int, new: bytes = b"") -> bytes:
    return data[:start] + new + data[stop:]


def with_length(data: bytes, element: Element, length: int) -> bytes:
    packer = U32 if element.length_bytes == 4 else U16
    mask = 0xFFFFFFFF if element.length_bytes == 4 else 0xFFFF
    start = element.length_at
    return splice(data, start, start + element.length_bytes, packer.pack(length & mask))


def top_element(elements: Sequence[Element], tag: int) -> Element | None:
    return next((e for e in elements if e.top_level and e.tag == tag), None)


def replace_value(data: bytes, element: Element, value: bytes, implicit: bool) -> bytes:
    vr = element.vr or dictionary_vr(element.tag)
    return splice(
        data, element.start, element.stop, encode_element(element.tag, vr, value, implicit)
    )


def dictionary_vr(tag: int) -> bytes:
    try:
        return dictionary_VR(tag).split(" ")[0].encode()
    except KeyError:
        return b"UN"


def insert_top(data: bytes, elements: Sequence[Element], tag: int, raw: bytes) -> bytes:
    """``raw`` at the top-level position where ``tag`` belongs (before the first larger tag)."""
    after = next((e for e in elements if e.top_level and e.tag > tag), None)
    at = after.start if after is not None else len(data)
    return splice(data, at, at, raw)


def uid_bytes(uid: str) -> bytes:
    raw = uid.encode("ascii")
    return raw + b"\x00" * (len(raw) % 2)


def even(text: bytes, pad: bytes = b" ") -> bytes:
    return text + pad * (len(text) % 2)
