"""Decoding DICOM cine loops into ``Cine``: every encoding the phantom writes, the header
fallbacks scanners rely on, and one clear error for anything that cannot be decoded."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import convert_color_space
from pydicom.uid import ExplicitVRLittleEndian
from support import phantom_truth

from inference.decode import DecodeError, read_cine


@pytest.fixture(scope="module")
def a4c_loops(phantom_studies) -> list[Path]:
    return [p for p in phantom_studies if phantom_truth(p)["view"] == "A4C"]


def _uncompressed(loops: list[Path], photometric: str) -> pydicom.Dataset:
    for path in loops:
        ds = pydicom.dcmread(path)
        syntax = ds.file_meta.TransferSyntaxUID
        if syntax == ExplicitVRLittleEndian and ds.PhotometricInterpretation == photometric:
            return ds
    raise AssertionError(f"the phantom set has no uncompressed {photometric} loop")


@pytest.mark.slow
def test_every_phantom_encoding_decodes_with_its_header_values(a4c_loops) -> None:
    syntaxes = set()
    for path in a4c_loops:
        truth = phantom_truth(path)
        cine = read_cine(path)
        syntaxes.add((truth["transfer_syntax_uid"], truth["photometric_interpretation"]))
        assert cine.frames.dtype == np.uint8
        assert cine.frames.shape == (truth["n_frames"], truth["rows"], truth["cols"], 3)
        assert cine.frame_time_ms == pytest.approx(truth["frame_time_ms"], rel=1e-6)
        assert cine.frame_time_source == "FrameTime"
        assert cine.spacing_cm == pytest.approx(tuple(truth["spacing_cm"]), rel=1e-6)
        assert cine.heart_rate_bpm == pytest.approx(truth["heart_rate_bpm"])
        assert cine.sop_instance_uid == truth["sop_instance_uid"]
        assert cine.notes == ()
        # blood inside the true LV is darker than the frame's bright pixels
        masks = np.load(path.parent / truth["masks_file"])["masks"]
        ed = truth["beats"][0]["ed_frame"]
        lv_mean = cine.frames[ed][masks[ed]].mean()
        assert lv_mean < np.percentile(cine.frames[ed], 95) / 2
    assert len(syntaxes) == 4


@pytest.mark.slow
def test_monochrome_is_replicated_and_monochrome1_is_inverted(a4c_loops) -> None:
    ds = _uncompressed(a4c_loops, "MONOCHROME2")
    mono = ds.pixel_array
    cine = read_cine(ds)
    assert np.array_equal(cine.frames[..., 0], mono)
    assert np.array_equal(cine.frames[..., 0], cine.frames[..., 2])
    ds.PhotometricInterpretation = "MONOCHROME1"
    assert np.array_equal(read_cine(ds).frames[..., 1], 255 - mono)


@pytest.mark.slow
def test_ybr_full_is_converted_to_rgb(a4c_loops) -> None:
    ds = _uncompressed(a4c_loops, "RGB")
    rgb = ds.pixel_array[:3]
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    ds.NumberOfFrames = 3
    ds.PixelData = ybr.tobytes()
    ds.PhotometricInterpretation = "YBR_FULL"
    decoded = read_cine(ds).frames
    assert np.abs(decoded.astype(int) - rgb.astype(int)).max() <= 2


def test_palette_color_goes_through_its_lookup_table() -> None:
    ds = _small_dataset(np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4) % 4)
    ds.PhotometricInterpretation = "PALETTE COLOR"
    lut = np.array([0, 100, 200, 255], dtype=np.uint16) * 257  # 16-bit LUT entries
    for colour, scale in (("Red", 1), ("Green", 0), ("Blue", 1)):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [4, 0, 16])
        setattr(ds, f"{colour}PaletteColorLookupTableData", (lut * scale).astype("<u2").tobytes())
    frames = read_cine(ds).frames
    assert frames.shape == (2, 4, 4, 3)
    assert frames[0, 0, 1].tolist() == [100, 0, 100]
    assert frames[0, 0, 3].tolist() == [255, 0, 255]


@pytest.mark.parametrize(
    ("attributes", "expected_ms", "source"),
    [
        ({"FrameTimeVector": [0, 20, 20, 20]}, 20.0, "FrameTimeVector"),
        ({"CineRate": 50}, 20.0, "CineRate"),
        ({"RecommendedDisplayFrameRate": 25}, 40.0, "RecommendedDisplayFrameRate"),
        ({}, None, ""),
    ],
)
def test_frame_timing_falls_back_in_the_standard_order(attributes, expected_ms, source) -> None:
    ds = _small_dataset(np.zeros((4, 8, 8), dtype=np.uint8))
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    cine = read_cine(ds)
    assert cine.frame_time_ms == expected_ms
    assert cine.frame_time_source == source
    if expected_ms is None:
        assert any("frame timing" in note for note in cine.notes)


def test_missing_spacing_is_allowed_and_said() -> None:
    cine = read_cine(_small_dataset(np.zeros((2, 8, 8), dtype=np.uint8)))
    assert cine.spacing_cm is None
    assert any("volumes" in note for note in cine.notes)


def test_non_cm_regions_give_no_spacing() -> None:
    ds = _small_dataset(np.zeros((2, 8, 8), dtype=np.uint8))
    region = pydicom.Dataset()
    region.RegionSpatialFormat = 1
    region.RegionDataType = 1
    region.PhysicalUnitsXDirection = 0  # "none": the region is not calibrated
    region.PhysicalUnitsYDirection = 0
    region.PhysicalDeltaX = 0.1
    region.PhysicalDeltaY = 0.1
    ds.SequenceOfUltrasoundRegions = [region]
    assert read_cine(ds).spacing_cm is None


@pytest.mark.parametrize(
    "damage",
    ["not dicom", "truncated pixels", "no pixels", "truncated file"],
)
def test_corrupt_input_raises_one_error_type(tmp_path, damage) -> None:
    ds = _small_dataset(np.zeros((4, 16, 16), dtype=np.uint8))
    if damage == "not dicom":
        source: object = io.BytesIO(b"this is not a DICOM file at all" * 10)
    elif damage == "truncated pixels":
        ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
        source = ds
    elif damage == "no pixels":
        del ds.PixelData
        source = ds
    else:
        path = tmp_path / "whole.dcm"
        ds.save_as(path, enforce_file_format=True)
        source = io.BytesIO(path.read_bytes()[:400])
    with pytest.raises(DecodeError):
        read_cine(source)  # type: ignore[arg-type]


def _small_dataset(frames: np.ndarray) -> pydicom.Dataset:
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"
    ds.SOPInstanceUID = "1.2.3.4"
    ds.Rows, ds.Columns = frames.shape[1:3]
    ds.NumberOfFrames = frames.shape[0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = frames.tobytes()
    return ds
