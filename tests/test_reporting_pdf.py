"""The report PDF (content, signature block, demo label) and its DICOM Encapsulated PDF
(dciodvfy, dcmdump, the PDF back out byte for byte)."""

from __future__ import annotations

import pydicom
import pytest
from orthanc_helpers import phantom_cache
from reporting_helpers import (
    SEED_ONE_STUDY,
    a4c_paths,
    dciodvfy_errors,
    dcmdump_reads,
    demo_algorithms,
    draft,
    load_loop,
    pdf_text,
    signature,
)

from reporting.encapsulated_pdf import extract_pdf, write_encapsulated_pdf
from reporting.pdf import build_report_pdf
from reporting.types import DEMO_LABEL
from reporting.values import reported_values


@pytest.fixture(scope="module")
def loop(request, tmp_path_factory):
    (path,) = a4c_paths(phantom_cache(request.config, tmp_path_factory), 1, SEED_ONE_STUDY)
    return load_loop(path)


def _pdf(loop, report, demo: bool = True) -> bytes:
    return build_report_pdf(
        loop.source,
        loop.measurements,
        demo_algorithms(demo),
        report,
        frames_rgb=loop.cine.frames,
        masks=loop.masks,
    )


def test_report_pdf_content(loop):
    narrative = "LV systolic function is reduced.\n\nNo pericardial effusion <seen> & noted."
    pdf = _pdf(loop, draft(narrative=narrative))
    assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF")
    text = pdf_text(pdf)
    for value in reported_values(loop.measurements, demo_algorithms()):
        assert value.text in text, value.label  # every exported number is printed
        assert value.label.split(" ")[0] in text
    assert "method of disks, single plane" in text
    assert "End-diastole: frame" in text and "End-systole: frame" in text
    assert "LV area over the loop" in text
    flat = text.replace("\n", "")  # reportlab shows "<", ">" and "&" as runs of their own
    assert "No pericardial effusion <seen> & noted." in flat  # the narrative, not markup
    assert "Unsigned." in text and "Electronically signed" not in text
    assert "PRELIMINARY (unsigned)" in text
    assert "heart failure" not in text.lower()
    # two images (ED and ES key frames) are embedded
    assert pdf.count(b"/Subtype /Image") == 2


def test_signed_pdf_names_the_signer(loop):
    signed = draft().signed(signature())
    text = pdf_text(_pdf(loop, signed))
    assert "Electronically signed by" in text and "Dr Ada Okafor" in text
    assert "Echo Lab A" in text and "2024-08-16 09:30" in text
    assert "FINAL (signed)" in text and "Unsigned." not in text
    amended = signed.amended("Corrected text.", signature(), "typo in the narrative")
    text = " ".join(pdf_text(_pdf(loop, amended)).split())  # undo line wrapping
    assert "AMENDED (signed), version 2" in text and "typo in the narrative" in text


def test_demo_label_on_every_page_only_for_demo_models(loop):
    demo_text = pdf_text(_pdf(loop, draft(demo=True)))
    pages = demo_text.count("page ")
    assert pages >= 1
    # header banner once, footer on every page
    assert demo_text.count(DEMO_LABEL) >= pages + 1
    real_text = pdf_text(_pdf(loop, draft(demo=False), demo=False))
    assert "DEMO MODELS" not in real_text


@pytest.mark.parametrize("signed", [False, True])
def test_encapsulated_pdf_is_valid_and_carries_the_pdf(loop, tmp_path, signed):
    report = draft().signed(signature()) if signed else draft()
    pdf = _pdf(loop, report)
    out = tmp_path / "report_pdf.dcm"
    write_encapsulated_pdf(loop.header, pdf, report, out)
    assert dciodvfy_errors(out) == []
    dcmdump_reads(out)
    ds = pydicom.dcmread(out)
    assert ds.SOPClassUID == pydicom.uid.EncapsulatedPDFStorage
    assert ds.MIMETypeOfEncapsulatedDocument == "application/pdf"
    assert extract_pdf(ds) == pdf
    assert ds.StudyInstanceUID == loop.header.StudyInstanceUID
    assert ds.SeriesInstanceUID != loop.header.SeriesInstanceUID
    assert ds.SourceInstanceSequence[0].ReferencedSOPInstanceUID == loop.header.SOPInstanceUID
    assert ds.ConceptNameCodeSequence[0].CodeValue == "42148-7"
    assert ds.VerificationFlag == ("VERIFIED" if signed else "UNVERIFIED")
    assert "DEMO MODELS" in ds.DocumentTitle
    with pytest.raises(ValueError, match="PDF"):
        write_encapsulated_pdf(loop.header, b"not a pdf", report, out)
