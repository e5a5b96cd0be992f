"""JPEG Baseline colour loops through libjpeg-turbo (``inference.decode_jpeg``): the pixels
dcmtk's ``dcmdjpeg`` gives, the same through both decoding paths, and the same refusals as
before for frames that do not fit the header or cannot be decoded."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom import examples
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit
from support import require_or_skip

from echo_agent.bench.dcmtk import find_dcmtk_tool
from inference.decode import DecodeError, FrameReader, read_cine
from inference.decode_jpeg import NotYCbCrError, decode_rgb, turbo_applies


def _jpeg(image: np.ndarray, **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=90, **options)
    return buffer.getvalue()


def _jpeg_loop(frames: list[bytes], rows: int, cols: int) -> pydicom.Dataset:
    """A JPEG Baseline YBR_FULL_422 loop of ``frames`` declaring Rows x Columns."""
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"
    ds.SOPInstanceUID = "1.2.3.4"
    ds.Rows, ds.Columns = rows, cols
    ds.NumberOfFrames = len(frames)
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    return ds


def _gradient(rows: int, cols: int, shift: int = 0) -> np.ndarray:
    y, x = np.mgrid[0:rows, 0:cols]
    return np.stack([(x * 7 + shift) % 256, (y * 5) % 256, (x + y) % 256], -1).astype(np.uint8)


def test_a_ybr_jpeg_loop_decodes_to_the_pixels_dcmdjpeg_gives(tmp_path: Path) -> None:
    try:
        dcmdjpeg = find_dcmtk_tool("dcmdjpeg")
    except FileNotFoundError as exc:
        require_or_skip(str(exc))
    source = Path(examples.get_path("ybr_color"))
    assert turbo_applies(pydicom.dcmread(source), 3, "YBR_FULL_422")
    out = tmp_path / "dcmtk.dcm"
    subprocess.run([dcmdjpeg, str(source), str(out)], check=True, timeout=120)
    reference = pydicom.dcmread(out)
    assert reference.PhotometricInterpretation == "RGB"
    cine = read_cine(source)
    assert np.array_equal(cine.frames, reference.pixel_array)
    reader = FrameReader(source)
    frames = np.stack([reader.decode(i) for i in range(reader.n_frames)])
    assert np.array_equal(frames, cine.frames)


def test_a_frame_smaller_than_rows_and_columns_is_a_decode_error() -> None:
    small = _jpeg(_gradient(16, 16))
    ds = _jpeg_loop([_jpeg(_gradient(32, 32)), small], 32, 32)
    with pytest.raises(DecodeError, match="16 x 16"):
        read_cine(ds)
    with pytest.raises(DecodeError):
        FrameReader(ds).decode(1)
    assert FrameReader(ds).decode(0).shape == (32, 32, 3)


def test_a_frame_larger_than_the_header_is_refused_before_decoding() -> None:
    ds = _jpeg_loop([_jpeg(_gradient(32, 32)), _jpeg(_gradient(64, 64))], 32, 32)
    with pytest.raises(DecodeError, match="more than Rows x Columns"):
        read_cine(ds)


def test_a_corrupt_frame_in_a_threaded_decode_is_one_decode_error() -> None:
    frames = [_jpeg(_gradient(24, 32, shift)) for shift in range(8)]
    header_only = frames[5][: len(frames[5]) // 3]  # cut inside the entropy-coded data
    ds = _jpeg_loop([*frames[:5], header_only, *frames[6:]], 24, 32)
    with pytest.raises(DecodeError):
        read_cine(ds)


def test_threaded_and_frame_by_frame_decoding_agree() -> None:
    frames = [_jpeg(_gradient(24, 32, shift), subsampling=1) for shift in range(6)]
    ds = _jpeg_loop(frames, 24, 32)
    cine = read_cine(ds)
    reader = FrameReader(ds)
    assert np.array_equal(cine.frames, np.stack([reader.decode(i) for i in range(6)]))
    expected = np.stack([np.asarray(Image.open(io.BytesIO(f)).convert("RGB")) for f in frames])
    assert np.array_equal(cine.frames, expected)


def test_a_stream_that_is_not_ycbcr_is_left_to_pydicom() -> None:
    grey = _jpeg(_gradient(16, 16)[..., 0])
    with pytest.raises(NotYCbCrError):
        decode_rgb(grey, 16, 16)
    assert not turbo_applies(_jpeg_loop([grey], 16, 16), 1, "MONOCHROME2")
