"""Multi-frame True Color Secondary Capture of the loop with the LV contour burned in.

For PACS viewers that cannot show a SEG on a cine loop (or show the first frame's mask on every
frame, OHIF issue 4789): the contour is in the pixels, so every viewer plays it right. It is in
the source's study, in its own series, DERIVED / SECONDARY, Burned In Annotation YES (the source's
burned-in patient text is still there, plus our contour, ED/ES marks and, for demo models, the
demo label), with a Derivation Description and the source loop in the Source Image Sequence.

Pixels are JPEG baseline (YBR_FULL_422, quality 90) encoded with Pillow: the source loops are
lossy already, and uncompressed RGB would be ~75 MB for a typical loop. The Lossy Image
Compression attributes say so. The frames may come already encoded (``JpegFrames``, from a
``JpegSpool``), so a writer that renders one frame at a time never holds the whole loop.

The frames are encoded into a temporary file, not into memory: Pillow keeps the GIL while it
encodes into a ``BytesIO`` and releases it while it encodes into a real file, and the encoding
(about 2 ms a frame, 0.3 s for a 139-frame 800 x 600 loop) runs on a thread beside others that
build DICOM datasets in Python. The bytes are the same either way.
"""

from __future__ import annotations

import datetime as dt
import io
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

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


@dataclass(frozen=True)
class JpegFrames:
    """A loop's frames as the SC stores them (JPEG baseline, 4:2:2, ``JPEG_QUALITY``) and the
    size they were encoded at."""

    encoded: Sequence[bytes]
    rows: int
    cols: int

    @classmethod
    def of(cls, frames_rgb: np.ndarray) -> JpegFrames:
        frames = np.asarray(frames_rgb)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be (frames, rows, cols, 3) uint8, got {frames.shape}")
        with JpegSpool() as spool:
            for frame in frames:
                spool.add(frame)
            return spool.frames()

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """As the RGB frames were: (frames, rows, cols, 3)."""
        return (len(self.encoded), self.rows, self.cols, 3)


class JpegSpool:
    """Frames JPEG-encoded one after another into a temporary file (see the module's note on
    the GIL), read back as ``JpegFrames``: ``with JpegSpool() as spool: spool.add(frame)``,
    then ``spool.frames()`` before the block ends. Not for two threads at once."""

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile(prefix="sc-frames-")  # noqa: SIM115 (closed on exit)
        self._ends: list[int] = []
        self._size: tuple[int, int] | None = None

    def __enter__(self) -> JpegSpool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._file.close()

    def add(self, frame_rgb: np.ndarray) -> None:
        """Encodes one (rows, cols, 3) uint8 RGB frame; every frame has the first one's size."""
        frame = np.asarray(frame_rgb)
        if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"a frame must be (rows, cols, 3) uint8, got {frame.shape}")
        if self._size is None:
            self._size = (frame.shape[0], frame.shape[1])
        elif self._size != frame.shape[:2]:
            raise ValueError(f"frame of {frame.shape[:2]} in a loop of {self._size}")
        _save_jpeg(frame, self._file)
        self._ends.append(self._file.tell())

    def frames(self) -> JpegFrames:
        """Every frame added so far, in order."""
        if self._size is None:
            raise ValueError("no frame was added")
        self._file.seek(0)
        data = self._file.read(self._ends[-1])
        self._file.seek(0, io.SEEK_END)
        starts = [0, *self._ends[:-1]]
        encoded = [data[start:end] for start, end in zip(starts, self._ends, strict=True)]
        return JpegFrames(encoded, *self._size)


def build_secondary_capture(
    source_ds: Dataset,
    rendered_rgb: np.ndarray | JpegFrames,
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
    the source loop, so a frame number means the same instant in both), or those frames
    already encoded (``JpegFrames``)."""
    n_source = int(source_ds.get("NumberOfFrames", 1) or 1)
    expected = (n_source, int(source_ds.Rows), int(source_ds.Columns), 3)
    if isinstance(rendered_rgb, JpegFrames):
        frames, dtype = rendered_rgb, np.dtype(np.uint8)
    else:
        frames, dtype = np.asarray(rendered_rgb), np.asarray(rendered_rgb).dtype
    if frames.shape != expected or dtype != np.uint8:
        raise ValueError(f"rendered frames {frames.shape} {dtype}: want {expected} uint8")
    if not isinstance(frames, JpegFrames):
        frames = JpegFrames.of(frames)
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
    encoded = list(frames.encoded)
    sc.PixelData = encapsulate(encoded)
    sc["PixelData"].is_undefined_length = True
    sc.LossyImageCompression = "01"
    ratio = int(np.prod(frames.shape)) / max(1, sum(len(b) for b in encoded))
    ratios = [f"{ratio:.2f}"]
    methods = [LOSSY_METHOD_JPEG]
    if str(source_ds.get("LossyImageCompression", "")) == "01":  # the source's history first
        ratios = [str(v) for v in _as_list(source_ds.get("LossyImageCompressionRatio"))] + ratios
        methods = [str(v) for v in _as_list(source_ds.get("LossyImageCompressionMethod"))] + methods
    sc.LossyImageCompressionRatio = ratios
    sc.LossyImageCompressionMethod = methods
    return sc


def write_secondary_capture(
    source_ds: Dataset,
    rendered_rgb: np.ndarray | JpegFrames,
    out_path: str | Path,
    **options: object,
) -> Dataset:
    """``build_secondary_capture`` and save it to ``out_path``; returns the dataset written."""
    sc = build_secondary_capture(source_ds, rendered_rgb, **options)  # type: ignore[arg-type]
    save(sc, out_path)
    return sc


def encode_frame(frame_rgb: np.ndarray) -> bytes:
    """One (rows, cols, 3) uint8 RGB frame as the SC stores it: JPEG baseline, 4:2:2."""
    buffer = io.BytesIO()
    _save_jpeg(frame_rgb, buffer)
    return buffer.getvalue()


def _save_jpeg(frame_rgb: np.ndarray, out: IO[bytes]) -> None:
    Image.fromarray(frame_rgb, "RGB").save(
        out, format="JPEG", quality=JPEG_QUALITY, subsampling="4:2:2"
    )


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
