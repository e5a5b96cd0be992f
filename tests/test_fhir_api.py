"""The node's read-only FHIR endpoints on two studies the real pipeline analysed (a truth
oracle plays the networks): read by id, search by patient, study and identifier, answers that
validate against the official FHIR R4 JSON schema, OperationOutcomes for 401/404/400, audited
views, and the final report (same ids) once the study is signed."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pydicom
import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from reporting_helpers import fhir_schema_errors
from sqlalchemy import select
from web_helpers import Node, a4c_loops, login, make_node, oracle_models, seed_study

from pacs_agent.db.models import AuditEvent
from web.app import create_app

FHIR_JSON = "application/fhir+json"


@pytest.fixture(scope="module")
def served(tmp_path_factory, phantom_studies) -> Iterator[tuple[Node, object, list[dict]]]:
    """Two analysed studies of two patients; their (study id, Patient ID, Study UID)."""
    tmp = tmp_path_factory.mktemp("fhir_api")
    node = make_node(tmp / "home", f"sqlite:///{tmp / 'echo-agent.db'}")
    studies, seen = [], set()
    for loop in a4c_loops(phantom_studies):
        ds = pydicom.dcmread(loop, stop_before_pixels=True)
        if str(ds.PatientID) in seen:
            continue
        seen.add(str(ds.PatientID))
        study_id = seed_study(node, loop, models=oracle_models(loop))
        studies.append({"id": study_id, "patient": str(ds.PatientID),
                        "uid": str(ds.StudyInstanceUID)})
        if len(studies) == 2:
            break
    assert len(studies) == 2, "the phantom set has fewer than two patients"
    yield node, create_app(node.engine, node.config), studies
    node.engine.dispose()


def _get(client, url: str, status: int = 200) -> dict:
    response = client.get(url)
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == FHIR_JSON
    return response.get_json()


def _outcome(body: dict) -> str:
    assert body["resourceType"] == "OperationOutcome"
    return body["issue"][0]["diagnostics"]


def test_search_by_patient_and_study_then_read_by_id(served, tmp_path) -> None:
    node, app, studies = served
    client = app.test_client()
    login(client, "sono")
    first, second = studies
    found = _get(client, f"/fhir/DiagnosticReport?patient={first['patient']}")
    assert found["resourceType"] == "Bundle" and found["type"] == "searchset"
    assert found["total"] == 1
    (entry,) = found["entry"]
    report = entry["resource"]
    assert report["subject"]["identifier"]["value"] == first["patient"]
    assert report["imagingStudy"][0]["identifier"]["value"] == f"urn:oid:{first['uid']}"
    assert report["status"] == "preliminary"
    assert entry["fullUrl"].endswith(f"/fhir/DiagnosticReport/{report['id']}")
    DiagnosticReport.model_validate(report)

    by_study = _get(client, f"/fhir/DiagnosticReport?study={second['uid']}")
    assert [e["resource"]["subject"]["identifier"]["value"] for e in by_study["entry"]] == [
        second["patient"]]
    both = _get(client, f"/fhir/DiagnosticReport?patient={first['patient']}&study={second['uid']}")
    assert both["total"] == 0 and both.get("entry", []) == []
    token = _get(client, f"/fhir/DiagnosticReport?subject:identifier={second['patient']}")
    assert token["entry"][0]["resource"]["id"] == by_study["entry"][0]["resource"]["id"]
    identifier = report["identifier"][0]
    by_identifier = _get(client, "/fhir/DiagnosticReport?identifier="
                                 f"{identifier['system']}|{identifier['value']}")
    assert [e["resource"]["id"] for e in by_identifier["entry"]] == [report["id"]]

    read = _get(client, f"/fhir/DiagnosticReport/{report['id']}")
    assert read == report
    observations = _get(client, f"/fhir/Observation?patient={first['patient']}")
    assert observations["total"] == len(report["result"]) >= 4
    ids = {e["resource"]["id"] for e in observations["entry"]}
    assert {r["reference"] for r in report["result"]} == {f"Observation/{i}" for i in ids}
    one = _get(client, "/fhir/" + report["result"][0]["reference"])
    assert one["resourceType"] == "Observation" and one["id"] in ids
    assert one["subject"]["identifier"]["value"] == first["patient"]
    by_study_obs = _get(client, f"/fhir/Observation?study=urn:oid:{first['uid']}")
    assert {e["resource"]["id"] for e in by_study_obs["entry"]} == ids

    paths = []
    for name, body in (("search", found), ("observations", observations), ("read", read)):
        if body["resourceType"] == "Bundle":
            Bundle.model_validate(body)  # fhir.resources reads it back too
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(body))
        paths.append(path)
    assert fhir_schema_errors(*paths) == {str(p): [] for p in paths}

    with node.session_factory() as session:
        views = session.scalars(select(AuditEvent).where(AuditEvent.action == "view")).all()
    assert {(e.study_fk, e.detail.get("via")) for e in views} >= {
        (first["id"], "fhir"), (second["id"], "fhir")}


def test_without_a_session_the_answer_is_401_with_an_outcome(served) -> None:
    _, app, studies = served
    client = app.test_client()
    for url in ("/fhir/DiagnosticReport?patient=" + studies[0]["patient"],
                "/fhir/Observation/abc", "/fhir/Patient/1", "/fhir/metadata"):
        assert "authentication required" in _outcome(_get(client, url, 401))


def test_unknown_ids_types_and_search_parameters(served) -> None:
    _, app, studies = served
    client = app.test_client()
    login(client, "sono")
    assert "is not known" in _outcome(_get(client, "/fhir/DiagnosticReport/no-such-id", 404))
    assert "is not known" in _outcome(
        _get(client, "/fhir/Observation/00000000-0000-5000-8000-000000000000", 404))
    assert "not 'Patient'" in _outcome(_get(client, "/fhir/Patient/1", 404))
    assert "not 'Patient'" in _outcome(_get(client, "/fhir/Patient?identifier=x", 404))
    assert "no FHIR interaction" in _outcome(_get(client, "/fhir/DiagnosticReport/a/b", 404))
    unsupported = _get(client, f"/fhir/DiagnosticReport?patient={studies[0]['patient']}"
                               "&_count=5", 400)
    assert "'_count' is not supported" in _outcome(unsupported)
    assert "at least one of" in _outcome(_get(client, "/fhir/Observation", 400))
    assert "give patient once" in _outcome(_get(client, "/fhir/Observation?patient=a&patient=b",
                                                400))
    nobody = _get(client, "/fhir/Observation?patient=NOT-A-PATIENT")
    assert nobody["total"] == 0


def test_a_signed_study_serves_its_final_report_under_the_same_ids(served) -> None:
    _, app, studies = served
    client = app.test_client()
    token = login(client, "cardio")
    study = studies[0]
    before = _get(client, f"/fhir/DiagnosticReport?patient={study['patient']}")["entry"][0]
    version = client.get(f"/api/studies/{study['id']}").get_json()["report"]
    signed = client.post(
        f"/api/studies/{study['id']}/report/sign", headers={"X-CSRF-Token": token},
        json={"base_version": version["version"], "structured_text": version["structured_text"],
              "narrative_text": "Normal LV size and systolic function."})
    assert signed.status_code == 201, signed.get_json()
    assert signed.get_json()["export_started"] is False  # no PACS, no EHR: nothing to send
    after = _get(client, f"/fhir/DiagnosticReport/{before['resource']['id']}")
    assert after["status"] == "final" and before["resource"]["status"] == "preliminary"
    assert "Normal LV size and systolic function." in after["conclusion"]
    assert after["meta"]["lastUpdated"] >= before["resource"]["meta"]["lastUpdated"]
    observations = _get(client, f"/fhir/Observation?study={study['uid']}")
    assert {e["resource"]["status"] for e in observations["entry"]} == {"final"}
    other = _get(client, f"/fhir/DiagnosticReport?patient={studies[1]['patient']}")
    assert other["entry"][0]["resource"]["status"] == "preliminary"  # untouched
