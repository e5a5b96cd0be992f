"""The image size a compressed frame's own header declares, read without decoding the frame.

A decoder allocates what the frame header says, not what the DICOM header (Rows, Columns)
says: a 15 KB JPEG whose SOF claims 16000 x 16000 is decoded into 256 MB. Reading the
declared size first lets ingest refuse such a loop and lets the decoders refuse such a frame
before any allocation. Covered here: JPEG (SOFn), JPEG-LS (SOF55, with the LSE oversize
dimension), JPEG 2000 (SIZ, bare or in a JP2 file) and JPEG XL (SizeHeader, bare or in its
container). RLE and native pixel data carry no size of their own: their decoders use Rows and
Columns. The kind of frame is told by its signature, so no transfer syntax is needed.
"""

from __future__ import annotations

from dataclasses import dataclass

from inference.errors import InferenceError

Buffer = bytes | bytearray | memoryview

# JPEG start-of-frame markers: FFC0-FFCF except DHT (C4), JPG (C8) and DAC (CC); FFF7 is SOF55
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_LS_SOF = 0xF7
_JPEG_LS_LSE = 0xF8
_JPEG_LSE_OVERSIZE = 4
_JPEG_SOS = 0xDA
_JPEG_EOI = 0xD9
_JPEG_STANDALONE = frozenset({0x01, 0xD8, *range(0xD0, 0xD8)})
J2K_SIGNATURE = b"\xff\x4f\xff\x51"  # SOC then SIZ, which the standard puts first
JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  "
JXL_CODESTREAM_SIGNATURE = b"\xff\x0a"
JXL_CONTAINER_SIGNATURE = b"\x00\x00\x00\x0cJXL \r\n\x87\n"
# JPEG XL SizeHeader aspect ratios (ISO/IEC 18181-1 D.2): xsize = ysize * num // den
_JXL_RATIOS = {1: (1, 1), 2: (12, 10), 3: (4, 3), 4: (3, 2), 5: (16, 9), 6: (5, 4), 7: (2, 1)}
_JXL_U32_BITS = (9, 13, 18, 30)


class FrameSizeError(InferenceError, ValueError):
    """A frame whose declared size cannot be read or exceeds what the DICOM header allows."""


@dataclass(frozen=True)
class DeclaredSize:
    """Rows, columns and samples (components) a frame header declares; ``samples`` is None
    where the header does not say (JPEG XL keeps it in later metadata)."""

    rows: int
    columns: int
    samples: int | None


def declared_size(frame: Buffer) -> DeclaredSize | None:
    """The size ``frame`` declares, or None when it has no header this module can read (an
    unknown signature, a malformed or cut-short header)."""
    data = memoryview(frame).cast("B")
    head = data[:12].tobytes()
    if head.startswith(b"\xff\xd8"):
        return _jpeg(data)
    if head.startswith(J2K_SIGNATURE):
        return _j2k_codestream(data)
    if head.startswith(JP2_SIGNATURE):
        content = _box_content(data, b"jp2c")
        return _j2k_codestream(content) if content is not None else None
    if head.startswith(JXL_CODESTREAM_SIGNATURE):
        return _jxl_codestream(data)
    if head.startswith(JXL_CONTAINER_SIGNATURE):
        return _jxl_container(data)
    return None


def mismatch(size: DeclaredSize, rows: int, columns: int, samples: int) -> str:
    """Why a frame declaring ``size`` does not belong to an image of Rows x Columns with
    ``samples`` samples per pixel; "" when it does. For ingest: the size must be exact."""
    if size.rows < 1 or size.columns < 1:
        return f"the frame header declares no usable size ({size.rows} x {size.columns})"
    if (size.rows, size.columns) != (rows, columns):
        return (
            f"the frame header declares {size.rows} x {size.columns}, Rows x Columns are "
            f"{rows} x {columns}"
        )
    if size.samples is not None and size.samples > samples:
        return f"the frame header declares {size.samples} components, SamplesPerPixel is {samples}"
    return ""


def check_decodable(frame: Buffer, rows: int, columns: int, samples: int) -> None:
    """Raises ``FrameSizeError`` unless ``frame`` declares at most Rows x Columns x samples
    values: the cap on what a decoder may allocate for it. A frame whose size cannot be read
    is refused too, since nothing then bounds the decoder."""
    size = declared_size(frame)
    if size is None:
        raise FrameSizeError("the frame has no readable header, so its size cannot be bounded")
    if size.rows < 1 or size.columns < 1:
        raise FrameSizeError(
            f"the frame header declares no usable size ({size.rows} x {size.columns})"
        )
    declared = size.rows * size.columns * (size.samples or samples)
    if declared > rows * columns * samples:
        raise FrameSizeError(
            f"the frame header declares {size.rows} x {size.columns} x {size.samples or samples}"
            f", more than Rows x Columns x SamplesPerPixel ({rows} x {columns} x {samples})"
        )


# --- JPEG and JPEG-LS ------------------------------------------------------------------------


def _u16(data: memoryview, pos: int) -> int:
    return data[pos] << 8 | data[pos + 1]


def _jpeg(data: memoryview) -> DeclaredSize | None:
    """Walks the marker segments from SOI to the first SOS."""
    end = len(data)
    pos = 2
    found: DeclaredSize | None = None
    oversize = (0, 0)
    while pos + 2 <= end:
        if data[pos] != 0xFF:
            return None  # not at a marker: a malformed header
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _JPEG_STANDALONE:
            pos += 2
            continue
        if marker in (_JPEG_SOS, _JPEG_EOI):
            break
        if pos + 4 > end:
            return None
        length = _u16(data, pos + 2)
        if length < 2 or pos + 2 + length > end:
            return None
        segment = data[pos + 4 : pos + 2 + length]
        if marker in _JPEG_SOF or marker == _JPEG_LS_SOF:
            if len(segment) < 6:
                return None
            found = DeclaredSize(_u16(segment, 1), _u16(segment, 3), segment[5])
        elif marker == _JPEG_LS_LSE and len(segment) >= 2 and segment[0] == _JPEG_LSE_OVERSIZE:
            width = segment[1]  # bytes per dimension (ITU-T T.870 C.2.4.1.4)
            if len(segment) < 2 + 2 * width:
                return None
            oversize = (
                int.from_bytes(segment[2 : 2 + width], "big"),
                int.from_bytes(segment[2 + width : 2 + 2 * width], "big"),
            )
        pos += 2 + length
    if found is None:
        return None
    # JPEG-LS sizes beyond 16 bits travel in the LSE segment; take the larger either way
    rows, columns = max(found.rows, oversize[0]), max(found.columns, oversize[1])
    return DeclaredSize(rows, columns, found.samples)


# --- JPEG 2000 -------------------------------------------------------------------------------


def _u32(data: memoryview, pos: int) -> int:
    return int.from_bytes(data[pos : pos + 4], "big")


def _j2k_codestream(data: memoryview) -> DeclaredSize | None:
    """SIZ (ISO/IEC 15444-1 A.5.1): the image area is Xsiz - XOsiz by Ysiz - YOsiz."""
    if data[:4].tobytes() != J2K_SIGNATURE or len(data) < 42 or _u16(data, 4) < 41:
        return None
    x_size, y_size, x_offset, y_offset = (_u32(data, p) for p in (8, 12, 16, 20))
    return DeclaredSize(max(y_size - y_offset, 0), max(x_size - x_offset, 0), _u16(data, 40))


def _box_content(data: memoryview, box_type: bytes) -> memoryview | None:
    """The content of the first top-level ISOBMFF / JP2 box of ``box_type``."""
    pos, end = 0, len(data)
    while pos + 8 <= end:
        length = _u32(data, pos)
        kind = data[pos + 4 : pos + 8].tobytes()
        header = 8
        if length == 1:
            if pos + 16 > end:
                return None
            length = int.from_bytes(data[pos + 8 : pos + 16], "big")
            header = 16
        elif length == 0:
            length = end - pos
        if length < header:
            return None
        if kind == box_type:
            return data[pos + header : min(pos + length, end)]
        pos += length
    return None


# --- JPEG XL ---------------------------------------------------------------------------------


class _Bits:
    """ISO/IEC 18181-1's bit reader: least significant bit of each byte first."""

    def __init__(self, data: memoryview) -> None:
        self._data = data
        self._pos = 0

    def read(self, count: int) -> int:
        value = 0
        for i in range(count):
            byte = self._pos >> 3
            if byte >= len(self._data):
                raise IndexError("the JPEG XL header is cut short")
            value |= ((self._data[byte] >> (self._pos & 7)) & 1) << i
            self._pos += 1
        return value

    def dimension(self, div8: int) -> int:
        if div8:
            return (self.read(5) + 1) * 8
        return self.read(_JXL_U32_BITS[self.read(2)]) + 1


def _jxl_codestream(data: memoryview) -> DeclaredSize | None:
    """SizeHeader, then the orientation in ImageMetadata (5 to 8 transpose the image)."""
    bits = _Bits(data[2:])
    try:
        div8 = bits.read(1)
        rows = bits.dimension(div8)
        ratio = bits.read(3)
        if ratio:
            num, den = _JXL_RATIOS[ratio]
            columns = rows * num // den
        else:
            columns = bits.dimension(div8)
        orientation = 1
        if not bits.read(1) and bits.read(1):  # not all_default, and extra_fields
            orientation = bits.read(3) + 1
    except IndexError:
        return None
    if orientation > 4:
        rows, columns = columns, rows
    return DeclaredSize(rows, columns, None)


def _jxl_container(data: memoryview) -> DeclaredSize | None:
    content = _box_content(data, b"jxlc")
    if content is None:
        partial = _box_content(data, b"jxlp")  # the first part: a 4-byte index, then bytes
        content = partial[4:] if partial is not None else None
    if content is None or content[:2].tobytes() != JXL_CODESTREAM_SIGNATURE:
        return None
    return _jxl_codestream(content)
