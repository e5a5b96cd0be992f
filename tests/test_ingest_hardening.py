"""Ingest refuses objects that lie about their size or are not what their class says (issue #15
items 3 and 4), and the decoders refuse a frame whose header claims more than Rows x Columns.

Frames are real encoder output (Pillow JPEG, pydicom's JPEG-LS and JPEG 2000, libjxl) with
their size fields rewritten, or minimal hand-built headers, sent over DICOM to a running SCP.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from dicom_helpers import (
    Ids,
    encode_dataset,
    fake_encapsulated,
    send_raw,
    us_loop_dataset,
    with_meta,
    write_instance,
)
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import (
    ComprehensiveSRStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    UltrasoundMultiFrameImageStorage,
)

from inference.decode import DecodeError, read_cine
from inference.frame_size import DeclaredSize, declared_size
from inference.jpegxl import JPEG_XL_LOSSLESS, JpegXLError, decode_jpeg_xl
from pacs_agent.config import Config, DatabaseConfig, DicomConfig
from pacs_agent.db import make_engine, upgrade
from pacs_agent.db.models import Instance
from pacs_agent.dicom import StorageSCP, start_storage_scp, status
from pacs_agent.store import INCOMING_DIR_NAME

HOST = "127.0.0.1"
ROWS, COLUMNS, FRAMES = 64, 80, 2
HUGE = 16000


class _Node:
    def __init__(self, scp: StorageSCP, config: Config, engine: sa.Engine) -> None:
        self.scp, self.config, self.engine = scp, config, engine

    def stored(self) -> int:
        with sa.orm.Session(self.engine) as session:
            rows = int(session.scalar(sa.select(sa.func.count()).select_from(Instance)) or 0)
        files = [
            p for p in self.config.store_path.rglob("*") if p.is_file()
            and INCOMING_DIR_NAME not in p.parts
        ]
        return rows + len(files)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[_Node]:
    url = f"sqlite:///{tmp_path / 'echo-agent.db'}"
    config = Config(
        home=str(tmp_path / "home"),
        dicom=DicomConfig(port=0, min_free_disk_mb=0),
        database=DatabaseConfig(url=url),
    )
    upgrade(url)
    engine = make_engine(url)
    made = _Node(start_storage_scp(config, engine), config, engine)
    yield made
    made.scp.shutdown(timeout_s=5)
    engine.dispose()


# --- frames ----------------------------------------------------------------------------------


def _gradient(rows: int = ROWS, columns: int = COLUMNS) -> np.ndarray:
    return (np.indices((rows, columns)).sum(axis=0) * 3 % 256).astype(np.uint8)


def _jpeg_frame(rows: int = ROWS, columns: int = COLUMNS) -> bytes:
    out = io.BytesIO()
    Image.fromarray(_gradient(rows, columns)).save(out, format="JPEG", quality=90)
    return out.getvalue()


def _compressed_frames(syntax: str) -> list[bytes]:
    ds = with_meta(us_loop_dataset(Ids.new(), rows=ROWS, columns=COLUMNS, frames=FRAMES),
                   ExplicitVRLittleEndian)
    ds.compress(syntax)
    return list(generate_frames(ds.PixelData, number_of_frames=FRAMES))


def _jxl_frame(rows: int = ROWS, columns: int = COLUMNS) -> bytes:
    out = io.BytesIO()
    Image.fromarray(_gradient(rows, columns)).save(out, format="JXL", lossless=True)
    return out.getvalue()


def _lie_jpeg(frame: bytes, rows: int, columns: int) -> bytes:
    """Rewrites the SOF0 (Pillow) or SOF55 (JPEG-LS) height and width."""
    at = max(frame.find(b"\xff\xc0"), frame.find(b"\xff\xf7"))
    assert at > 0
    return frame[: at + 5] + struct.pack(">HH", rows, columns) + frame[at + 9 :]


def _lie_j2k(frame: bytes, rows: int, columns: int) -> bytes:
    """Rewrites Xsiz and Ysiz of the SIZ segment (the image offsets stay 0)."""
    assert frame[:4] == b"\xff\x4f\xff\x51"
    return frame[:8] + struct.pack(">II", columns, rows) + frame[16:]


def _jxl_size_header(rows: int, columns: int) -> bytes:
    """A JPEG XL codestream signature and SizeHeader (ISO/IEC 18181-1 D.2), nothing else."""
    bits: list[int] = []

    def put(value: int, count: int) -> None:
        bits.extend((value >> i) & 1 for i in range(count))

    put(0, 1)  # not a multiple of 8
    put(2, 2)
    put(rows - 1, 18)  # U32 selector 2: 1 + u(18)
    put(0, 3)  # no ratio: the width follows
    put(2, 2)
    put(columns - 1, 18)
    bits.extend([0] * (-len(bits) % 8))
    data = bytes(
        sum(bit << i for i, bit in enumerate(bits[n : n + 8])) for n in range(0, len(bits), 8)
    )
    return b"\xff\x0a" + data + bytes(16)


def _jpeg_ls_header(rows: int, columns: int) -> bytes:
    sof55 = b"\xff\xf7\x00\x0b\x08" + struct.pack(">HH", rows, columns) + b"\x01\x01\x11\x00"
    return b"\xff\xd8" + sof55 + b"\xff\xd9"


def _j2k_header(rows: int, columns: int) -> bytes:
    siz = struct.pack(">HHIIIIIIIIH", 41, 0, columns, rows, 0, 0, columns, rows, 0, 0, 1)
    return b"\xff\x4f\xff\x51" + siz + b"\x07\x01\x01" + b"\xff\xd9"


def test_declared_sizes_of_real_encoder_output_match_the_image() -> None:
    assert declared_size(_jpeg_frame()) == DeclaredSize(ROWS, COLUMNS, 1)
    colour = io.BytesIO()
    Image.fromarray(np.zeros((30, 50, 3), np.uint8)).save(colour, format="JPEG")
    assert declared_size(colour.getvalue()) == DeclaredSize(30, 50, 3)
    for syntax in (JPEGLSLossless, JPEG2000Lossless):
        for frame in _compressed_frames(syntax):
            assert declared_size(frame) == DeclaredSize(ROWS, COLUMNS, 1), syntax
    assert declared_size(_jxl_frame()) == DeclaredSize(ROWS, COLUMNS, None)
    assert declared_size(_jxl_frame(48, 48)) == DeclaredSize(48, 48, None)  # div8 form
    assert declared_size(_jxl_size_header(HUGE, 65500)) == DeclaredSize(HUGE, 65500, None)
    assert declared_size(_jpeg_ls_header(HUGE, HUGE)) == DeclaredSize(HUGE, HUGE, 1)
    assert declared_size(_j2k_header(HUGE, HUGE)) == DeclaredSize(HUGE, HUGE, 1)
    assert declared_size(b"\xff\xd8\xff\xe0" + bytes(60)) is None  # no readable header
    assert declared_size(b"not a frame") is None


# --- item 3: frame headers that lie, at ingest ------------------------------------------------

LYING_FRAMES: dict[str, tuple[str, Callable[[], bytes]]] = {
    "jpeg_sof0": (JPEGBaseline8Bit, lambda: _lie_jpeg(_jpeg_frame(), HUGE, HUGE)),
    "jpeg_sof0_65500": (JPEGBaseline8Bit, lambda: _lie_jpeg(_jpeg_frame(), 65500, 65500)),
    "jpeg_ls_sof55": (
        JPEGLSLossless, lambda: _lie_jpeg(_compressed_frames(JPEGLSLossless)[0], HUGE, HUGE)
    ),
    "jpeg_2000_siz": (
        JPEG2000Lossless, lambda: _lie_j2k(_compressed_frames(JPEG2000Lossless)[0], HUGE, HUGE)
    ),
    "jpeg_xl_size_header": (JPEG_XL_LOSSLESS, lambda: _jxl_size_header(HUGE, HUGE)),
    "jpeg_smaller_than_header": (JPEGBaseline8Bit, lambda: _lie_jpeg(_jpeg_frame(), 8, 8)),
}


def _loop_with_frames(ids: Ids, frames: list[bytes]) -> bytes:
    ds = us_loop_dataset(ids, rows=ROWS, columns=COLUMNS, frames=len(frames))
    ds.PixelData = fake_encapsulated(frames)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return encode_dataset(ds, ExplicitVRLittleEndian)


@pytest.mark.parametrize("case", sorted(LYING_FRAMES))
def test_a_frame_header_that_contradicts_rows_and_columns_is_refused(
    node: _Node, tmp_path: Path, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    syntax, lie = LYING_FRAMES[case]
    honest = _jxl_frame() if syntax == JPEG_XL_LOSSLESS else (
        _jpeg_frame() if syntax == JPEGBaseline8Bit else _compressed_frames(syntax)[0]
    )
    ids = Ids.new()
    data = _loop_with_frames(ids, [honest, lie()])  # the second frame lies
    assert len(data) < 20_000
    with caplog.at_level("WARNING", logger="echo_agent.dicom"):
        result = send_raw(
            HOST, node.scp.port, tmp_path, UltrasoundMultiFrameImageStorage, ids.sop, syntax, data
        )
    assert result == status.DATASET_DOES_NOT_MATCH_SOP_CLASS, f"0x{result:04X}"
    assert node.stored() == 0
    lines = [r.getMessage() for r in caplog.records if ids.sop in r.getMessage()]
    assert lines and "frame 2" in lines[0] and "Rows" in lines[0], lines
    assert all("Test^Patient" not in r.getMessage() for r in caplog.records)
    # the same loop told the truth is stored
    good = Ids.new()
    data = _loop_with_frames(good, [honest, honest])
    assert send_raw(
        HOST, node.scp.port, tmp_path, UltrasoundMultiFrameImageStorage, good.sop, syntax, data
    ) == status.SUCCESS
    assert node.stored() == 2  # its row and its file


# --- item 3: the decoders cap what a frame may claim -----------------------------------------


def test_decoding_refuses_a_jpeg_frame_larger_than_the_header(tmp_path: Path) -> None:
    ds = us_loop_dataset(Ids.new(), rows=ROWS, columns=COLUMNS, frames=2)
    path = write_instance(tmp_path / "jpeg.dcm", ds, JPEGBaseline8Bit)
    loop = dcmread(path)
    frames = list(generate_frames(loop.PixelData, number_of_frames=2))
    loop.PixelData = encapsulate([frames[0], _lie_jpeg(frames[1], HUGE, HUGE)])
    with pytest.raises(DecodeError, match="declares 16000 x 16000"):
        read_cine(loop)


def test_decoding_refuses_a_jpeg_xl_frame_larger_than_the_header() -> None:
    ds = us_loop_dataset(Ids.new(), rows=ROWS, columns=COLUMNS, frames=1)
    ds.PixelData = encapsulate([_jxl_size_header(HUGE, HUGE)])
    with_meta(ds, JPEG_XL_LOSSLESS)
    with pytest.raises(JpegXLError, match="declares 16000 x 16000"):
        decode_jpeg_xl(ds, 0)


# --- item 4: objects that are not what their class says --------------------------------------


def _empty_image(ids: Ids) -> bytes:
    ds = us_loop_dataset(ids, frames=1)
    ds.Rows = 0
    ds.Columns = 0
    ds.PixelData = b""
    return encode_dataset(ds, ExplicitVRLittleEndian)


def _sr(ids: Ids, *, content: bool, pixels: bool) -> bytes:
    ds = Dataset()
    ds.SOPClassUID = ComprehensiveSRStorage
    ds.SOPInstanceUID = ids.sop
    ds.StudyInstanceUID = ids.study
    ds.SeriesInstanceUID = ids.series
    ds.PatientName = "Test^Patient"
    ds.Modality = "SR"
    if content:
        item = Dataset()
        item.RelationshipType = "CONTAINS"
        item.ValueType = "TEXT"
        item.TextValue = "LV normal"
        ds.ValueType = "CONTAINER"
        ds.ContinuityOfContent = "SEPARATE"
        ds.ContentSequence = [item]
    if pixels:
        ds.Rows = 8
        ds.Columns = 8
        ds.SamplesPerPixel = 1
        ds.BitsAllocated = 8
        ds.PixelData = bytes(64)
    return encode_dataset(ds, ExplicitVRLittleEndian)


INVALID_OBJECTS: dict[str, tuple[str, Callable[[Ids], bytes]]] = {
    "image_of_zero_rows_and_columns": (UltrasoundMultiFrameImageStorage, _empty_image),
    "sr_with_pixels_and_no_content": (
        ComprehensiveSRStorage, lambda ids: _sr(ids, content=False, pixels=True)
    ),
    "sr_without_content": (
        ComprehensiveSRStorage, lambda ids: _sr(ids, content=False, pixels=False)
    ),
    "sr_with_content_and_pixels": (
        ComprehensiveSRStorage, lambda ids: _sr(ids, content=True, pixels=True)
    ),
}


@pytest.mark.parametrize("case", sorted(INVALID_OBJECTS))
def test_an_object_that_is_not_what_its_class_says_is_refused(
    node: _Node, tmp_path: Path, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    sop_class, build = INVALID_OBJECTS[case]
    ids = Ids.new()
    with caplog.at_level("WARNING", logger="echo_agent.dicom"):
        result = send_raw(
            HOST, node.scp.port, tmp_path, sop_class, ids.sop, ExplicitVRLittleEndian, build(ids)
        )
    assert result == status.DATASET_DOES_NOT_MATCH_SOP_CLASS, f"0x{result:04X}"
    assert node.stored() == 0
    assert any(ids.sop in r.getMessage() for r in caplog.records)
    assert all("Test^Patient" not in r.getMessage() for r in caplog.records)


def test_an_sr_with_content_and_no_pixels_is_stored(node: _Node, tmp_path: Path) -> None:
    ids = Ids.new()
    data = _sr(ids, content=True, pixels=False)
    assert send_raw(
        HOST, node.scp.port, tmp_path, ComprehensiveSRStorage, ids.sop, ExplicitVRLittleEndian,
        data,
    ) == status.SUCCESS
    assert node.stored() == 2
