"""Ultrasound (Multi-frame) Image Storage files with the headers a real cart writes.

Four pixel encodings are produced, because the node must decode what real PACS send: JPEG
baseline YBR_FULL_422 (the most common echo export), RLE lossless RGB, and uncompressed RGB
and MONOCHROME2. pydicom cannot encode JPEG baseline, so frames are compressed with Pillow and
encapsulated; RLE goes through pydicom's compress() with the pylibjpeg-rle plugin.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
)

from .identity import StudyIdentity

MANUFACTURER = "echo-agent phantom"
MODEL = "Phantom A4C Simulator"
SOFTWARE_VERSION = "echo-agent 0.1.0"
JPEG_QUALITY = 90

REGION_TISSUE = 1  # RegionDataType: tissue
REGION_COLOR_FLOW = 2
SPATIAL_2D = 1  # RegionSpatialFormat
UNITS_CM = 3


@dataclass(frozen=True)
class PixelEncoding:
    transfer_syntax_uid: str
    photometric: str  # YBR_FULL_422 | RGB | MONOCHROME2

    @property
    def samples_per_pixel(self) -> int:
        return 1 if self.photometric == "MONOCHROME2" else 3

    @property
    def name(self) -> str:
        return (
            {
                JPEGBaseline8Bit: "jpeg_baseline",
                RLELossless: "rle_lossless",
                ExplicitVRLittleEndian: "explicit_le",
            }[self.transfer_syntax_uid]
            + "_"
            + self.photometric.lower()
        )


JPEG_YBR = PixelEncoding(JPEGBaseline8Bit, "YBR_FULL_422")
RLE_RGB = PixelEncoding(RLELossless, "RGB")
RAW_RGB = PixelEncoding(ExplicitVRLittleEndian, "RGB")
RAW_MONO = PixelEncoding(ExplicitVRLittleEndian, "MONOCHROME2")
ENCODING_CYCLE = (JPEG_YBR, RLE_RGB, RAW_RGB, RAW_MONO)


@dataclass(frozen=True)
class UltrasoundRegion:
    """One item of the Sequence of Ultrasound Regions (absolute pixel coordinates)."""

    min_x0: int
    min_y0: int
    max_x1: int
    max_y1: int
    spacing_cm: float
    transducer_col: float  # absolute pixel position of the physical origin
    transducer_row: float
    data_type: int = REGION_TISSUE
    flags: int = 2  # bit 1: scaling protection, as scanners set for calibrated 2-D regions

    def item(self) -> Dataset:
        it = Dataset()
        it.RegionSpatialFormat = SPATIAL_2D
        it.RegionDataType = self.data_type
        it.RegionFlags = self.flags
        it.RegionLocationMinX0 = self.min_x0
        it.RegionLocationMinY0 = self.min_y0
        it.RegionLocationMaxX1 = self.max_x1
        it.RegionLocationMaxY1 = self.max_y1
        it.ReferencePixelX0 = round(float(self.transducer_col - self.min_x0))
        it.ReferencePixelY0 = round(float(self.transducer_row - self.min_y0))
        it.PhysicalUnitsXDirection = UNITS_CM
        it.PhysicalUnitsYDirection = UNITS_CM
        it.ReferencePixelPhysicalValueX = 0.0
        it.ReferencePixelPhysicalValueY = 0.0
        it.PhysicalDeltaX = float(self.spacing_cm)
        it.PhysicalDeltaY = float(self.spacing_cm)
        it.TransducerFrequency = 2500  # kHz
        return it


@dataclass(frozen=True)
class SeriesInfo:
    identity: StudyIdentity
    series_uid: str
    sop_uid: str
    series_number: int
    series_description: str | None  # None: attribute absent
    seconds_after_study: int
    regions: tuple[UltrasoundRegion, ...]
    frame_time_ms: float | None = None  # None: single frame
    heart_rate_bpm: int | None = None
    colour_flow: bool = False
    probe: str = "P5-1"
    depth_cm: float | None = None


def _jpeg_frames(frames: np.ndarray, quality: int = JPEG_QUALITY) -> tuple[list[bytes], float]:
    out = []
    for f in frames:
        buf = io.BytesIO()
        Image.fromarray(f, "RGB").save(
            buf, format="JPEG", quality=quality, subsampling="4:2:2", optimize=False
        )
        out.append(buf.getvalue())
    ratio = frames.nbytes / max(1, sum(len(b) for b in out))
    return out, ratio


def _base_dataset(info: SeriesInfo, enc: PixelEncoding, n_frames: int, shape) -> Dataset:
    idn = info.identity
    multi = info.frame_time_ms is not None
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    bits = "0011" if info.colour_flow else "0001"  # 2-D imaging (+ colour flow)
    # value 3 must be a defined term; CHEST is the one that fits transthoracic imaging
    ds.ImageType = ["ORIGINAL", "PRIMARY", "CHEST", bits]
    ds.SOPClassUID = UltrasoundMultiFrameImageStorage if multi else UltrasoundImageStorage
    ds.SOPInstanceUID = info.sop_uid
    ds.StudyDate = idn.study_date
    ds.SeriesDate = idn.study_date
    ds.ContentDate = idn.study_date
    ds.StudyTime = idn.study_time
    ds.SeriesTime = idn.time_after(info.seconds_after_study)
    ds.ContentTime = idn.time_after(info.seconds_after_study)
    ds.AccessionNumber = idn.accession_number
    ds.Modality = "US"
    ds.Manufacturer = MANUFACTURER
    ds.InstitutionName = idn.institution
    ds.ReferringPhysicianName = ""
    ds.StationName = "PHANTOM01"
    ds.StudyDescription = "Transthoracic echocardiogram"
    if info.series_description is not None:
        ds.SeriesDescription = info.series_description
    ds.ManufacturerModelName = MODEL
    ds.PatientName = idn.patient_name
    ds.PatientID = idn.patient_id
    ds.PatientBirthDate = idn.birth_date
    ds.PatientSex = idn.sex
    ds.BodyPartExamined = "HEART"
    ds.DeviceSerialNumber = "EA-0001"
    ds.SoftwareVersions = SOFTWARE_VERSION
    ds.TransducerData = [info.probe, "", ""]
    ds.ProcessingFunction = "CARDIAC"
    if info.depth_cm is not None:
        ds.DepthOfScanField = round(float(info.depth_cm * 10))  # mm
    if multi:
        ft = float(info.frame_time_ms)
        rate = round(float(1000.0 / ft))
        ds.FrameTime = f"{ft:.1f}"
        ds.CineRate = rate
        ds.RecommendedDisplayFrameRate = rate
        ds.EffectiveDuration = f"{n_frames * ft / 1000.0:.4f}"
        ds.ActualFrameDuration = round(float(ft))
        ds.PreferredPlaybackSequencing = 0  # looping
    if info.heart_rate_bpm is not None:
        ds.HeartRate = int(info.heart_rate_bpm)
    ds.StudyInstanceUID = idn.study_instance_uid
    ds.SeriesInstanceUID = info.series_uid
    ds.StudyID = idn.study_id
    ds.SeriesNumber = info.series_number
    ds.InstanceNumber = 1
    ds.PatientOrientation = ""
    ds.SequenceOfUltrasoundRegions = Sequence([r.item() for r in info.regions])
    ds.SamplesPerPixel = enc.samples_per_pixel
    ds.PhotometricInterpretation = enc.photometric
    if enc.samples_per_pixel == 3:
        ds.PlanarConfiguration = 0
    if multi:
        ds.NumberOfFrames = n_frames
        ds.FrameIncrementPointer = Tag(0x0018, 0x1063)
    ds.Rows, ds.Columns = int(shape[0]), int(shape[1])
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.UltrasoundColorDataPresent = 1 if info.colour_flow else 0
    ds.LossyImageCompression = "00"
    return ds


def write_ultrasound(
    path: Path,
    frames: np.ndarray,
    info: SeriesInfo,
    enc: PixelEncoding,
    jpeg_quality: int = JPEG_QUALITY,
) -> Path:
    """frames: (n, rows, cols, 3) RGB, or (n, rows, cols) grey for MONOCHROME2. jpeg_quality:
    Pillow's 1-95 scale, varied by the B-mode styles because labs export at different ones."""
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    if enc.samples_per_pixel == 1 and frames.ndim != 3:
        raise ValueError("MONOCHROME2 needs (n, rows, cols) frames")
    if enc.samples_per_pixel == 3 and (frames.ndim != 4 or frames.shape[-1] != 3):
        raise ValueError(f"{enc.photometric} needs (n, rows, cols, 3) RGB frames")
    multi = info.frame_time_ms is not None
    if not multi and frames.shape[0] != 1:
        raise ValueError("a single-frame object needs exactly one frame")
    n = frames.shape[0]
    ds = _base_dataset(info, enc, n, frames.shape[1:3])
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = enc.transfer_syntax_uid
    pixels = frames if multi else frames[0]

    if enc.transfer_syntax_uid == JPEGBaseline8Bit:
        chunks, ratio = _jpeg_frames(frames, jpeg_quality)
        ds.PixelData = encapsulate(chunks, has_bot=True)
        ds["PixelData"].VR = "OB"
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionRatio = f"{ratio:.2f}"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
    elif enc.transfer_syntax_uid == RLELossless:
        ds.compress(RLELossless, pixels, encoding_plugin="pylibjpeg", generate_instance_uid=False)
    else:
        ds.PixelData = pixels.tobytes()
        ds["PixelData"].VR = "OB"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
