"""DICOM SEG of phantom cine loops: exact round trip, frame i on source frame i, the codes, no
invented Frame of Reference, and dciodvfy / dcmdump / highdicom all read it."""

from __future__ import annotations

import copy
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from orthanc_helpers import phantom_cache
from reporting_helpers import (
    SEED_FOUR_STUDIES,
    SEED_ONE_STUDY,
    a4c_paths,
    dciodvfy_errors,
    dcmdump_reads,
    demo_algorithms,
    load_loop,
    still_path,
)

from reporting.seg import seg_masks, source_frame_numbers, write_seg
from reporting.types import DEMO_LABEL_ASCII, AlgorithmInfo


@pytest.fixture(scope="module")
def cache_root(request, tmp_path_factory) -> Path:
    return phantom_cache(request.config, tmp_path_factory)


@pytest.fixture(scope="module")
def loops(cache_root) -> list[Path]:
    """Five A4C loops: JPEG YBR, RLE RGB, raw RGB and raw MONOCHROME2 sources."""
    return a4c_paths(cache_root, 1, SEED_ONE_STUDY) + a4c_paths(cache_root, 4, SEED_FOUR_STUDIES)


def test_seg_round_trip_is_exact_and_valid_for_every_phantom_loop(loops, tmp_path):
    assert len(loops) == 5
    encodings = set()
    for path in loops:
        loop = load_loop(path)
        encodings.add(loop.truth["photometric_interpretation"])
        out = tmp_path / f"{path.stem}_seg.dcm"
        write_seg(loop.header, loop.masks, demo_algorithms().segmentation, out)

        assert dciodvfy_errors(out) == [], path.name
        dcmdump_reads(out)
        seg = pydicom.dcmread(out)
        # pydicom decodes the bits; each frame is placed by its referenced source frame
        np.testing.assert_array_equal(seg_masks(seg), loop.masks)
        n = loop.masks.shape[0]
        assert int(seg.NumberOfFrames) == n
        assert source_frame_numbers(seg) == list(range(1, n + 1))
        # highdicom, reading independently, finds the same mask on each source frame
        reader = hd.seg.Segmentation.from_dataset(seg)
        by_frame = reader.get_pixels_by_source_frame(
            source_sop_instance_uid=str(loop.header.SOPInstanceUID),
            source_frame_numbers=list(range(1, n + 1)),
        )
        np.testing.assert_array_equal(by_frame[..., 0].astype(bool), loop.masks)
    assert encodings == {"YBR_FULL_422", "RGB", "MONOCHROME2"}


def test_seg_frame_references_codes_and_identity(loops, tmp_path):
    loop = load_loop(loops[0])
    algorithm = demo_algorithms().segmentation
    seg = write_seg(loop.header, loop.masks, algorithm, tmp_path / "seg.dcm")
    src = loop.header

    for i, group in enumerate(seg.PerFrameFunctionalGroupsSequence, start=1):
        derivation = group.DerivationImageSequence[0]
        source = derivation.SourceImageSequence[0]
        assert source.ReferencedSOPInstanceUID == src.SOPInstanceUID
        assert source.ReferencedSOPClassUID == src.SOPClassUID
        assert int(source.ReferencedFrameNumber) == i
        assert source.PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
        assert derivation.DerivationCodeSequence[0].CodeValue == "113076"
        content = group.FrameContentSequence[0]
        assert list(content.DimensionIndexValues) == [1, i]
        assert int(content.TemporalPositionIndex) == i
    shared = seg.SharedFunctionalGroupsSequence[0]
    assert shared.SegmentIdentificationSequence[0].ReferencedSegmentNumber == 1

    # the source has no Frame of Reference, so neither has the SEG, nor any plane geometry
    assert "FrameOfReferenceUID" not in src
    assert "FrameOfReferenceUID" not in seg
    for keyword in ("PlanePositionSequence", "PlaneOrientationSequence", "PixelMeasuresSequence"):
        assert keyword not in shared
        assert all(keyword not in g for g in seg.PerFrameFunctionalGroupsSequence)

    segment = seg.SegmentSequence[0]
    assert seg.SegmentationType == "BINARY"
    assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000"
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "87878005"
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "SCT"
    assert segment.SegmentAlgorithmType == "AUTOMATIC"
    algo = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert (algo.AlgorithmName, algo.AlgorithmVersion) == (algorithm.name, algorithm.version)
    assert algo.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"
    assert algo.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Artificial Intelligence"

    # same patient and study, a new series, the source named in the common references
    for keyword in ("StudyInstanceUID", "PatientID", "PatientName", "AccessionNumber"):
        assert seg.get(keyword) == src.get(keyword)
    assert seg.SeriesInstanceUID != src.SeriesInstanceUID
    assert seg.Modality == "SEG"
    refs = seg.ReferencedSeriesSequence[0]
    assert refs.SeriesInstanceUID == src.SeriesInstanceUID
    assert refs.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    # the demo label rides along; a source with a JPEG history passes it on
    assert seg.ContentDescription == DEMO_LABEL_ASCII
    assert seg.LossyImageCompression == src.LossyImageCompression == "01"


def test_seg_keeps_empty_frames_and_a_real_frame_of_reference(loops, tmp_path):
    loop = load_loop(loops[0])
    masks = loop.masks.copy()
    masks[[0, 5, -1]] = False  # LV missed on some frames: those SEG frames exist, empty
    header = copy.deepcopy(loop.header)  # Dataset(ds) shares ds's elements
    header.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.1"  # as if the scanner had one
    out = tmp_path / "seg.dcm"
    seg = write_seg(header, masks, AlgorithmInfo("net", "1"), out)
    assert dciodvfy_errors(out) == []
    assert seg.FrameOfReferenceUID == header.FrameOfReferenceUID  # passed on, not made up
    np.testing.assert_array_equal(seg_masks(pydicom.dcmread(out)), masks)
    assert seg.ContentDescription != DEMO_LABEL_ASCII  # no demo label for a real model


def test_seg_of_a_single_frame_source(cache_root, tmp_path):
    path = still_path(cache_root)
    header = pydicom.dcmread(path, stop_before_pixels=True)
    mask = np.zeros((1, header.Rows, header.Columns), bool)
    mask[0, 100:200, 150:260] = True
    out = tmp_path / "seg.dcm"
    write_seg(header, mask, AlgorithmInfo("net", "1"), out)
    assert dciodvfy_errors(out) == []
    seg = pydicom.dcmread(out)
    np.testing.assert_array_equal(seg_masks(seg), mask)
    assert source_frame_numbers(seg) == [1]


def test_seg_refuses_masks_that_do_not_lie_on_the_source(loops):
    loop = load_loop(loops[0])
    algorithm = AlgorithmInfo("net", "1")
    with pytest.raises(ValueError, match="do not match the source loop"):
        write_seg(loop.header, loop.masks[:-1], algorithm, "/nonexistent/seg.dcm")
    with pytest.raises(ValueError, match="threshold"):
        write_seg(loop.header, loop.masks * 0.7, algorithm, "/nonexistent/seg.dcm")
    with pytest.raises(ValueError, match="LO"):
        AlgorithmInfo("x" * 65, "1")
