"""DICOM Segmentation of a cine loop: one BINARY LV-cavity segment, one SEG frame per source
frame, each SEG frame naming the source frame it was drawn on.

Why not ``highdicom.seg.Segmentation`` for the whole object: ultrasound loops have no Frame of
Reference, and highdicom 0.28 then accepts a single source frame only (highdicom issue 284).
Without a Frame of Reference, PS3.3 A.51.5.1 makes the frame-level references the link between
a SEG frame and its image: the Derivation Image Sequence's Referenced Frame Number, with pixels
in 1:1 correspondence. So this module builds those references itself and takes everything else
from highdicom (segment description, algorithm identification, the patient/study skeleton).
No Frame of Reference and no plane geometry are invented: a source that has a Frame of
Reference passes its UID on, one that has none gets none.

Segment coding (DICOM CID 7150 / 7151): category Anatomical Structure (SCT 91723000), type Left
ventricle (SCT 87878005). The mask is the LV cavity (the blood pool inside the endocardial
border). SNOMED CT's "Left ventricle" is the structure whose interior that is, and no LV-cavity
body-structure concept is in DICOM's segmentation context groups; the Segment Description says
"cavity" in words rather than inventing a code.

The frames are ordered by source frame, and a dimension (Temporal Position Index in the Frame
Content functional group, equal to the source frame number) makes that order explicit to
readers that sort by dimensions.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import SegmentationStorage

from reporting import codes
from reporting.dicom_base import (
    SERIES_NUMBER_SEG,
    Equipment,
    copy_lossy_compression_history,
    local_now,
    new_instance,
    new_uid,
    referenced_series,
    source_image_item,
)
from reporting.dicom_tail import save_with_tail
from reporting.types import DEMO_LABEL_ASCII, AlgorithmInfo

SEGMENT_NUMBER = 1
SEGMENT_LABEL = "LV cavity"
SEGMENT_DESCRIPTION = "Left ventricular cavity (blood pool inside the endocardial border)"
CONTENT_LABEL = "LV_SEG"  # CS: upper case, digits, underscore
SEGMENT_COLOR_RGB = (255, 214, 0)  # the overlay's contour colour, so SEG and video agree

_SEGMENT_NUMBER_TAG = Tag("ReferencedSegmentNumber")
_SEGMENT_IDENTIFICATION_TAG = Tag("SegmentIdentificationSequence")
_TEMPORAL_POSITION_INDEX_TAG = Tag("TemporalPositionIndex")
_FRAME_CONTENT_TAG = Tag("FrameContentSequence")


def build_seg(
    source_ds: Dataset,
    masks: np.ndarray,
    algorithm: AlgorithmInfo,
    *,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    series_number: int = SERIES_NUMBER_SEG,
    instance_number: int = 1,
    equipment: Equipment | None = None,
    now: dt.datetime | None = None,
) -> Dataset:
    """The SEG dataset for ``masks`` (frames x rows x cols, bool; frame i drawn on source frame
    i + 1). Empty frames are kept, so every source frame has its SEG frame."""
    masks = _checked_masks(source_ds, masks)
    n_frames = int(masks.shape[0])
    equipment = equipment or Equipment()
    now = now or local_now()
    demo = algorithm.demo_model
    seg = new_instance(
        source_ds,
        sop_class_uid=SegmentationStorage,
        modality="SEG",
        series_instance_uid=series_instance_uid or new_uid(),
        series_number=series_number,
        sop_instance_uid=sop_instance_uid or new_uid(),
        instance_number=instance_number,
        series_description="LV segmentation [DEMO]" if demo else "LV segmentation",
        equipment=equipment,
        now=now,
    )
    if "FrameOfReferenceUID" in source_ds:  # passed on, never made up
        seg.FrameOfReferenceUID = source_ds.FrameOfReferenceUID
        seg.PositionReferenceIndicator = source_ds.get("PositionReferenceIndicator", "")

    # General Image / Segmentation Image modules
    seg.ImageType = ["DERIVED", "PRIMARY"]
    seg.PatientOrientation = source_ds.get("PatientOrientation", "")
    seg.ContentLabel = CONTENT_LABEL
    seg.ContentDescription = DEMO_LABEL_ASCII if demo else "LV cavity on every frame"
    seg.ContentCreatorName = ""
    seg.SegmentationType = "BINARY"
    seg.SegmentsOverlap = "NO"
    seg.SegmentSequence = [_segment_description(algorithm)]
    copy_lossy_compression_history(source_ds, seg)

    # Image Pixel module: one bit per pixel, frames packed back to back
    seg.SamplesPerPixel = 1
    seg.PhotometricInterpretation = "MONOCHROME2"
    seg.Rows, seg.Columns = int(masks.shape[1]), int(masks.shape[2])
    seg.BitsAllocated = 1
    seg.BitsStored = 1
    seg.HighBit = 0
    seg.PixelRepresentation = 0
    seg.NumberOfFrames = n_frames
    seg.PixelData = _packed_bits(masks)

    # Multi-frame Dimension, Functional Groups and Common Instance Reference modules
    organisation_uid = new_uid()
    seg.DimensionOrganizationSequence = [_item(DimensionOrganizationUID=organisation_uid)]
    seg.DimensionIndexSequence = [
        _item(
            DimensionOrganizationUID=organisation_uid,
            DimensionIndexPointer=_SEGMENT_NUMBER_TAG,
            FunctionalGroupPointer=_SEGMENT_IDENTIFICATION_TAG,
            DimensionDescriptionLabel="Segment Number",
        ),
        _item(
            DimensionOrganizationUID=organisation_uid,
            DimensionIndexPointer=_TEMPORAL_POSITION_INDEX_TAG,
            FunctionalGroupPointer=_FRAME_CONTENT_TAG,
            DimensionDescriptionLabel="Source Frame Number",
        ),
    ]
    seg.SharedFunctionalGroupsSequence = [
        _item(SegmentIdentificationSequence=[_item(ReferencedSegmentNumber=SEGMENT_NUMBER)])
    ]
    seg.PerFrameFunctionalGroupsSequence = [
        _frame_group(source_ds, frame_number) for frame_number in range(1, n_frames + 1)
    ]
    seg.ReferencedSeriesSequence = referenced_series(source_ds)
    return seg


def write_seg(
    source_ds: Dataset,
    masks: np.ndarray,
    algorithm: AlgorithmInfo,
    out_path: str | Path,
    **options: object,
) -> Dataset:
    """``build_seg`` and save it to ``out_path``; returns the dataset written (its
    SOPInstanceUID is the artifact's)."""
    seg = build_seg(source_ds, masks, algorithm, **options)  # type: ignore[arg-type]
    # the per-frame groups and the pixels, written by dicom_tail (the same bytes, faster)
    save_with_tail(seg, out_path, ("PerFrameFunctionalGroupsSequence", "PixelData"))
    return seg


def seg_masks(seg: Dataset) -> np.ndarray:
    """The masks back in source-frame order (frames x rows x cols, bool), placed by each SEG
    frame's Referenced Frame Number, not by its position in the file."""
    pixels = seg.pixel_array
    if int(seg.get("NumberOfFrames", 1)) == 1:
        pixels = pixels[np.newaxis]
    numbers = source_frame_numbers(seg)
    out = np.zeros((max(numbers), int(seg.Rows), int(seg.Columns)), bool)
    for index, frame_number in enumerate(numbers):
        out[frame_number - 1] = pixels[index].astype(bool)
    return out


def source_frame_numbers(seg: Dataset) -> list[int]:
    """For each SEG frame, the 1-based source frame it was derived from."""
    numbers = []
    for group in seg.PerFrameFunctionalGroupsSequence:
        source = group.DerivationImageSequence[0].SourceImageSequence[0]
        numbers.append(int(source.get("ReferencedFrameNumber", 1)))  # absent: single frame
    return numbers


def _checked_masks(source_ds: Dataset, masks: np.ndarray) -> np.ndarray:
    array = np.asarray(masks)
    if array.ndim != 3:
        raise ValueError(f"masks must be (frames, rows, cols), got shape {array.shape}")
    if array.dtype != bool:
        values = np.unique(array)
        if not np.isin(values, (0, 1)).all():
            raise ValueError("a BINARY segmentation takes 0/1 masks; threshold them first")
    n_source = int(source_ds.get("NumberOfFrames", 1) or 1)
    rows, cols = int(source_ds.Rows), int(source_ds.Columns)
    if array.shape != (n_source, rows, cols):
        raise ValueError(
            f"masks of shape {array.shape} do not match the source loop "
            f"({n_source} frames of {rows} x {cols}): a SEG frame must lie pixel for pixel on "
            "its source frame"
        )
    return np.ascontiguousarray(array, dtype=bool)


def _packed_bits(masks: np.ndarray) -> bytes:
    """Bool masks, frames back to back, eight pixels a byte, first pixel in the lowest bit (PS3.5
    8.1.1), padded to an even length: the bytes of ``pydicom.pixels.pack_bits``, which first
    checks every value is 0 or 1 (``_checked_masks`` has made them bool): a tenth of the time."""
    packed = np.packbits(masks.reshape(-1), bitorder="little").tobytes()
    return packed + b"\x00" if len(packed) % 2 else packed


def _segment_description(algorithm: AlgorithmInfo) -> hd.seg.SegmentDescription:
    identification = hd.AlgorithmIdentificationSequence(
        name=algorithm.name,
        version=algorithm.version,
        family=codes.ARTIFICIAL_INTELLIGENCE.dicom(),
        parameters=_parameters(algorithm),
    )
    description = hd.seg.SegmentDescription(
        segment_number=SEGMENT_NUMBER,
        segment_label=SEGMENT_LABEL,
        segmented_property_category=codes.ANATOMICAL_STRUCTURE.dicom(),
        segmented_property_type=codes.LEFT_VENTRICLE.dicom(),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=identification,
        display_color=hd.color.CIELabColor.from_rgb(*SEGMENT_COLOR_RGB),
    )
    description.SegmentDescription = SEGMENT_DESCRIPTION
    return description


def _parameters(algorithm: AlgorithmInfo) -> dict[str, str] | None:
    params = {}
    for index, text in enumerate(algorithm.parameters, start=1):
        key, sep, value = text.partition("=")
        params[key.strip() if sep else f"parameter {index}"] = value.strip() if sep else text
    if algorithm.demo_model:
        params["label"] = DEMO_LABEL_ASCII
    return params or None


def _frame_group(source_ds: Dataset, frame_number: int) -> Dataset:
    # a single-frame SOP class has no frames to number (PS3.3 C.7.6.1.1.2)
    multi_frame = "NumberOfFrames" in source_ds
    source = source_image_item(source_ds, [frame_number] if multi_frame else None)
    source.PurposeOfReferenceCodeSequence = [codes.SOURCE_IMAGE_FOR_PROCESSING.dicom()]
    source.SpatialLocationsPreserved = "YES"
    derivation = _item(
        SourceImageSequence=[source],
        DerivationCodeSequence=[codes.DERIVATION_SEGMENTATION.dicom()],
    )
    content = _item(
        DimensionIndexValues=[SEGMENT_NUMBER, frame_number],
        TemporalPositionIndex=frame_number,
    )
    return _item(DerivationImageSequence=[derivation], FrameContentSequence=[content])


def _item(**attributes: object) -> Dataset:
    ds = Dataset()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds
