"""The pieces every FHIR resource of a loop is built from: stable identifiers and the
``urn:uuid:`` and conditional URLs derived from them, instants, codings, the patient and imaging
study references, quantities and the XHTML narrative.

Why a module of its own: the Observations (``reporting.fhir_observations``) and the
DiagnosticReport (``reporting.fhir``) must build these identically, or a resend would create a
second resource instead of updating the first.
"""

from __future__ import annotations

import datetime as dt
import uuid
from html import escape
from urllib.parse import quote

from reporting import codes
from reporting.codes import DICOM_UID_SYSTEM, ClinicalCode
from reporting.types import SourceLoop, person_display_name


def report_identifier(node_system: str, source: SourceLoop) -> dict[str, str]:
    """The DiagnosticReport's stable business identifier (one report per analysed loop)."""
    return {"system": checked_system(node_system), "value": f"DR-{source.sop_instance_uid}"}


def observation_identifier(node_system: str, source: SourceLoop, key: str) -> dict[str, str]:
    """An Observation's stable business identifier (one per loop and reported value)."""
    return {
        "system": checked_system(node_system),
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


def checked_system(node_system: str) -> str:
    """``node_system``, refused unless it is an absolute URI (an identifier system must be)."""
    if not node_system.startswith(("urn:", "http://", "https://")) or " " in node_system:
        raise ValueError(
            f"the node's identifier system must be an absolute URI (urn:..., https://...), "
            f"got {node_system!r}"
        )
    return node_system


def fhir_instant(when: dt.datetime | None) -> str:
    """A FHIR instant: seconds precision, with the zone (naive means the node's local zone)."""
    when = when or dt.datetime.now().astimezone()
    if when.tzinfo is None:
        when = when.astimezone()
    return when.replace(microsecond=0).isoformat()


def effective_datetime(source: SourceLoop) -> str | None:
    """The study's date-time; DICOM gives local time without a zone, read in the node's."""
    study = source.study_datetime
    return None if study is None else study.astimezone().isoformat()


def concept(code: ClinicalCode, text: str | None = None) -> dict:
    """A CodeableConcept of one coding, with ``text`` when given."""
    concept: dict = {"coding": [code.fhir_coding()]}
    if text:
        concept["text"] = text
    return concept


def subject_reference(source: SourceLoop, patient_identifier_system: str | None) -> dict | None:
    """The patient by identifier (the EHR resolves it to its Patient; we hold no Patient id).

    Patient ID and Name are Type 2 in DICOM: real loops come without them. Nothing is
    invented then: without an ID the reference carries the name as display text only (the
    EHR cannot resolve it and files the report for manual matching), without either there is
    no subject at all (it is optional, 0..1, on both DiagnosticReport and Observation)."""
    subject: dict = {"type": "Patient"}
    if source.patient_id:
        identifier: dict = {
            "type": concept(codes.IDENTIFIER_TYPE_MRN),
            "value": source.patient_id,
        }
        if patient_identifier_system:
            identifier["system"] = patient_identifier_system
        subject["identifier"] = identifier
    name = person_display_name(source.patient_name)
    if name:
        subject["display"] = name
    return subject if len(subject) > 1 else None


def imaging_study(source: SourceLoop) -> dict:
    """The reference to the loop's study by its Study Instance UID."""
    return {
        "type": "ImagingStudy",
        "identifier": {
            "system": DICOM_UID_SYSTEM,
            "value": f"urn:oid:{source.study_instance_uid}",
        },
        "display": f"Study {source.study_instance_uid}",
    }


def quantity(value: float, unit: ClinicalCode) -> dict:
    """A UCUM-coded Quantity."""
    return {"value": value, "unit": unit.value, "system": unit.fhir_system, "code": unit.value}


def xhtml_narrative(paragraphs: list[str]) -> dict:
    """The generated XHTML ``text`` of a resource: one escaped paragraph per non-empty string."""
    body = "".join(f"<p>{escape(p)}</p>" for p in paragraphs if p)
    return {"status": "generated", "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{body}</div>'}
