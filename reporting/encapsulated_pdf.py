"""The report PDF wrapped as a DICOM Encapsulated PDF, filed in the source study, so PACS
users find the printed report next to the loop.

Encapsulated PDF IOD (PS3.3 A.45.1): a new series of modality DOC, SC Equipment (conversion type
WSD: made on a workstation), the Encapsulated Document module with the document title, its LOINC
concept (42148-7 US Heart, the same code as the FHIR DiagnosticReport), Burned In Annotation YES
(the PDF names the patient), the source loop in the Source Instance Sequence, and the
verification state of the report it carries.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import EncapsulatedPDFStorage
from pydicom.valuerep import DT

from reporting import codes
from reporting.dicom_base import (
    SERIES_NUMBER_PDF,
    Equipment,
    local_now,
    new_instance,
    new_uid,
    save,
    source_image_item,
)
from reporting.types import DEMO_LABEL_ASCII, DraftReport

PDF_MAGIC = b"%PDF-"
MIME_PDF = "application/pdf"
DOCUMENT_TITLE = "Echocardiogram report: LV function (A4C)"


def build_encapsulated_pdf(
    source_ds: Dataset,
    pdf_bytes: bytes,
    report: DraftReport,
    *,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    series_number: int = SERIES_NUMBER_PDF,
    instance_number: int | None = None,
    equipment: Equipment | None = None,
    now: dt.datetime | None = None,
) -> Dataset:
    """The Encapsulated PDF dataset for one report version (instance number = version)."""
    if not pdf_bytes.startswith(PDF_MAGIC):
        raise ValueError("pdf_bytes is not a PDF document (no %PDF- header)")
    equipment = equipment or Equipment()
    now = now or local_now()
    title = DOCUMENT_TITLE + (f" [{DEMO_LABEL_ASCII}]" if report.demo_models else "")
    doc = new_instance(
        source_ds,
        sop_class_uid=EncapsulatedPDFStorage,
        modality="DOC",
        series_instance_uid=series_instance_uid or new_uid(),
        series_number=series_number,
        sop_instance_uid=sop_instance_uid or new_uid(),
        instance_number=instance_number or report.version,
        series_description="LV function report (PDF)" + (" [DEMO]" if report.demo_models else ""),
        equipment=equipment,
        now=now,
    )
    doc.ConversionType = "WSD"
    doc.AcquisitionDateTime = DT(now.replace(microsecond=0))
    doc.BurnedInAnnotation = "YES"
    doc.DocumentTitle = title
    doc.ConceptNameCodeSequence = [codes.REPORT_US_HEART.dicom()]
    doc.VerificationFlag = "VERIFIED" if report.is_signed else "UNVERIFIED"
    doc.SourceInstanceSequence = [source_image_item(source_ds)]
    doc.MIMETypeOfEncapsulatedDocument = MIME_PDF
    doc.EncapsulatedDocumentLength = len(pdf_bytes)
    # OB must have even length; the declared length above keeps the true size
    doc.EncapsulatedDocument = pdf_bytes + (b"\x00" if len(pdf_bytes) % 2 else b"")
    return doc


def write_encapsulated_pdf(
    source_ds: Dataset,
    pdf_bytes: bytes,
    report: DraftReport,
    out_path: str | Path,
    **options: object,
) -> Dataset:
    """``build_encapsulated_pdf`` and save it to ``out_path``; returns the dataset written."""
    doc = build_encapsulated_pdf(source_ds, pdf_bytes, report, **options)  # type: ignore[arg-type]
    save(doc, out_path)
    return doc


def extract_pdf(ds: Dataset) -> bytes:
    """The PDF bytes back out of an Encapsulated PDF (without the padding byte)."""
    data = bytes(ds.EncapsulatedDocument)
    length = ds.get("EncapsulatedDocumentLength")
    return data[: int(length)] if length is not None else data.rstrip(b"\x00")
