"""Review hardening (issue #15): text a person types is never shown as the language model's
grounding check, and the export status answers in the moment after a sign-off.

The review app runs on a real database with a study the pipeline analysed (truth oracle, no
language model), through the Flask test client."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
from sqlalchemy import event, select
from sqlalchemy.orm import ORMExecuteState, Session
from web_helpers import Node, a4c_loops, login, make_node, oracle_models, seed_study

from pacs_agent.config import EhrConfig
from pacs_agent.db.models import Analysis, ExportAttempt, ReportVersion
from pacs_agent.fhir_delivery import current_bundle, destination_name
from web.app import create_app


@pytest.fixture(scope="module")
def drafted(tmp_path_factory, phantom_studies) -> Iterator[tuple[Node, int]]:
    tmp = tmp_path_factory.mktemp("review_hardening")
    node = make_node(tmp / "home", f"sqlite:///{tmp / 'echo-agent.db'}")
    loop = a4c_loops(phantom_studies)[0]
    study_id = seed_study(node, loop, models=oracle_models(loop), accession="ACC-HARDEN")
    with node.session_factory.begin() as session:
        # as if the language model's narrative had passed its grounding check
        query = select(ReportVersion).where(ReportVersion.study_fk == study_id)
        first = session.scalars(query).one()
        first.narrative_text = "LV systolic function as measured."
        first.grounding_verdict = "pass"
    yield node, study_id
    node.engine.dispose()


def test_text_a_person_types_is_advised_on_never_shown_as_the_models_pass(drafted) -> None:
    node, study_id = drafted
    client = create_app(node.engine, node.config).test_client()
    headers = {"X-CSRF-Token": login(client, "cardio")}
    report = client.get(f"/api/studies/{study_id}").get_json()["report"]
    assert report["grounding_verdict"] == "pass" and report["typed_by_person"] is False
    with node.session_factory() as session:
        ef = session.scalars(select(Analysis)).one().ef_percent
    assert abs(ef - 80.0) > 5

    # the model's text saved unchanged is still the model's checked text
    same = {"base_version": report["version"], "structured_text": report["structured_text"],
            "narrative_text": report["narrative_text"]}
    kept = client.post(f"/api/studies/{study_id}/report", json=same, headers=headers)
    assert kept.status_code == 201, kept.get_json()
    assert kept.get_json()["grounding_verdict"] == "pass"

    typed = {**same, "base_version": kept.get_json()["version"],
             "narrative_text": "EF 80% normal."}
    saved = client.post(f"/api/studies/{study_id}/report", json=typed, headers=headers)
    assert saved.status_code == 201, saved.get_json()
    draft = saved.get_json()
    assert draft["grounding_verdict"] == "not_checked"
    assert draft["typed_by_person"] is True
    assert draft["grounding_label"].startswith("Typed by a person")
    assert "advisory: numbers differ from the measurements" in draft["grounding_label"]
    assert "pass" not in draft["grounding_label"]
    assert any("80%" in reason for reason in draft["grounding_reasons"])

    # advice never blocks a signature, and the signed version keeps the advice
    signed = client.post(f"/api/studies/{study_id}/report/sign",
                         json={**typed, "base_version": draft["version"]}, headers=headers)
    assert signed.status_code == 201, signed.get_json()
    final = signed.get_json()["report"]
    assert final["status"] == "signed" and final["grounding_verdict"] == "not_checked"
    assert final["typed_by_person"] is True and "advisory" in final["grounding_label"]

    # an amendment whose words agree with the measurements: still a person's, not a "pass"
    amended = client.post(
        f"/api/studies/{study_id}/report", headers=headers,
        json={**typed, "base_version": final["version"], "amendment_reason": "typo",
              "narrative_text": f"LVEF {ef:.1f} %."},
    )
    assert amended.status_code == 201, amended.get_json()
    version = amended.get_json()["report"]
    assert version["grounding_verdict"] == "not_checked" and version["typed_by_person"] is True
    assert "no difference from the measurements found" in version["grounding_label"]
    page_script = client.get("/static/study.js").get_data(as_text=True)
    assert "grounding_label" in page_script


def test_the_export_status_answers_while_the_first_ehr_try_is_being_recorded(drafted) -> None:
    """The sign-off's send writes its first attempt row while the page asks for the status:
    the answer is the pending state, never a 500."""
    node, study_id = drafted
    config = dataclasses.replace(
        node.config, ehr=EhrConfig(fhir_base_url="http://127.0.0.1:9/fhir", timeout_s=1.0)
    )
    with node.session_factory() as session:
        artifact_id = current_bundle(session, study_id).id
    destination = destination_name(config.ehr)
    seen: list[str] = []

    def a_send_starts_meanwhile(state: ORMExecuteState) -> object:
        """Right after the first read of the bundle's attempts, the send records its try."""
        is_attempts = state.is_select and "export_attempts" in str(state.statement)
        if not is_attempts or seen or state.session.info.get("sender"):
            return None
        seen.append("read")
        frozen = state.invoke_statement().freeze()
        with node.session_factory.begin() as sender:
            sender.info["sender"] = True
            sender.add(ExportAttempt(artifact_fk=artifact_id, destination=destination,
                                     state="pending", attempt=1))
        return frozen()

    client = create_app(node.engine, config).test_client()
    login(client, "cardio")
    event.listen(Session, "do_orm_execute", a_send_starts_meanwhile, retval=True)
    try:
        answer = client.get(f"/api/studies/{study_id}/export")
    finally:
        event.remove(Session, "do_orm_execute", a_send_starts_meanwhile)
    assert seen == ["read"]
    assert answer.status_code == 200, answer.get_data(as_text=True)[:300]
    delivery = answer.get_json()["fhir_delivery"]
    assert delivery["state"] in ("not_sent", "sending"), delivery
    settled = client.get(f"/api/studies/{study_id}/export").get_json()["fhir_delivery"]
    assert settled["state"] == "sending" and settled["attempts"] == 1
