"""JPEG XL loops (transfer syntaxes 1.2.840.10008.1.2.4.110 lossless, .111 JPEG recompression,
.112 lossy), as current GE scanners write them: a phantom loop's frames are encoded with libjxl
(pillow-jxl-plugin), put in an encapsulated multi-frame dataset, decoded by the node's decoder
(lossless: exactly the pixels that went in), checked by ingest validation, and sent to a
running Storage SCP over a real association, which accepts and stores them byte for byte.

pydicom 3.0 cannot write these files (it refuses the unknown transfer syntax), so the dataset
is encoded explicit VR little endian (what every encapsulated syntax uses) behind a File Meta
that names the JPEG XL syntax. dcmtk 3.6.7's storescu has no option to propose JPEG XL, so the
sender here is pynetdicom, sending each file's dataset bytes unchanged.
"""

from __future__ import annotations

import copy
import dataclasses
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
import sqlalchemy as sa
from dicom_helpers import dataset_bytes, encode_dataset, send_files, write_raw_file
from orthanc_helpers import phantom_cache
from PIL import Image
from pillow_jxl import Encoder
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from reporting_helpers import SEED_ONE_STUDY, a4c_paths

from inference.decode import DecodeError, FrameReader, read_cine
from inference.jpegxl import (
    JPEG_XL,
    JPEG_XL_JPEG_RECOMPRESSION,
    JPEG_XL_LOSSLESS,
    frames_at,
)
from pacs_agent.config import Config, DatabaseConfig, DicomConfig, SelectionConfig
from pacs_agent.db import make_engine, upgrade
from pacs_agent.db.models import Instance
from pacs_agent.dicom import contexts, start_storage_scp, status
from pacs_agent.dicom.validate import InvalidInstanceError, inspect_dataset
from pacs_agent.selection import select_loop

N_FRAMES = 32  # more than one heart cycle: the lossless loop is one the node would analyse
N_SHORT = 8  # the lossy encoders are slower; a few frames show what they do
LOSSY_QUALITY = 90


@dataclasses.dataclass(frozen=True)
class Source:
    header: Dataset  # the phantom loop's header, without pixel data
    rgb: np.ndarray  # its first N_FRAMES frames as the node decodes them (RGB uint8)
    jpeg_frames: list[bytes]  # the same frames as the scanner encoded them (JPEG baseline)


@pytest.fixture(scope="module")
def source(request, tmp_path_factory) -> Source:
    (path,) = a4c_paths(phantom_cache(request.config, tmp_path_factory), 1, SEED_ONE_STUDY)
    full = pydicom.dcmread(path)
    assert full.file_meta.TransferSyntaxUID == pydicom.uid.JPEGBaseline8Bit
    jpeg = list(generate_frames(full.PixelData, number_of_frames=int(full.NumberOfFrames)))
    reader = FrameReader(path)
    rgb = np.stack([reader.decode(index) for index in range(N_FRAMES)])
    return Source(pydicom.dcmread(path, stop_before_pixels=True), rgb, jpeg[:N_FRAMES])


def _jxl(frame: np.ndarray, *, lossless: bool) -> bytes:
    buffer = io.BytesIO()
    options = {"lossless": True} if lossless else {"quality": LOSSY_QUALITY}
    Image.fromarray(frame).save(buffer, format="JXL", effort=1, **options)
    return buffer.getvalue()


def _recompressed(jpeg: bytes, header: Dataset) -> bytes:
    """A JPEG frame transcoded into JPEG XL without loss of the JPEG (the .111 syntax)."""
    encoder = Encoder(
        mode="RGB", lossless=True, quality=100, decoding_speed=0, effort=3,
        use_container=False, use_original_profile=False, num_threads=1,
    )  # fmt: skip
    return encoder(jpeg, int(header.Columns), int(header.Rows), jpeg_encode=True)


def jpeg_xl_file(
    path: Path, source: Source, syntax: str, encoded: list[bytes], *, grey: bool = False
) -> Path:
    """The phantom loop as an encapsulated JPEG XL multi-frame file (new UIDs)."""
    ds = copy.deepcopy(source.header)
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesDescription = "A4C"  # the view in words, as scanners name it (selection reads it)
    ds.NumberOfFrames = len(encoded)
    ds.SamplesPerPixel = 1 if grey else 3
    ds.PhotometricInterpretation = "MONOCHROME2" if grey else "RGB"
    if grey:
        del ds.PlanarConfiguration
    else:
        ds.PlanarConfiguration = 0
    lossy = syntax != JPEG_XL_LOSSLESS
    ds.LossyImageCompression = "01" if lossy else "00"
    for keyword in ("LossyImageCompressionRatio", "LossyImageCompressionMethod"):
        ds.pop(keyword, None)
    if lossy:
        ds.LossyImageCompressionMethod = "ISO_18181_1"
    ds.PixelData = encapsulate(encoded)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    data = encode_dataset(ds, ExplicitVRLittleEndian)
    return write_raw_file(path, ds.SOPClassUID, ds.SOPInstanceUID, syntax, data)


@pytest.fixture(scope="module")
def loops(source: Source, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("jpegxl")
    grey = source.rgb[..., 0]
    return {
        "lossless": jpeg_xl_file(
            folder / "lossless.dcm", source, JPEG_XL_LOSSLESS,
            [_jxl(f, lossless=True) for f in source.rgb],
        ),
        "lossless_grey": jpeg_xl_file(
            folder / "lossless_grey.dcm", source, JPEG_XL_LOSSLESS,
            [_jxl(f, lossless=True) for f in grey], grey=True,
        ),
        "recompressed": jpeg_xl_file(
            folder / "recompressed.dcm", source, JPEG_XL_JPEG_RECOMPRESSION,
            [_recompressed(j, source.header) for j in source.jpeg_frames[:N_SHORT]],
        ),
        "lossy": jpeg_xl_file(
            folder / "lossy.dcm", source, JPEG_XL,
            [_jxl(f, lossless=False) for f in source.rgb[:N_SHORT]],
        ),
    }  # fmt: skip


def test_a_lossless_jpeg_xl_loop_decodes_to_exactly_its_pixels(source, loops) -> None:
    cine = read_cine(loops["lossless"])
    assert cine.frames.shape == (N_FRAMES, *source.rgb.shape[1:])
    assert np.array_equal(cine.frames, source.rgb)
    assert cine.frame_time_ms is not None  # the header's timing comes along
    # frame by frame (the streaming decoder) and a sample of frames (selection) agree
    reader = FrameReader(loops["lossless"])
    assert np.array_equal(reader.decode(N_FRAMES - 1), source.rgb[-1])
    assert np.array_equal(frames_at(loops["lossless"], [0, 7]), source.rgb[[0, 7]])


def test_a_lossless_grey_jpeg_xl_loop_decodes_to_exactly_its_pixels(source, loops) -> None:
    frames = read_cine(loops["lossless_grey"]).frames
    grey = source.rgb[..., 0]
    assert np.array_equal(frames, np.repeat(grey[..., np.newaxis], 3, axis=-1))


def test_a_recompressed_jpeg_decodes_as_the_jpeg_it_came_from(source, loops) -> None:
    frames = read_cine(loops["recompressed"]).frames.astype(np.int16)
    expected = source.rgb[:N_SHORT].astype(np.int16)
    # the very JPEG is rebuilt; only two JPEG decoders' rounding can differ
    difference = np.abs(frames - expected)
    assert frames.shape == expected.shape
    assert difference.mean() < 0.1, difference.mean()


def test_a_lossy_jpeg_xl_loop_decodes_close_to_its_pixels(source, loops) -> None:
    frames = read_cine(loops["lossy"]).frames.astype(np.int16)
    expected = source.rgb[:N_SHORT].astype(np.int16)
    difference = np.abs(frames - expected)
    assert frames.shape == expected.shape
    assert 0 < difference.mean() < 2.0, difference.mean()


def test_a_damaged_jpeg_xl_frame_is_a_decode_error_not_a_crash(source, tmp_path) -> None:
    good = _jxl(source.rgb[0], lossless=True)
    damaged = jpeg_xl_file(
        tmp_path / "damaged.dcm", source, JPEG_XL_LOSSLESS, [good, good[: len(good) // 3]]
    )
    reader = FrameReader(damaged)
    assert reader.decode(0).shape == source.rgb[0].shape
    with pytest.raises(DecodeError, match="JPEG XL Lossless"):
        reader.decode(1)
    with pytest.raises(DecodeError, match="JPEG XL Lossless"):
        read_cine(damaged)


def test_ingest_validation_counts_jpeg_xl_frames(loops) -> None:
    data = dataset_bytes(loops["lossless"])
    ds = pydicom.dcmread(loops["lossless"], stop_before_pixels=True)
    header = inspect_dataset(data, JPEG_XL_LOSSLESS, ds.SOPClassUID, ds.SOPInstanceUID)
    assert header.number_of_frames == N_FRAMES
    # the same frames under a header that claims one more are refused
    ds = pydicom.dcmread(loops["lossless"])
    ds.NumberOfFrames = N_FRAMES + 1
    claimed = encode_dataset(ds, ExplicitVRLittleEndian)
    with pytest.raises(InvalidInstanceError) as refused:
        inspect_dataset(claimed, JPEG_XL_LOSSLESS, ds.SOPClassUID, ds.SOPInstanceUID)
    assert refused.value.refusal.status == status.PIXEL_DATA_INCOMPLETE


def test_jpeg_xl_is_offered_for_images_only() -> None:
    jpeg_xl = {JPEG_XL_LOSSLESS, JPEG_XL_JPEG_RECOMPRESSION, JPEG_XL}
    assert jpeg_xl == contexts.JPEG_XL_FAMILY
    assert jpeg_xl <= set(contexts.accepted_transfer_syntaxes(contexts.US_MULTIFRAME))
    assert not jpeg_xl & set(contexts.accepted_transfer_syntaxes(contexts.ENCAPSULATED_PDF))
    assert contexts.transfer_syntax_name(JPEG_XL) == "JPEG XL"


@pytest.fixture
def scp(tmp_path: Path) -> Iterator[tuple[Config, sa.Engine, int]]:
    url = f"sqlite:///{tmp_path / 'echo-agent.db'}"
    config = Config(
        home=str(tmp_path / "home"),
        dicom=DicomConfig(port=0, min_free_disk_mb=0),
        database=DatabaseConfig(url=url),
    )
    upgrade(url)
    engine = make_engine(url)
    server = start_storage_scp(config, engine)
    try:
        yield config, engine, server.port
    finally:
        server.shutdown(timeout_s=5)
        engine.dispose()


def test_a_running_node_accepts_and_stores_jpeg_xl_loops_byte_identical(scp, loops, source) -> None:
    config, engine, port = scp
    sent = [loops[name] for name in ("lossless", "recompressed", "lossy")]
    assert send_files("127.0.0.1", port, sent, calling_ae="GEVIVID") == [0x0000] * len(sent)

    with sa.orm.Session(engine) as session:
        rows = {r.sop_instance_uid: r for r in session.scalars(sa.select(Instance))}
    assert len(rows) == len(sent)
    for path in sent:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        row = rows[ds.SOPInstanceUID]
        assert row.transfer_syntax_uid == ds.file_meta.TransferSyntaxUID
        assert row.number_of_frames == int(ds.NumberOfFrames)
        stored = config.store_path / row.file_path
        assert dataset_bytes(stored) == dataset_bytes(path)  # nothing transcoded on the way in

    # what was stored is a loop the node can select and analyse: the colour check decodes a
    # sample of frames, the analysis all of them
    lossless = config.store_path / rows[str(pydicom.dcmread(sent[0]).SOPInstanceUID)].file_path
    verdict = select_loop(lossless, SelectionConfig(), classifier=None)
    assert verdict.eligible, verdict
    assert np.array_equal(read_cine(lossless).frames, source.rgb)
