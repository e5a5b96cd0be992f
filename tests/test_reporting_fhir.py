"""FHIR: the transaction Bundle validates with fhir.resources and against the official FHIR R4
JSON schema (an independent validator, node); codes, units, references, statuses,
interpretations against ASE/EACVI 2015, conclusion codes (never heart failure), idempotent
identifiers, and the demo label."""

from __future__ import annotations

import base64
import dataclasses
import json

import pytest
from fhir.resources.R4B.bundle import Bundle
from orthanc_helpers import phantom_cache
from reporting_helpers import (
    NODE_SYSTEM,
    SEED_ONE_STUDY,
    a4c_paths,
    demo_algorithms,
    draft,
    fhir_schema_errors,
    load_loop,
    signature,
)

from reporting import codes
from reporting.fhir import build_fhir_bundle, bundle_dict, bundle_json, conditional_url
from reporting.interpretation import (
    GRADE_MILD,
    GRADE_MODERATE,
    GRADE_NORMAL,
    GRADE_SEVERE,
    interpret,
    lv_systolic_function,
)
from reporting.types import DEMO_LABEL, person_display_name
from reporting.values import KEY_LV_EDV, KEY_LVEF_DISKS, ReportedValue

PDF = b"%PDF-1.4\n% a stand-in report\n%%EOF\n"
LOINC, UCUM, SCT = "http://loinc.org", "http://unitsofmeasure.org", "http://snomed.info/sct"


@pytest.fixture(scope="module")
def loop(request, tmp_path_factory):
    (path,) = a4c_paths(phantom_cache(request.config, tmp_path_factory), 1, SEED_ONE_STUDY)
    return load_loop(path)


def _bundle(loop, report=None, demo=True, measurements=None, source=None) -> dict:
    bundle = build_fhir_bundle(
        source or loop.source,
        measurements or loop.measurements,
        demo_algorithms(demo),
        report or draft(demo),
        node_system=NODE_SYSTEM,
        pdf_bytes=PDF,
    )
    return bundle_dict(bundle)


def _resources(bundle: dict, kind: str) -> list[dict]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


def _codings(concept: dict) -> set[tuple[str, str]]:
    return {(c["system"], c["code"]) for c in concept.get("coding", [])}


def test_bundle_validates_with_fhir_resources_and_the_r4_json_schema(loop, tmp_path):
    paths = []
    for name, report in [
        ("preliminary", draft()),
        ("final", draft().signed(signature())),
        ("amended", draft().signed(signature()).amended("New text.", signature(), "typo")),
    ]:
        bundle = build_fhir_bundle(
            loop.source,
            loop.measurements,
            demo_algorithms(),
            report,
            node_system=NODE_SYSTEM,
            pdf_bytes=PDF,
        )
        text = bundle_json(bundle)
        Bundle.model_validate_json(text)  # fhir.resources (R4B models) reads it back
        path = tmp_path / f"{name}.json"
        path.write_text(text)
        paths.append(path)
        for entry in json.loads(text)["entry"]:  # each resource on its own too
            resource_path = tmp_path / f"{name}-{len(paths)}-{entry['fullUrl'][9:]}.json"
            resource_path.write_text(json.dumps(entry["resource"]))
            paths.append(resource_path)
    errors = fhir_schema_errors(*paths)
    assert errors == {str(p): [] for p in paths}


def test_observations_codes_units_and_references(loop):
    bundle = _bundle(loop)
    assert bundle["type"] == "transaction"
    observations = _resources(bundle, "Observation")
    (report,) = _resources(bundle, "DiagnosticReport")
    by_code: dict[str, list[dict]] = {}
    for obs in observations:
        (coding,) = obs["code"]["coding"]
        by_code.setdefault(coding["code"], []).append(obs)
        assert coding["system"] in (LOINC, SCT)
        assert obs["status"] == "preliminary"
        quantity = obs["valueQuantity"]
        assert quantity["system"] == UCUM and quantity["code"] == quantity["unit"]
        assert obs["subject"]["identifier"]["value"] == loop.header.PatientID
        (derived,) = obs["derivedFrom"]
        assert derived["identifier"] == {
            "system": "urn:dicom:uid",
            "value": f"urn:oid:{loop.header.StudyInstanceUID}",
        }
        assert obs["identifier"][0]["system"] == NODE_SYSTEM
    assert {c: [o["valueQuantity"]["code"] for o in v] for c, v in by_code.items()} == {
        "18043-0": ["%", "%"],
        "18026-5": ["mL"],
        "18148-7": ["mL"],
        "90096001": ["mL"],
        "8867-4": ["/min"],
    }
    m = loop.measurements
    edv = by_code["18026-5"][0]
    assert edv["valueQuantity"]["value"] == pytest.approx(m.edv_ml, abs=0.05)
    assert _codings(edv["method"]) == {(codes.METHOD_OF_DISKS_SINGLE_PLANE.fhir_system, "125208")}
    assert _codings(edv["bodySite"]) == {(SCT, "87878005")}
    regression = next(o for o in by_code["18043-0"] if "coding" not in o["method"])
    assert regression["valueQuantity"]["value"] == pytest.approx(m.ef_percent, abs=0.05)
    assert regression["device"]["display"].startswith("echo-agent R(2+1)D-18")
    assert by_code["8867-4"][0]["valueQuantity"]["value"] == pytest.approx(
        m.heart_rate_bpm, abs=0.05
    )

    # the report: codes, subject, study, results resolving to the bundle's entries
    assert _codings(report["code"]) == {(LOINC, "42148-7")}
    categories = set().union(*(_codings(c) for c in report["category"]))
    assert categories == {
        ("http://terminology.hl7.org/CodeSystem/v2-0074", "CUS"),
        (LOINC, "LP29708-2"),
    }
    assert report["status"] == "preliminary"
    assert report["subject"]["identifier"]["value"] == loop.header.PatientID
    (study,) = report["imagingStudy"]
    assert study["identifier"]["value"] == f"urn:oid:{loop.header.StudyInstanceUID}"
    urls = {e["fullUrl"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"}
    assert {r["reference"] for r in report["result"]} == urls
    (form,) = report["presentedForm"]
    assert form["contentType"] == "application/pdf"
    assert base64.b64decode(form["data"]) == PDF and form["size"] == len(PDF)
    assert report["conclusion"]
    assert "resultsInterpreter" not in report


def test_status_follows_the_signature(loop):
    signed = draft().signed(signature())
    bundle = _bundle(loop, report=signed)
    (report,) = _resources(bundle, "DiagnosticReport")
    assert report["status"] == "final"
    assert report["resultsInterpreter"] == [{"display": "Dr Ada Okafor"}]
    assert {o["status"] for o in _resources(bundle, "Observation")} == {"final"}
    amended = signed.amended("Revised narrative.", signature(), "added a finding")
    bundle = _bundle(loop, report=amended)
    (report,) = _resources(bundle, "DiagnosticReport")
    assert report["status"] == "amended"
    assert "Revised narrative." in report["conclusion"]
    assert "added a finding" in report["conclusion"]


def test_resend_is_idempotent_conditional_updates(loop):
    first, again = _bundle(loop), _bundle(loop)
    signed = _bundle(loop, report=draft().signed(signature()))

    def keys(bundle: dict) -> list[tuple]:
        return [
            (e["fullUrl"], e["request"]["url"], e["resource"]["identifier"][0]["value"])
            for e in bundle["entry"]
        ]

    assert keys(first) == keys(again) == keys(signed)  # same resources, updated in place
    for entry in first["entry"]:
        kind = entry["resource"]["resourceType"]
        identifier = entry["resource"]["identifier"][0]
        assert entry["request"] == {"method": "PUT", "url": conditional_url(kind, identifier)}
        assert entry["request"]["url"].startswith(f"{kind}?identifier=urn%3Aecho-agent")
        assert entry["fullUrl"].startswith("urn:uuid:")
    (report,) = _resources(first, "DiagnosticReport")
    assert report["identifier"][0]["value"] == f"DR-{loop.header.SOPInstanceUID}"
    values = [e["resource"]["identifier"][0]["value"] for e in first["entry"]]
    assert len(set(values)) == len(values)


def test_no_null_measurement_is_sent_as_a_number(loop):
    # a null is sent as what it is: an Observation without a value, with the reason
    m = dataclasses.replace(loop.measurements, edv_ml=None, esv_ml=None, heart_rate_bpm=None)
    bundle = _bundle(loop, measurements=m)
    observations = _resources(bundle, "Observation")
    valued = {o["code"]["coding"][0]["code"] for o in observations if "valueQuantity" in o}
    assert valued == {"18043-0"}
    absent = {o["code"]["coding"][0]["code"]: o["dataAbsentReason"]["text"]
              for o in observations if "valueQuantity" not in o}  # fmt: skip
    assert set(absent) == {"18026-5", "18148-7", "90096001", "8867-4"}
    assert all(text.endswith("manual measurement required") for text in absent.values())


def _value(key: str, concept, value: float, unit=codes.UNIT_PERCENT) -> ReportedValue:
    return ReportedValue(key, key, concept, unit, value, None, "", None, (), True, 1)


@pytest.mark.parametrize(
    ("ef", "sex", "grade", "flag"),
    [
        (60.0, "M", GRADE_NORMAL, "N"),
        (53.0, "M", GRADE_NORMAL, "N"),  # men: normal from 52 %
        (53.0, "F", GRADE_MILD, "L"),  # women: normal from 54 %
        (53.0, "", None, None),  # sex unknown and the sexes disagree: not graded
        (45.0, "", GRADE_MILD, "L"),  # both sexes agree
        (35.0, "F", GRADE_MODERATE, "L"),
        (25.0, "M", GRADE_SEVERE, "L"),
        (73.0, "M", "above normal range", "H"),
        (73.0, "F", GRADE_NORMAL, "N"),  # women: up to 74 %
    ],
)
def test_lvef_interpretation_is_sex_specific(ef, sex, grade, flag):
    result = interpret(_value(KEY_LVEF_DISKS, codes.LVEF, ef), sex)
    assert result.grade == grade
    assert (result.flag.value if result.flag else None) == flag
    assert all("ASE/EACVI 2015" in r.source for r in result.ranges)


def test_volume_ranges_are_absolute_ase_2015_by_sex():
    edv = _value(KEY_LV_EDV, codes.LV_EDV, 120.0, codes.UNIT_ML)
    assert interpret(edv, "M").grade == GRADE_NORMAL  # men 62-150 mL
    assert interpret(edv, "F").grade == "above normal range"  # women 46-106 mL
    assert [(r.low, r.high) for r in interpret(edv, "F").ranges] == [(46.0, 106.0)]


def test_conclusion_codes_describe_systolic_function_never_heart_failure(loop):
    def report_for(ef: float, sex: str) -> dict:
        m = dataclasses.replace(loop.measurements, ef_percent=ef)
        source = dataclasses.replace(loop.source, patient_sex=sex)
        (report,) = _resources(_bundle(loop, measurements=m, source=source), "DiagnosticReport")
        return report

    normal = report_for(60.0, "F")
    assert _codings(normal["conclusionCode"][0]) == {(SCT, "371857005")}
    moderate = report_for(35.0, "M")
    (coding,) = moderate["conclusionCode"][0]["coding"]
    assert coding["code"] == "134401001:246112005=6736007"  # LV systolic dysfunction, moderate
    assert coding["display"] == "Left ventricular systolic dysfunction, moderate"
    severe = report_for(20.0, "M")
    assert severe["conclusionCode"][0]["coding"][0]["code"].endswith("=24484000")
    unknown = report_for(53.0, "")
    assert "conclusionCode" not in unknown
    assert lv_systolic_function(None, "M").code is None
    for report in (normal, moderate, severe, unknown):
        text = json.dumps(report).lower()
        assert "heart failure" not in text and "84114007" not in text  # SCT heart failure


def test_demo_label_in_conclusion_and_notes_only_for_demo(loop):
    demo = _bundle(loop, demo=True)
    (report,) = _resources(demo, "DiagnosticReport")
    assert report["conclusion"].startswith(DEMO_LABEL)
    for obs in _resources(demo, "Observation"):
        assert obs["note"] == [{"text": DEMO_LABEL}]
    real = _bundle(loop, demo=False)
    assert "DEMO MODELS" not in json.dumps(real)


def test_a_loop_without_patient_id_names_no_identifier_and_a_bad_system_is_refused(loop):
    # Patient ID and Name are Type 2: absent in real files; nothing is invented for them
    source = dataclasses.replace(loop.source, patient_id="")
    name = person_display_name(loop.source.patient_name)
    assert name
    for entry in _bundle(loop, source=source)["entry"]:
        assert entry["resource"]["subject"] == {"type": "Patient", "display": name}
    anonymous = dataclasses.replace(source, patient_name="")
    assert all("subject" not in e["resource"] for e in _bundle(loop, source=anonymous)["entry"])
    with pytest.raises(ValueError, match="absolute URI"):
        build_fhir_bundle(
            loop.source, loop.measurements, demo_algorithms(), draft(), node_system="node 1"
        )
