"""The fuzz seeds: the phantom generator's own objects, made small, in every pixel encoding it
writes, plus a Comprehensive SR and an Encapsulated PDF of the same study.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_file_meta_info
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid

from echo_agent.bench.fuzz_encoded import U32
from pacs_agent.dicom import contexts

DEFAULT_SEED = 1
# the small phantom objects: a few frames of a few pixels, so thousands of cases run in minutes
SEED_FRAMES = 3
SEED_ROWS = 24
SEED_COLUMNS = 32


@dataclass(frozen=True)
class SeedObject:
    """A small valid object: its encoded dataset (no File Meta) in ``syntax``."""

    name: str
    sop_class: str
    syntax: str
    data: bytes

    @property
    def implicit(self) -> bool:
        return self.syntax == contexts.IMPLICIT_VR_LITTLE_ENDIAN

    @property
    def encapsulated(self) -> bool:
        return self.syntax in contexts.ENCAPSULATED_TRANSFER_SYNTAXES

    @property
    def image(self) -> bool:
        return self.sop_class in contexts.IMAGE_SOP_CLASSES


def make_seeds(folder: Path, seed: int = DEFAULT_SEED) -> list[SeedObject]:
    """The phantom generator's Ultrasound objects, small (JPEG YBR, RLE RGB, native RGB and
    MONOCHROME2 loops, the MONOCHROME2 loop in Implicit VR, a single-frame still), and an SR
    and an Encapsulated PDF of the same study."""

    from inference.phantom.dicom_writer import (
        JPEG_YBR,
        RAW_MONO,
        RAW_RGB,
        RLE_RGB,
        SeriesInfo,
        UltrasoundRegion,
        write_ultrasound,
    )
    from inference.phantom.identity import sample_identity

    rng = np.random.default_rng(seed)
    identity = sample_identity(rng, seed, 0)
    folder.mkdir(parents=True, exist_ok=True)
    region = UltrasoundRegion(0, 0, SEED_COLUMNS - 1, SEED_ROWS - 1, 0.05, SEED_COLUMNS / 2, 0.0)
    grid = np.indices((SEED_FRAMES, SEED_ROWS, SEED_COLUMNS)).sum(axis=0)
    grey = ((grid * 9 + rng.integers(0, 40, grid.shape)) % 256).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=3)
    seeds: list[SeedObject] = []
    plans = [
        ("us_jpeg_ybr", JPEG_YBR, rgb, 35.0),
        ("us_rle_rgb", RLE_RGB, rgb, 35.0),
        ("us_native_rgb", RAW_RGB, rgb, 35.0),
        ("us_native_mono", RAW_MONO, grey, 35.0),
        ("us_still_mono", RAW_MONO, grey[:1], None),
    ]
    for number, (name, encoding, frames, frame_time_ms) in enumerate(plans, start=1):
        info = SeriesInfo(
            identity=identity,
            series_uid=identity.uid("fuzz-series", name),
            sop_uid=identity.uid("fuzz-seed", name),
            series_number=number,
            series_description="A4C" if frame_time_ms else "still",
            seconds_after_study=number * 10,
            regions=(region,),
            frame_time_ms=frame_time_ms,
            heart_rate_bpm=72 if frame_time_ms else None,
        )
        path = write_ultrasound(folder / f"{name}.dcm", frames, info, encoding)
        seeds.append(_seed_from_file(name, path))
    mono = dcmread(folder / "us_native_mono.dcm")
    seeds.append(
        SeedObject(
            "us_native_mono_implicit",
            str(mono.SOPClassUID),
            contexts.IMPLICIT_VR_LITTLE_ENDIAN,
            encode_dataset(mono, implicit=True),
        )
    )
    for name, build in (("sr", _sr_seed), ("pdf", _pdf_seed)):
        uids = [generate_uid(entropy_srcs=["echo-agent-fuzz", str(seed), name, r]) for r in "is"]
        seeds.append(build(mono, *uids))
    return seeds


def _seed_from_file(name: str, path: Path) -> SeedObject:
    meta = read_file_meta_info(path)
    raw = path.read_bytes()
    (group_length,) = U32.unpack_from(raw, 140)  # (0002,0000) right after the 128+4 preamble
    return SeedObject(
        name,
        str(meta.MediaStorageSOPClassUID),
        str(meta.TransferSyntaxUID),
        raw[144 + group_length :],
    )


def encode_dataset(ds: Dataset, *, implicit: bool) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = implicit
    write_dataset(buffer, ds)
    return buffer.getvalue()


def _patient_and_study(source: Dataset) -> Dataset:
    ds = Dataset()
    for keyword in (
        "SpecificCharacterSet",
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "ReferringPhysicianName",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyID",
    ):
        if keyword in source:
            setattr(ds, keyword, source[keyword].value)
    return ds


def _sr_seed(source: Dataset, sop_uid: str, series_uid: str) -> SeedObject:
    """A Comprehensive SR whose content tree nests sequences of undefined length, the form
    scanners' measurement SRs often travel in."""

    ds = _patient_and_study(source)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.33"
    ds.SOPInstanceUID = sop_uid
    ds.Modality = "SR"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 90
    ds.InstanceNumber = 1
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag = "PARTIAL"
    ds.VerificationFlag = "UNVERIFIED"
    ds.ConceptNameCodeSequence = [code_item("125200", "DCM", "Adult Echocardiography Procedure")]

    def text_item(value: str) -> Dataset:
        item = Dataset()
        item.RelationshipType = "CONTAINS"
        item.ValueType = "TEXT"
        item.ConceptNameCodeSequence = [code_item("121071", "DCM", "Finding")]
        item.TextValue = value
        item.is_undefined_length_sequence_item = True
        return item

    group = Dataset()
    group.RelationshipType = "CONTAINS"
    group.ValueType = "CONTAINER"
    group.ContinuityOfContent = "SEPARATE"
    group.ConceptNameCodeSequence = [code_item("125007", "DCM", "Measurement Group")]
    group.ContentSequence = DicomSequence([text_item("LV normal"), text_item("EF 60 %")])
    group["ContentSequence"].is_undefined_length = True
    group.is_undefined_length_sequence_item = True
    ds.ContentSequence = DicomSequence([text_item("Echo report"), group])
    ds["ContentSequence"].is_undefined_length = True
    return SeedObject(
        "sr_comprehensive",
        ds.SOPClassUID,
        contexts.EXPLICIT_VR_LITTLE_ENDIAN,
        encode_dataset(ds, implicit=False),
    )


def _pdf_seed(source: Dataset, sop_uid: str, series_uid: str) -> SeedObject:
    ds = _patient_and_study(source)
    ds.SOPClassUID = contexts.ENCAPSULATED_PDF
    ds.SOPInstanceUID = sop_uid
    ds.Modality = "DOC"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 91
    ds.InstanceNumber = 1
    ds.ConceptNameCodeSequence = [code_item("18748-4", "LN", "Diagnostic imaging report")]
    ds.DocumentTitle = "Echo report"
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    pdf = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
    ds.EncapsulatedDocument = pdf + b"\x00" * (len(pdf) % 2)
    return SeedObject(
        "pdf_document",
        ds.SOPClassUID,
        contexts.EXPLICIT_VR_LITTLE_ENDIAN,
        encode_dataset(ds, implicit=False),
    )


def code_item(value: str, scheme: str, meaning: str) -> Dataset:
    code = Dataset()
    code.CodeValue = value
    code.CodingSchemeDesignator = scheme
    code.CodeMeaning = meaning
    return code
