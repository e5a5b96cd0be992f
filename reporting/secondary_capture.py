"""Multi-frame True Color Secondary Capture of the loop with the LV contour burned in.

For PACS viewers that cannot show a SEG on a cine loop (or show the first frame's mask on every
frame, OHIF issue 4789): the contour is in the pixels, so every viewer plays it right. It is in
the source's study, in its own series, DERIVED / SECONDARY, Burned In Annotation YES (the source's
burned-in patient text is still there, plus our contour, ED/ES marks and, for demo models, the
demo label), with a Derivation Description and the source loop in the Source Image Sequence.

Pixels are JPEG baseline (YBR_FULL_422, quality 90) encoded with Pillow: the source loops are
lossy already, and uncompressed RGB would be ~75 MB for a typical loop. The Lossy Image
Compression attributes say so.
"""

from __future__ import annotations

import datetime as dt
import io
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.tag import Tag
from pydicom.uid import JPEGBaseline8Bit, MultiFrameTrueColorSecondaryCaptureImageStorage

from reporting import codes
from reporting.dicom_base import (
    SERIES_NUMBER_SECONDARY_CAPTURE,
    Equipment,
    local_now,
    new_instance,
    new_uid,
    save,
    source_image_item,
)
from reporting.types import DEMO_LABEL_ASCII

JPEG_QUALITY = 90
LOSSY_METHOD_JPEG = "ISO_10918_1"
CONVERSION_WORKSTATION = "WSD"  # SC Equipment: created on a workstation from digital data


def build_secondary_capture(
    source_ds: Dataset,
    rendered_rgb: np.ndarray,
    *,
    frame_time_ms: float | None,
    demo_models: bool,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    series_number: int = SERIES_NUMBER_SECONDARY_CAPTURE,
    instance_number: int = 1,
    equipment: Equipment | None = None,
    now: dt.datetime | None = None,
) -> Dataset:
    """The SC dataset for frames from ``overlay.render_overlay_frames`` (same size and count as
    the source loop, so a frame number means the same instant in both)."""
    frames = np.asarray(rendered_rgb)
    n_source = int(source_ds.get("NumberOfFrames", 1) or 1)
    expected = (n_source, int(source_ds.Rows), int(source_ds.Columns), 3)
    if frames.shape != expected or frames.dtype != np.uint8:
        raise ValueError(f"rendered frames {frames.shape} {frames.dtype}: want {expected} uint8")
    equipment = equipment or Equipment()
    now = now or local_now()
    suffix = " [DEMO]" if demo_models else ""
    sc = new_instance(
        source_ds,
        sop_class_uid=MultiFrameTrueColorSecondaryCaptureImageStorage,
        modality=str(source_ds.get("Modality", "US") or "US"),
        series_instance_uid=series_instance_uid or new_uid(),
        series_number=series_number,
        sop_instance_uid=sop_instance_uid or new_uid(),
        instance_number=instance_number,
        series_description=f"LV contour overlay{suffix}",
        equipment=equipment,
        now=now,
    )
    sc.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    # SC Equipment
    sc.ConversionType = CONVERSION_WORKSTATION
    # General Image / SC Multi-frame Image
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.PatientOrientation = source_ds.get("PatientOrientation", "")
    sc.ImageLaterality = "U"  # unpaired: the heart (dciodvfy wants laterality said)
    sc.BurnedInAnnotation = "YES"
    description = "LV cavity contour from the segmentation drawn on the source loop"
    if demo_models:
        description += f"; {DEMO_LABEL_ASCII}"
    sc.DerivationDescription = description
    source = source_image_item(source_ds)
    source.PurposeOfReferenceCodeSequence = [codes.SOURCE_IMAGE_FOR_PROCESSING.dicom()]
    sc.SourceImageSequence = [source]
    # Image Pixel
    sc.SamplesPerPixel = 3
    sc.PhotometricInterpretation = "YBR_FULL_422"
    sc.PlanarConfiguration = 0
    sc.Rows, sc.Columns = expected[1], expected[2]
    sc.BitsAllocated = 8
    sc.BitsStored = 8
    sc.HighBit = 7
    sc.PixelRepresentation = 0
    # Multi-frame + Cine: play at the source's rate
    sc.NumberOfFrames = expected[0]
    if frame_time_ms and frame_time_ms > 0:
        sc.FrameTime = f"{float(frame_time_ms):.4g}"
        sc.FrameIncrementPointer = Tag("FrameTime")
        sc.CineRate = round(1000.0 / float(frame_time_ms))
        sc.RecommendedDisplayFrameRate = sc.CineRate
    else:
        sc.FrameIncrementPointer = Tag("FrameTime")
        sc.FrameTime = "0"
    encoded = [_jpeg(frame) for frame in frames]
    sc.PixelData = encapsulate(encoded)
    sc["PixelData"].is_undefined_length = True
    sc.LossyImageCompression = "01"
    ratio = frames.nbytes / max(1, sum(len(b) for b in encoded))
    ratios = [f"{ratio:.2f}"]
    methods = [LOSSY_METHOD_JPEG]
    if str(source_ds.get("LossyImageCompression", "")) == "01":  # the source's history first
        ratios = [str(v) for v in _as_list(source_ds.get("LossyImageCompressionRatio"))] + ratios
        methods = [str(v) for v in _as_list(source_ds.get("LossyImageCompressionMethod"))] + methods
    sc.LossyImageCompressionRatio = ratios
    sc.LossyImageCompressionMethod = methods
    return sc


def write_secondary_capture(
    source_ds: Dataset, rendered_rgb: np.ndarray, out_path: str | Path, **options: object
) -> Dataset:
    """``build_secondary_capture`` and save it to ``out_path``; returns the dataset written."""
    sc = build_secondary_capture(source_ds, rendered_rgb, **options)  # type: ignore[arg-type]
    save(sc, out_path)
    return sc


def _jpeg(frame_rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame_rgb, "RGB").save(
        buffer, format="JPEG", quality=JPEG_QUALITY, subsampling="4:2:2"
    )
    return buffer.getvalue()


def _as_list(value: object) -> list[object]:
    """A DICOM value with multiplicity 0, 1 or n as a list."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    try:
        return list(value)  # type: ignore[call-overload]
    except TypeError:
        return [value]
