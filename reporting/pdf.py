"""The human-readable report as PDF (reportlab): identity and status, key frames with the LV
contour, the LV area curve with the beats marked, the measurement table with methods and
reference ranges, quality flags, the narrative, the conclusion on LV systolic function and the
signature block.

It is built from the same ``reported_values`` as the SR and FHIR, so the printed numbers are
the exported ones. When the demo networks produced the numbers, every page carries the demo
label in its header and footer. A preliminary report says in its signature block that it is
unsigned; nothing on the page looks signed until it is.
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Callable
from xml.sax.saxutils import escape

import numpy as np
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import (
    BaseDocTemplate,
    Flowable,
    KeepTogether,
    Paragraph,
    SimpleDocTemplate,
    Spacer,
    Table,
    TableStyle,
)

from inference.types import Measurements
from reporting.body_size import BSA_FORMULA, BodySize
from reporting.dicom_base import Equipment
from reporting.indexed_volumes import BSA_LABEL, INDEX_LABELS, bsa_text, indexed_volumes
from reporting.interpretation import ASE_2015, interpret, lv_systolic_function
from reporting.pdf_figures import Styles, area_curve, curve_legend, key_frame_table, key_frames
from reporting.types import (
    DEMO_LABEL,
    Algorithms,
    DraftReport,
    SourceLoop,
    person_display_name,
)
from reporting.values import (
    LoopQuality,
    ReportedValue,
    WithheldValue,
    loop_quality,
    primary_ef,
    reported_values,
    shown_flags,
    withheld_ef,
    withheld_values,
)

PDF_MEDIA_TYPE = "application/pdf"
TITLE = "Echocardiogram: left ventricular function (apical four-chamber)"
_DEMO_COLOR = colors.Color(0.6, 0.0, 0.0)


def build_report_pdf(
    source: SourceLoop,
    measurements: Measurements,
    algorithms: Algorithms,
    report: DraftReport,
    *,
    frames_rgb: np.ndarray | None = None,
    masks: np.ndarray | None = None,
    equipment: Equipment | None = None,
    generated_at: dt.datetime | None = None,
) -> bytes:
    """The report PDF's bytes. ``frames_rgb`` (frames, rows, cols, 3) and ``masks`` give the key
    frames; without them the page says the images are not included."""
    equipment = equipment or Equipment()
    generated_at = generated_at or dt.datetime.now().astimezone()
    demo = report.demo_models or algorithms.demo_models
    styles = _styles()
    values = reported_values(measurements, algorithms)
    story: list[Flowable] = []
    story.append(Paragraph(escape(TITLE), styles["title"]))
    if demo:
        story.append(Paragraph(escape(DEMO_LABEL), styles["demo"]))
    story.append(_identity_table(source, report, styles))
    story.append(Spacer(1, 4 * mm))

    frames = []
    if frames_rgb is not None and masks is not None:
        frames = key_frames(frames_rgb, masks, measurements)
    story.append(Paragraph("Key frames with the LV contour", styles["h2"]))
    if frames:
        story.append(key_frame_table(frames, styles))
    else:
        story.append(_note("Images not included.", styles))
    story.append(Paragraph("LV area over the loop", styles["h2"]))
    story.append(area_curve(measurements))
    story.append(Paragraph(curve_legend(measurements), styles["small"]))

    withheld = withheld_values(measurements)
    quality = loop_quality(measurements)
    story.append(Paragraph("Measurements", styles["h2"]))
    if quality is not None:
        story.append(Paragraph(_quality_text(quality), styles["body"]))
    story.append(_measurement_table(values, withheld, source.patient_sex, styles,
                                    source.body_size))  # fmt: skip
    story.append(Paragraph(_reference_note(), styles["small"]))
    story.append(Paragraph(_algorithm_text(algorithms), styles["small"]))
    flags = shown_flags(measurements)
    if flags:
        story.append(Paragraph("Quality flags: look twice", styles["h2"]))
        for flag in flags:
            story.append(Paragraph(f"&bull; {escape(flag.message)}", styles["body"]))

    conclusion = lv_systolic_function(primary_ef(values), source.patient_sex, withheld_ef(withheld))
    story.append(Paragraph("LV systolic function", styles["h2"]))
    story.append(Paragraph(escape(conclusion.text), styles["body"]))
    story.append(Paragraph("Report", styles["h2"]))
    narrative = report.narrative_text.strip() or "(no narrative)"
    for paragraph in narrative.split("\n\n"):
        story.append(Paragraph(escape(paragraph).replace("\n", "<br/>"), styles["body"]))
    story.append(KeepTogether(_signature_block(report, styles)))

    buffer = io.BytesIO()
    footer = _footer(demo, equipment, generated_at)
    doc = SimpleDocTemplate(
        buffer,
        pagesize=A4,
        leftMargin=16 * mm,
        rightMargin=16 * mm,
        topMargin=16 * mm,
        bottomMargin=18 * mm,
        title=TITLE,
        author=f"{equipment.manufacturer} {equipment.software_versions}",
        subject=f"Study {source.study_instance_uid}",
    )
    doc.build(story, onFirstPage=footer, onLaterPages=footer)
    return buffer.getvalue()


def _styles() -> Styles:
    base = getSampleStyleSheet()
    body = ParagraphStyle("body", parent=base["BodyText"], fontSize=9.5, leading=12.5)
    return {
        "title": ParagraphStyle("title", parent=base["Title"], fontSize=15, leading=19),
        "h2": ParagraphStyle("h2", parent=base["Heading2"], fontSize=11.5, spaceBefore=8),
        "body": body,
        "small": ParagraphStyle("small", parent=body, fontSize=8, leading=10),
        "cell": ParagraphStyle("cell", parent=body, fontSize=8.5, leading=10.5),
        "demo": ParagraphStyle(
            "demo",
            parent=body,
            fontName="Helvetica-Bold",
            fontSize=11,
            textColor=colors.white,
            backColor=_DEMO_COLOR,
            alignment=1,
            borderPadding=4,
            spaceAfter=8,
        ),
    }


def _note(text: str, styles: Styles) -> Paragraph:
    return Paragraph(escape(text), styles["body"])


def _identity_table(source: SourceLoop, report: DraftReport, styles: Styles) -> Table:
    status = {
        "preliminary": "PRELIMINARY (unsigned)",
        "final": "FINAL (signed)",
        "amended": "AMENDED (signed)",
    }[report.status]
    study_dt = source.study_datetime
    rows = [
        ("Patient", person_display_name(source.patient_name) or "(no name)",
         "Patient ID", source.patient_id or "(none)"),
        ("Sex", {"M": "male", "F": "female", "O": "other"}.get(source.patient_sex, "unknown"),
         "Birth date", _date(source.patient_birth_date)),
        ("Study date", study_dt.strftime("%Y-%m-%d %H:%M") if study_dt else "(unknown)",
         "Accession", source.accession_number or "(none)"),
        ("Institution", source.institution_name or "(unknown)",
         "Report", f"{status}, version {report.version}"),
    ]  # fmt: skip
    table = Table(
        [[Paragraph(escape(str(c)), styles["cell"]) for c in row] for row in rows],
        colWidths=[24 * mm, 62 * mm, 24 * mm, 68 * mm],
    )
    table.setStyle(
        TableStyle(
            [
                ("FONTNAME", (0, 0), (-1, -1), "Helvetica"),
                ("TEXTCOLOR", (0, 0), (0, -1), colors.grey),
                ("TEXTCOLOR", (2, 0), (2, -1), colors.grey),
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
                ("LINEBELOW", (0, -1), (-1, -1), 0.5, colors.lightgrey),
            ]
        )
    )
    return table


def _date(yyyymmdd: str) -> str:
    try:
        return dt.datetime.strptime(yyyymmdd, "%Y%m%d").strftime("%Y-%m-%d")
    except ValueError:
        return "(unknown)"


def _quality_text(quality: LoopQuality) -> str:
    """The quality score in bold beside the table (it qualifies every value in it)."""
    return f"<b>{escape(quality.statement)}</b>"


def _measurement_table(
    values: list[ReportedValue],
    withheld: list[WithheldValue],
    sex: str,
    styles: Styles,
    body: BodySize | None = None,
) -> Table:
    """Measured values with method, range and grade; with a reported volume and ``body``,
    the BSA and the BSA-indexed volumes (or one row saying why they are not indexed); then one
    row per withheld value, its label and "not measurable — <reason>; manual measurement
    required" across the other columns (no number, no range, no grade)."""
    header = ["Measurement", "Value", "Method", "Reference range", "Interpretation"]
    rows = [[Paragraph(f"<b>{h}</b>", styles["cell"]) for h in header]]
    for value in values:
        interpretation = interpret(value, sex)
        if interpretation is None:
            reference, verdict = "-", "-"
        else:
            reference = "; ".join(
                f"{r.low:g}-{r.high:g} {value.unit_text}"
                + {"M": " (men)", "F": " (women)", None: ""}[r.sex]
                for r in interpretation.ranges
            )
            verdict = interpretation.grade or "not graded (sex unknown)"
        cells = [value.label, value.text, value.method_text, reference, verdict]
        rows.append([Paragraph(escape(c), styles["cell"]) for c in cells])
    spans = _index_rows(rows, values, sex, styles, body)
    for value in withheld:
        spans.append(("SPAN", (1, len(rows)), (-1, len(rows))))
        text = f"<b>{escape(value.text)}</b> \u2014 {escape(value.detail)}"
        rows.append([Paragraph(escape(value.label), styles["cell"]),
                     Paragraph(text, styles["cell"]), "", "", ""])  # fmt: skip
    if len(rows) == 1:
        rows.append([Paragraph("No measurement could be made.", styles["cell"])] + [""] * 4)
    table = Table(rows, colWidths=[34 * mm, 20 * mm, 62 * mm, 34 * mm, 28 * mm], repeatRows=1)
    table.setStyle(
        TableStyle(
            [
                ("GRID", (0, 0), (-1, -1), 0.25, colors.lightgrey),
                ("BACKGROUND", (0, 0), (-1, 0), colors.Color(0.94, 0.94, 0.94)),
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
                *spans,
            ]
        )
    )
    return table


def _index_rows(
    rows: list[list[object]],
    values: list[ReportedValue],
    sex: str,
    styles: Styles,
    body: BodySize | None,
) -> list[tuple[object, ...]]:
    """Appends the BSA row and the indexed volumes to ``rows``; returns the spans of a
    "not indexed" row."""
    if body is None or not any(v.key in INDEX_LABELS for v in values):
        return []
    bsa = body.bsa_m2
    if bsa is None:
        text = f"<b>not indexed</b> \u2014 {escape(body.withheld_reason)}"
        rows.append([Paragraph("LV volume indices", styles["cell"]),
                     Paragraph(text, styles["cell"]), "", "", ""])  # fmt: skip
        return [("SPAN", (1, len(rows) - 1), (-1, len(rows) - 1))]
    method = (f"{BSA_FORMULA}, from height {body.height_cm:g} cm and weight "
              f"{body.weight_kg:g} kg (DICOM header)")  # fmt: skip
    cells = [[BSA_LABEL, bsa_text(bsa), method, "-", "-"]]
    for index in indexed_volumes(values, body, sex):
        grade = index.interpretation.grade or "not graded (sex unknown)"
        cells.append([index.label, index.text, "volume / BSA", index.reference_text, grade])
    rows.extend([Paragraph(escape(c), styles["cell"]) for c in row] for row in cells)
    return []


def _reference_note() -> str:
    return (
        f"Reference ranges: LVEF and LV volumes {escape(ASE_2015)} (volumes: biplane ranges, "
        "applied to single-plane A4C volumes; indexed volumes: BSA by Mosteller from the "
        "header's height and weight); heart rate: conventional adult resting range."
    )


def _algorithm_text(algorithms: Algorithms) -> str:
    parts = [
        f"Segmentation: {escape(algorithms.segmentation.display_name)} "
        f"v{escape(algorithms.segmentation.version)}",
        f"EF regression: {escape(algorithms.ejection_fraction.display_name)} "
        f"v{escape(algorithms.ejection_fraction.version)}",
    ]
    return "Algorithms (artificial intelligence): " + "; ".join(parts) + "."


def _signature_block(report: DraftReport, styles: Styles) -> list[Flowable]:
    block = [Spacer(1, 4 * mm), Paragraph("Signature", styles["h2"])]
    signature = report.signature
    if signature is None:
        text = (
            "<b>Unsigned.</b> Preliminary report generated automatically; it has not been "
            "reviewed or signed by a physician."
        )
    else:
        when = signature.signed_at.strftime("%Y-%m-%d %H:%M %Z").strip()
        text = (
            f"Electronically signed by <b>{escape(signature.display)}</b>, "
            f"{escape(signature.organisation)}, at {escape(when)}."
        )
        if report.status == "amended":
            text += f" Amended (version {report.version}): {escape(report.amendment_reason)}"
    block.append(Paragraph(text, styles["body"]))
    return block


def _footer(
    demo: bool, equipment: Equipment, generated_at: dt.datetime
) -> Callable[[Canvas, BaseDocTemplate], None]:
    generated = generated_at.strftime("%Y-%m-%d %H:%M %Z").strip()

    def draw(canvas: Canvas, doc: BaseDocTemplate) -> None:
        canvas.saveState()
        width, _ = A4
        canvas.setFont("Helvetica", 7)
        canvas.setFillColor(colors.grey)
        canvas.drawString(
            16 * mm,
            10 * mm,
            f"{equipment.manufacturer} {equipment.software_versions}, generated {generated}",
        )
        canvas.drawRightString(width - 16 * mm, 10 * mm, f"page {doc.page}")
        if demo:
            canvas.setFont("Helvetica-Bold", 8)
            canvas.setFillColor(_DEMO_COLOR)
            canvas.drawCentredString(width / 2, 6 * mm, DEMO_LABEL)
        canvas.restoreState()

    return draw
