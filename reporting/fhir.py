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
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import uuid
from html import escape
from urllib.parse import quote

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.observation import Observation

from inference.types import Measurements
from reporting import codes
from reporting.codes import DICOM_UID_SYSTEM, ClinicalCode
from reporting.interpretation import SystolicFunction, interpret, lv_systolic_function
from reporting.types import (
    DEMO_LABEL,
    Algorithms,
    DraftReport,
    SourceLoop,
    person_display_name,
)
from reporting.values import (
    GATED_FIELDS,
    LoopQuality,
    ReportedValue,
    WithheldValue,
    loop_quality,
    primary_ef,
    reported_values,
    withheld_ef,
    withheld_values,
)

PDF_CONTENT_TYPE = "application/pdf"
REPORT_TITLE = "Echocardiogram: left ventricular function (apical four-chamber)"


def report_identifier(node_system: str, source: SourceLoop) -> dict[str, str]:
    """The DiagnosticReport's stable business identifier (one report per analysed loop)."""
    return {"system": _checked_system(node_system), "value": f"DR-{source.sop_instance_uid}"}


def observation_identifier(node_system: str, source: SourceLoop, key: str) -> dict[str, str]:
    return {
        "system": _checked_system(node_system),
        "value": f"OBS-{source.sop_instance_uid}-{key}",
    }


def conditional_url(resource_type: str, identifier: dict[str, str]) -> str:
    """``Type?identifier=system|value`` with both parts percent-encoded (RFC 3986)."""
    system = quote(identifier["system"], safe="")
    value = quote(identifier["value"], safe="")
    return f"{resource_type}?identifier={system}%7C{value}"


def full_url(identifier: dict[str, str]) -> str:
    """A ``urn:uuid:`` that is a pure function of the identifier."""
    name = f"{identifier['system']}|{identifier['value']}"
    return f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, name)}"


def build_observations(
    source: SourceLoop,
    measurements: Measurements,
    algorithms: Algorithms,
    report: DraftReport,
    *,
    node_system: str,
    patient_identifier_system: str | None = None,
    issued: dt.datetime | None = None,
) -> list[Observation]:
    """One Observation per reported measurement, then one per withheld value (no value, a
    ``dataAbsentReason`` with the reason; see ``reporting.values``), in ``reported_values``
    order. Both LVEF Observations carry the loop's quality score as a component."""
    issued = _instant(issued)
    quality = loop_quality(measurements)
    demo = report.demo_models or algorithms.demo_models
    by_key: dict[str, dict] = {}
    for v in reported_values(measurements, algorithms):
        by_key[v.key] = _observation(
            source, v, report, demo, node_system, patient_identifier_system, issued
        )
    for w in withheld_values(measurements):
        by_key[w.key] = _withheld_observation(
            source, w, report, demo, node_system, patient_identifier_system, issued
        )
    order = {key: i for i, key in enumerate(GATED_FIELDS)}
    resources = [by_key[key] for key in sorted(by_key, key=order.__getitem__)]
    for resource in resources:
        if quality is not None and resource["code"]["coding"][0]["code"] == codes.LVEF.value:
            resource["component"] = [_quality_component(quality)]
    return [Observation.model_validate(r) for r in resources]


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
    issued = _instant(issued)
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
            _concept(codes.CATEGORY_CARDIAC_ULTRASOUND),
            _concept(codes.CATEGORY_CARDIOLOGY),
        ],
        "code": _concept(codes.REPORT_US_HEART, text="Echocardiogram"),
        "subject": _subject(source, patient_identifier_system),
        "issued": issued,
        "imagingStudy": [_imaging_study(source)],
        "result": [{"reference": url} for url in observation_urls],
        "conclusion": conclusion,
        "text": _narrative([REPORT_TITLE, *conclusion.split("\n\n")]),
    }
    effective = _effective(source)
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
    issued_at = _instant(issued)
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
    return json.loads(bundle_json(bundle))


# --- pieces -----------------------------------------------------------------------------------


def _checked_system(node_system: str) -> str:
    if not node_system.startswith(("urn:", "http://", "https://")) or " " in node_system:
        raise ValueError(
            f"the node's identifier system must be an absolute URI (urn:..., https://...), "
            f"got {node_system!r}"
        )
    return node_system


def _instant(when: dt.datetime | None) -> str:
    """A FHIR instant: seconds precision, with the zone (naive means the node's local zone)."""
    when = when or dt.datetime.now().astimezone()
    if when.tzinfo is None:
        when = when.astimezone()
    return when.replace(microsecond=0).isoformat()


def _effective(source: SourceLoop) -> str | None:
    """The study's date-time; DICOM gives local time without a zone, read in the node's."""
    study = source.study_datetime
    return None if study is None else study.astimezone().isoformat()


def _concept(code: ClinicalCode, text: str | None = None) -> dict:
    concept: dict = {"coding": [code.fhir_coding()]}
    if text:
        concept["text"] = text
    return concept


def _subject(source: SourceLoop, patient_identifier_system: str | None) -> dict | None:
    """The patient by identifier (the EHR resolves it to its Patient; we hold no Patient id).

    Patient ID and Name are Type 2 in DICOM: real loops come without them. Nothing is
    invented then: without an ID the reference carries the name as display text only (the
    EHR cannot resolve it and files the report for manual matching), without either there is
    no subject at all (it is optional, 0..1, on both DiagnosticReport and Observation)."""
    subject: dict = {"type": "Patient"}
    if source.patient_id:
        identifier: dict = {
            "type": _concept(codes.IDENTIFIER_TYPE_MRN),
            "value": source.patient_id,
        }
        if patient_identifier_system:
            identifier["system"] = patient_identifier_system
        subject["identifier"] = identifier
    name = person_display_name(source.patient_name)
    if name:
        subject["display"] = name
    return subject if len(subject) > 1 else None


def _imaging_study(source: SourceLoop) -> dict:
    return {
        "type": "ImagingStudy",
        "identifier": {
            "system": DICOM_UID_SYSTEM,
            "value": f"urn:oid:{source.study_instance_uid}",
        },
        "display": f"Study {source.study_instance_uid}",
    }


def _quantity(value: float, unit: ClinicalCode) -> dict:
    return {"value": value, "unit": unit.value, "system": unit.fhir_system, "code": unit.value}


def _observation_common(
    source: SourceLoop,
    value: ReportedValue | WithheldValue,
    report: DraftReport,
    node_system: str,
    patient_identifier_system: str | None,
    issued: str,
    result: dict,
    narrative: list[str],
) -> dict:
    """What every Observation of a loop carries, measured or withheld; ``result`` is its
    ``valueQuantity`` or its ``dataAbsentReason``."""
    resource: dict = {
        "resourceType": "Observation",
        "identifier": [observation_identifier(node_system, source, value.key)],
        "status": report.status,
        "category": [_concept(codes.OBSERVATION_CATEGORY_IMAGING)],
        "code": _concept(value.concept, text=value.label),
        "subject": _subject(source, patient_identifier_system),
        "issued": issued,
        **result,
        "derivedFrom": [_imaging_study(source)],
        "text": _narrative(narrative),
    }
    effective = _effective(source)
    if effective:
        resource["effectiveDateTime"] = effective
    return resource


def _observation(
    source: SourceLoop,
    value: ReportedValue,
    report: DraftReport,
    demo: bool,
    node_system: str,
    patient_identifier_system: str | None,
    issued: str,
) -> dict:
    resource = _observation_common(
        source,
        value,
        report,
        node_system,
        patient_identifier_system,
        issued,
        {"valueQuantity": _quantity(value.value, value.unit)},
        [f"{value.label}: {value.text}", value.method_text],
    )
    method = {"text": value.method_text}
    if value.method is not None:
        method["coding"] = [value.method.fhir_coding()]
    resource["method"] = method
    if value.left_ventricle:
        resource["bodySite"] = _concept(codes.LEFT_VENTRICLE)
    if value.algorithm is not None:
        resource["device"] = {
            "display": f"{value.algorithm.display_name} v{value.algorithm.version}"
        }
    interpretation = interpret(value, source.patient_sex)
    if interpretation is not None:
        if interpretation.flag is not None:
            resource["interpretation"] = [_concept(interpretation.flag, text=interpretation.grade)]
        resource["referenceRange"] = [
            {
                "low": _quantity(r.low, value.unit),
                "high": _quantity(r.high, value.unit),
                "text": r.text,
            }
            for r in interpretation.ranges
        ]
    if demo:
        resource["note"] = [{"text": DEMO_LABEL}]
    return resource


def _withheld_observation(
    source: SourceLoop,
    value: WithheldValue,
    report: DraftReport,
    demo: bool,
    node_system: str,
    patient_identifier_system: str | None,
    issued: str,
) -> dict:
    """The Observation of a value the node does not stand behind: no ``value[x]``, a
    ``dataAbsentReason`` (``error``) whose text is the reason and "manual measurement
    required", no interpretation and no reference range (nothing to judge)."""
    resource = _observation_common(
        source,
        value,
        report,
        node_system,
        patient_identifier_system,
        issued,
        {"dataAbsentReason": _concept(codes.DATA_ABSENT_ERROR, text=value.detail)},
        [value.statement],
    )
    if value.method is not None:
        resource["method"] = {"coding": [value.method.fhir_coding()]}
    if value.left_ventricle:
        resource["bodySite"] = _concept(codes.LEFT_VENTRICLE)
    if demo:
        resource["note"] = [{"text": DEMO_LABEL}]
    return resource


def _quality_component(quality: LoopQuality) -> dict:
    """The loop's quality score beside the EF: an Observation component (code
    ``reporting.codes.LOOP_QUALITY_SCORE``, unit UCUM "1")."""
    return {
        "code": _concept(codes.LOOP_QUALITY_SCORE, text=quality.statement),
        "valueQuantity": _quantity(round(quality.score, 3), codes.UNIT_NONE),
    }


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
        return _concept(systolic.code, text=systolic.code.meaning)
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


def _narrative(paragraphs: list[str]) -> dict:
    body = "".join(f"<p>{escape(p)}</p>" for p in paragraphs if p)
    return {"status": "generated", "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{body}</div>'}


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
