"""The Observations of one loop: one per reported value (with its method, interpretation and
reference range), one per withheld value (a ``dataAbsentReason`` with the reason), and the
loop's quality score as a component of each LVEF.

Why a module of its own: what one measurement becomes in FHIR is separate from the report that
gathers them (``reporting.fhir``).
"""

from __future__ import annotations

import datetime as dt

from fhir.resources.R4B.observation import Observation

from inference.types import Measurements
from reporting import codes
from reporting.fhir_common import (
    concept,
    effective_datetime,
    fhir_instant,
    imaging_study,
    observation_identifier,
    quantity,
    subject_reference,
    xhtml_narrative,
)
from reporting.interpretation import interpret
from reporting.types import DEMO_LABEL, Algorithms, DraftReport, SourceLoop
from reporting.values import (
    GATED_FIELDS,
    LoopQuality,
    ReportedValue,
    WithheldValue,
    loop_quality,
    reported_values,
    withheld_values,
)


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
    issued = fhir_instant(issued)
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
        "category": [concept(codes.OBSERVATION_CATEGORY_IMAGING)],
        "code": concept(value.concept, text=value.label),
        "subject": subject_reference(source, patient_identifier_system),
        "issued": issued,
        **result,
        "derivedFrom": [imaging_study(source)],
        "text": xhtml_narrative(narrative),
    }
    effective = effective_datetime(source)
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
    """The Observation of a reported value: its quantity, method, site, algorithm, and the
    interpretation and reference ranges of ``reporting.interpretation``."""
    resource = _observation_common(
        source,
        value,
        report,
        node_system,
        patient_identifier_system,
        issued,
        {"valueQuantity": quantity(value.value, value.unit)},
        [f"{value.label}: {value.text}", value.method_text],
    )
    method = {"text": value.method_text}
    if value.method is not None:
        method["coding"] = [value.method.fhir_coding()]
    resource["method"] = method
    if value.left_ventricle:
        resource["bodySite"] = concept(codes.LEFT_VENTRICLE)
    if value.algorithm is not None:
        resource["device"] = {
            "display": f"{value.algorithm.display_name} v{value.algorithm.version}"
        }
    interpretation = interpret(value, source.patient_sex)
    if interpretation is not None:
        if interpretation.flag is not None:
            resource["interpretation"] = [concept(interpretation.flag, text=interpretation.grade)]
        resource["referenceRange"] = [
            {
                "low": quantity(r.low, value.unit),
                "high": quantity(r.high, value.unit),
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
        {"dataAbsentReason": concept(codes.DATA_ABSENT_ERROR, text=value.detail)},
        [value.statement],
    )
    if value.method is not None:
        resource["method"] = {"coding": [value.method.fhir_coding()]}
    if value.left_ventricle:
        resource["bodySite"] = concept(codes.LEFT_VENTRICLE)
    if demo:
        resource["note"] = [{"text": DEMO_LABEL}]
    return resource


def _quality_component(quality: LoopQuality) -> dict:
    """The loop's quality score beside the EF: an Observation component (code
    ``reporting.codes.LOOP_QUALITY_SCORE``, unit UCUM "1")."""
    return {
        "code": concept(codes.LOOP_QUALITY_SCORE, text=quality.statement),
        "valueQuantity": quantity(round(quality.score, 3), codes.UNIT_NONE),
    }
