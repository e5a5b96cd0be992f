"""Review, sign-off and chat on a study analysed by the real pipeline (a truth oracle plays the
networks), with Flask's test client: the page shows the stored numbers, the player's frames
and outlines come from the loop and its SEG, signing writes a signed SR and a final FHIR
bundle and exports the SR to a real peer (dcmtk storescp), and an amendment keeps every
version."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from dicom_helpers import PEER_AET, free_tcp_port, storescp
from sqlalchemy import select
from web_helpers import (
    Node,
    a4c_loops,
    login,
    make_node,
    oracle_models,
    seed_study,
)

from pacs_agent.config import DestinationConfig, DicomConfig, ExportConfig
from pacs_agent.db.models import Analysis, AuditEvent, ChatMessage, ReportVersion, Study
from web.app import create_app

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reviewed(tmp_path_factory, phantom_studies) -> Iterator[tuple[Node, object, int, Path]]:
    tmp = tmp_path_factory.mktemp("web_review")
    node = make_node(tmp / "home", f"sqlite:///{tmp / 'echo-agent.db'}")
    port = free_tcp_port()
    node.config = node.config.__class__(
        home=node.config.home,
        database=node.config.database,
        llm=node.config.llm,
        dicom=DicomConfig(ae_title="ECHOAGENT"),
        export=ExportConfig(max_attempts=2, backoff_initial_s=0.05, backoff_max_s=0.5),
        destinations=[DestinationConfig(name="pacs", ae_title=PEER_AET, host="127.0.0.1",
                                        port=port)],
    )
    loop = a4c_loops(phantom_studies)[0]
    with storescp(port, tmp / "peer") as received:
        study_id = seed_study(node, loop, models=oracle_models(loop), accession="ACC-REVIEW")
        yield node, create_app(node.engine, node.config), study_id, received
    node.engine.dispose()


def test_the_study_shows_the_stored_measurements_frames_and_outlines(reviewed) -> None:
    node, app, study_id, _ = reviewed
    client = app.test_client()
    login(client, "sono")
    with node.session_factory() as session:
        stored = session.scalars(select(Analysis)).one()
        stored_ef, n_frames = stored.ef_percent, stored.measurements["n_frames"]
    detail = client.get(f"/api/studies/{study_id}").get_json()
    assert detail["status"] == "drafted" and detail["demo_models"] is True
    loop = detail["loop"]
    table = {row["key"]: row for row in loop["table"]}
    assert table["lvef_regression"]["value"] == round(stored_ef, 1)
    assert table["lvef_disks"]["method"].startswith("method of disks")
    assert loop["comparison"]["difference_points"] == pytest.approx(
        stored_ef - loop["measurements"]["ef_disks_percent"])
    assert detail["report"]["status"] == "preliminary"
    assert detail["export"]["fhir_status"] == "preliminary"
    page = client.get(f"/studies/{study_id}").get_data(as_text=True)
    assert 'id="demo-banner"' in page and "DEMO MODELS" in page
    frame = client.get(f"{loop['frames_url']}0.jpg")
    assert frame.mimetype == "image/jpeg" and frame.data[:2] == b"\xff\xd8"
    assert client.get(f"{loop['frames_url']}{n_frames}.jpg").status_code == 404
    contours = client.get(loop["contours_url"]).get_json()
    assert contours["source"] == "seg" and len(contours["frames"]) == n_frames
    assert sum(1 for f in contours["frames"] if len(f) >= 6) >= n_frames - 2
    listing = client.get("/api/studies?q=acc-review").get_json()["studies"]
    assert [s["id"] for s in listing] == [study_id]
    assert listing[0]["ef_percent"] == stored_ef


def _wait_export(client, study_id: int) -> dict:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = client.get(f"/api/studies/{study_id}/export").get_json()
        if not status["running"]:
            return status
        time.sleep(0.3)
    raise AssertionError("export still running after 60 s")


def test_sign_then_amend_keeps_every_version_and_exports(reviewed) -> None:
    node, app, study_id, received = reviewed
    sono = app.test_client()
    sono_token = login(sono, "sono")
    version = sono.get(f"/api/studies/{study_id}").get_json()["report"]
    edit = {"base_version": version["version"], "structured_text": version["structured_text"],
            "narrative_text": "Normal LV size and systolic function."}
    refused = sono.post(f"/api/studies/{study_id}/report/sign", json=edit,
                        headers={"X-CSRF-Token": sono_token})
    assert refused.status_code == 403

    cardio = app.test_client()
    token = login(cardio, "cardio")
    headers = {"X-CSRF-Token": token}
    signed = cardio.post(f"/api/studies/{study_id}/report/sign", json=edit, headers=headers)
    assert signed.status_code == 201, signed.get_json()
    assert signed.get_json()["report"]["status"] == "signed"
    assert signed.get_json()["export_started"] is True
    export = _wait_export(cardio, study_id)
    assert export["fhir_status"] == "final"
    signed_sr = [a for a in export["artifacts"] if a["kind"] == "sr" and a["report_version"] == 2]
    assert signed_sr[0]["destinations"][0]["state"] == "sent"
    copies = [pydicom.dcmread(p) for p in received.rglob("*") if p.is_file()]
    assert any(ds.get("VerificationFlag") == "VERIFIED" for ds in copies)

    again = cardio.post(f"/api/studies/{study_id}/report/sign",
                        json={**edit, "base_version": 2}, headers=headers)
    assert again.status_code == 409
    stale = cardio.post(f"/api/studies/{study_id}/report",
                        json={**edit, "base_version": 1, "amendment_reason": "typo"},
                        headers=headers)
    assert stale.status_code == 409
    no_reason = cardio.post(f"/api/studies/{study_id}/report",
                            json={**edit, "base_version": 2}, headers=headers)
    assert no_reason.status_code == 409 and "reason" in no_reason.get_json()["error"]
    amended = cardio.post(
        f"/api/studies/{study_id}/report", headers=headers,
        json={**edit, "base_version": 2, "narrative_text": "Normal LV function. Amended.",
              "amendment_reason": "clarified the narrative"},
    )
    assert amended.status_code == 201, amended.get_json()
    assert _wait_export(cardio, study_id)["fhir_status"] == "amended"
    versions = cardio.get(f"/api/studies/{study_id}/report/versions").get_json()["versions"]
    assert [(v["version"], v["status"]) for v in versions] == [
        (1, "preliminary"), (2, "signed"), (3, "amended")]
    assert versions[1]["signed_by"] == "Ada Okafor"
    assert versions[2]["amendment_reason"] == "clarified the narrative"
    first = cardio.get(f"/api/studies/{study_id}/report/versions/1").get_json()
    assert first["narrative_text"] == ""
    with node.session_factory() as session:
        assert session.get(Study, study_id).status == "signed"
        actions = [e.action for e in session.scalars(select(AuditEvent))]
        rows = session.scalars(select(ReportVersion).order_by(ReportVersion.version)).all()
        assert [r.signed_by_fk is not None for r in rows] == [False, True, True]
    assert {"sign", "amend", "export"} <= set(actions)


def test_chat_streams_an_answer_from_the_measurements_and_keeps_history(reviewed) -> None:
    node, app, study_id, _ = reviewed
    client = app.test_client()
    token = login(client, "sono")
    response = client.post(f"/api/studies/{study_id}/chat", json={"question": "What is the EF?"},
                           headers={"X-CSRF-Token": token})
    events = [block for block in response.get_data(as_text=True).split("\n\n") if block]
    chunks = [json.loads(b.split("data: ", 1)[1])["text"] for b in events
              if b.startswith("event: chunk")]
    assert len(chunks) > 3 and events[-1].startswith("event: done")
    answer = "".join(chunks)
    with node.session_factory() as session:
        ef = session.scalars(select(Analysis)).one().ef_percent
    assert answer.startswith("[Measurements only")
    assert f"{ef:.1f} %" in answer
    history = client.get(f"/api/studies/{study_id}/chat").get_json()["messages"]
    assert [m["role"] for m in history] == ["user", "assistant"]
    assert history[1]["content"] == answer
    other = app.test_client()
    login(other, "cardio")
    assert other.get(f"/api/studies/{study_id}/chat").get_json()["messages"] == []
    with node.session_factory() as session:
        assert session.scalar(select(ChatMessage).where(ChatMessage.role == "assistant"))


class _UngroundedModel:
    """A language model that invents a number: the guard must replace its answer."""

    name = "fake-llm"

    def stream(self, messages, limits=None, on_done=None):
        yield from ("The ejection ", "fraction is 99.9 %. ", "It is fine.")


def test_a_language_model_sentence_that_fails_grounding_is_left_out(reviewed) -> None:
    from llm.chat_service import language_model_backend

    node, _, study_id, _ = reviewed
    app = create_app(node.engine, node.config,
                     chat_backend=language_model_backend(lambda: _UngroundedModel()))  # a loader
    client = app.test_client()
    token = login(client, "cardio")
    body = client.post(f"/api/studies/{study_id}/chat", headers={"X-CSRF-Token": token},
                       json={"question": "What is the EF?"}).get_data(as_text=True)
    shown = [b for b in body.split("\n\n") if b.startswith(("event: chunk", "event: replace"))]
    assert shown and not any("99.9" in b for b in shown)  # the model's sentence never went out
    stored = client.get(f"/api/studies/{study_id}/chat").get_json()["messages"][-1]
    assert "99.9" not in stored["content"] and "LVEF" in stored["content"]
    grounding = stored["grounding"]
    assert grounding["verdict"] == "pass" and grounding["intent"] == "measurement"
    assert grounding["model_verdict"] == "fail" and grounding["model_reasons"]
    assert any(f["key"] == "lv_function" for f in grounding["facts"])
    assert grounding["backend"].startswith("language_model")
