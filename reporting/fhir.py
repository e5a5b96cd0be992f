"""FHIR resources for the EHR (R4B models of fhir.resources; R4B is wire-compatible with the R4
that EHRs run): one Observation per reported measurement and a DiagnosticReport that gathers
them, in a transaction Bundle that a retry can resend safely.

Idempotence: every resource carries a business identifier whose system is this node's URN and
whose value is derived from the analysed loop's SOP Instance UID (``DR-<uid>``,
``OBS-<uid>-<measurement>``). Each Bundle entry is a conditional update,
``PUT DiagnosticReport?identifier=<system>|<value>``: the first send creates the resource, a
resend (after a timeout, say) or a later version (signed, amended) updates the same one, so the
receiver never holds two reports for one loop. Entries refer to each other by ``urn:uuid:``
full URLs that are a pure function of the identifier, so the same report always yields the same
Bundle.

Status follows the report: ``preliminary`` until signed, then ``final``, ``amended`` for edits
after signing. Interpretations use the reference ranges of ``reporting.interpretation``; the
conclusion codes describe LV systolic function only and never heart failure. With demo models,
the demo label heads the conclusion and is a note on every Observation.

The parts: ``reporting.fhir_common`` (identifiers, URLs, shared pieces) and
``reporting.fhir_observations`` (the Observations); this module builds the DiagnosticReport and
the Bundle and keeps every name it always exported.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.observation import Observation

from inference.types import Measurements
from reporting import codes
from reporting.fhir_common import (
    concept,
    conditional_url,
    effective_datetime,
    fhir_instant,
    full_url,
    imaging_study,
    observation_identifier,
    report_identifier,
    subject_reference,
    xhtml_narrative,
)
from reporting.fhir_observations import build_observations
from reporting.interpretation import SystolicFunction, lv_systolic_function
from reporting.types import DEMO_LABEL, Algorithms, DraftReport, SourceLoop
from reporting.values import (
    LoopQuality,
    WithheldValue,
    loop_quality,
    primary_ef,
    reported_values,
    withheld_ef,
    withheld_values,
)

__all__ = [
    "PDF_CONTENT_TYPE",
    "REPORT_TITLE",
    "build_diagnostic_report",
    "build_fhir_bundle",
    "build_observations",
    "bundle_dict",
    "bundle_json",
    "conditional_url",
    "full_url",
    "observation_identifier",
    "report_identifier",
]

PDF_CONTENT_TYPE = "application/pdf"
REPORT_TITLE = "Echocardiogram: left ventricular function (apical four-chamber)"


def build_diagnostic_report(
    source: SourceLoop,
    measurements: Measurements,
    algorithms: Algorithms,
    report: DraftReport,
    *,
    node_system: str,
    observation_urls: list[str],
    pdf_bytes: bytes | None = None,
    patient_identifier_system: str | None = None,
    issued: dt.datetime | None = None,
) -> DiagnosticReport:
    """The DiagnosticReport; ``observation_urls`` are the references of its results."""
    issued = fhir_instant(issued)
    values = reported_values(measurements, algorithms)
    withheld = withheld_values(measurements)
    systolic = lv_systolic_function(primary_ef(values), source.patient_sex, withheld_ef(withheld))
    demo = report.demo_models or algorithms.demo_models
    conclusion = _conclusion(report, systolic, demo, withheld, loop_quality(measurements))
    resource: dict = {
        "resourceType": "DiagnosticReport",
        "identifier": [report_identifier(node_system, source)],
        "status": report.status,
        "category": [
            concept(codes.CATEGORY_CARDIAC_ULTRASOUND),
            concept(codes.CATEGORY_CARDIOLOGY),
        ],
        "code": concept(codes.REPORT_US_HEART, text="Echocardiogram"),
        "subject": subject_reference(source, patient_identifier_system),
        "issued": issued,
        "imagingStudy": [imaging_study(source)],
        "result": [{"reference": url} for url in observation_urls],
        "conclusion": conclusion,
        "text": xhtml_narrative([REPORT_TITLE, *conclusion.split("\n\n")]),
    }
    effective = effective_datetime(source)
    if effective:
        resource["effectiveDateTime"] = effective
    if source.institution_name:
        resource["performer"] = [{"display": source.institution_name}]
    if report.signature is not None:
        resource["resultsInterpreter"] = [{"display": report.signature.display}]
    conclusion_code = _conclusion_code(systolic)
    if conclusion_code:
        resource["conclusionCode"] = [conclusion_code]
    if pdf_bytes is not None:
        resource["presentedForm"] = [_pdf_attachment(pdf_bytes, report, issued)]
    return DiagnosticReport.model_validate(resource)


def build_fhir_bundle(
    source: SourceLoop,
    measurements: Measurements,
    algorithms: Algorithms,
    report: DraftReport,
    *,
    node_system: str,
    pdf_bytes: bytes | None = None,
    patient_identifier_system: str | None = None,
    issued: dt.datetime | None = None,
) -> Bundle:
    """The transaction Bundle: conditional updates of every Observation, then the report."""
    issued_at = fhir_instant(issued)
    observations = build_observations(
        source,
        measurements,
        algorithms,
        report,
        node_system=node_system,
        patient_identifier_system=patient_identifier_system,
        issued=dt.datetime.fromisoformat(issued_at),
    )
    entries = []
    urls = []
    for observation in observations:
        identifier = observation.identifier[0].model_dump(exclude_none=True)
        url = full_url(identifier)
        urls.append(url)
        entries.append(_entry(url, observation, "Observation", identifier))
    diagnostic = build_diagnostic_report(
        source,
        measurements,
        algorithms,
        report,
        node_system=node_system,
        observation_urls=urls,
        pdf_bytes=pdf_bytes,
        patient_identifier_system=patient_identifier_system,
        issued=dt.datetime.fromisoformat(issued_at),
    )
    identifier = report_identifier(node_system, source)
    entries.append(_entry(full_url(identifier), diagnostic, "DiagnosticReport", identifier))
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    return Bundle.model_validate(bundle)


def bundle_json(bundle: Bundle) -> str:
    """The Bundle as FHIR JSON (what is POSTed to the EHR's base URL)."""
    return bundle.model_dump_json(exclude_none=True)


def bundle_dict(bundle: Bundle) -> dict:
    """The Bundle as a JSON object (as the EHR receives it)."""
    return json.loads(bundle_json(bundle))


def _conclusion(
    report: DraftReport,
    systolic: SystolicFunction,
    demo: bool,
    withheld: list[WithheldValue],
    quality: LoopQuality | None,
) -> str:
    """The narrative (else the systolic-function sentence), then whatever of the withheld
    values' statements and the quality score it does not already say: an edited narrative may
    drop a sentence, the conclusion the EHR shows may not."""
    parts = [DEMO_LABEL] if demo else []
    parts.append(report.narrative_text.strip() or systolic.text)
    said = parts[-1]
    missing = [w.statement for w in withheld if w.statement not in said]
    if quality is not None and quality.statement not in said:
        missing.append(quality.statement)
    if missing:
        parts.append(" ".join(missing))
    if report.status == "amended":
        parts.append(f"Amended (version {report.version}): {report.amendment_reason}")
    return "\n\n".join(parts)


def _conclusion_code(systolic: SystolicFunction) -> dict | None:
    """The coded conclusion. Dysfunction carries its severity as a SNOMED CT post-coordinated
    expression (``134401001:246112005=6736007``: LV systolic dysfunction, severity moderate),
    which FHIR allows in ``Coding.code`` for SNOMED CT; the text says it in words."""
    if systolic.code is None:
        return None
    if systolic.severity is None:
        return concept(systolic.code, text=systolic.code.meaning)
    expression = f"{systolic.code.value}:{codes.SEVERITY.value}={systolic.severity.value}"
    display = f"{systolic.code.meaning}, {systolic.severity.meaning.lower()}"
    return {
        "coding": [{"system": systolic.code.fhir_system, "code": expression, "display": display}],
        "text": display,
    }


def _pdf_attachment(pdf_bytes: bytes, report: DraftReport, issued: str) -> dict:
    if not pdf_bytes.startswith(b"%PDF-"):
        raise ValueError("presentedForm must be a PDF (no %PDF- header)")
    return {
        "contentType": PDF_CONTENT_TYPE,
        "language": "en",
        "data": base64.b64encode(pdf_bytes).decode("ascii"),
        "size": len(pdf_bytes),
        "hash": base64.b64encode(hashlib.sha1(pdf_bytes).digest()).decode("ascii"),
        "title": f"{REPORT_TITLE} (version {report.version}, {report.status})",
        "creation": issued,
    }


def _entry(
    url: str,
    resource: Observation | DiagnosticReport,
    resource_type: str,
    identifier: dict[str, str],
) -> dict:
    return {
        "fullUrl": url,
        "resource": json.loads(resource.model_dump_json(exclude_none=True)),
        "request": {"method": "PUT", "url": conditional_url(resource_type, identifier)},
    }
