"""HL7 v2 ORU^R01 and TID 5200 deliveries of the node, end to end.

A study is analysed by the real pipeline (a truth oracle plays the networks) with a PACS
(dcmtk's storescp) and an HL7 results peer (``hl7_peer.MllpPeer``, which parses every message
with hl7apy at its strict level) configured; its delivery jobs run as a node's delivery worker
runs them. The peer gets result status P after the analysis, F after sign-off and C after an
amendment, all for one filler order number; PACS gets the TID 5200 echo SR beside the TID 1500
SR, preliminary then final. The stored message is what goes on the wire, every try: an AE is
retried (same control id) until AA, an AR fails the job at once, and a preliminary message
whose report was signed meanwhile is never sent.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from dicom_helpers import PEER_AET, storescp
from flask.testing import FlaskClient
from hl7_peer import MllpPeer
from sqlalchemy import select
from support import find_free_port
from web_helpers import Node, a4c_loops, login, make_node, oracle_models, seed_study

from pacs_agent import jobs
from pacs_agent.config import DestinationConfig, ExportConfig, Hl7DestinationConfig
from pacs_agent.db.models import Artifact, AuditEvent, ExportAttempt, Job, ReportVersion, utcnow
from pacs_agent.deliveries import queue_deliveries, queue_outputs, see_through
from pacs_agent.export import artifact_path
from pacs_agent.hl7_delivery import HL7_MEDIA_TYPE
from web.app import create_app

HL7_NAME = "ris"
HL7_DESTINATION = f"hl7:{HL7_NAME}"
FAST_EXPORT = ExportConfig(max_attempts=3, backoff_initial_s=0.05, backoff_max_s=0.2)


def _hl7(peer: MllpPeer, timeout_s: float = 5.0) -> Hl7DestinationConfig:
    return Hl7DestinationConfig(
        name=HL7_NAME,
        host=peer.host,
        port=peer.port,
        timeout_s=timeout_s,
        receiving_application="RIS",
        receiving_facility="HOSPITAL",
    )


def _segments(text: str, name: str) -> list[list[str]]:
    """The fields of every ``name`` segment; index n is field n (MSH: n is MSH-(n+1))."""
    return [s.split("|") for s in text.split("\r") if s.startswith(name + "|")]


def _obr(text: str) -> list[str]:
    (obr,) = _segments(text, "OBR")
    return obr


def _observation_statuses(text: str) -> set[str]:
    return {obx[11] for obx in _segments(text, "OBX")}


def _artifacts(node: Node, study_id: int, kind: str) -> list[Artifact]:
    with node.session_factory() as session:
        return list(
            session.scalars(
                select(Artifact)
                .where(Artifact.study_fk == study_id, Artifact.kind == kind)
                .order_by(Artifact.id)
            )
        )


def _tries(node: Node, artifact_id: int) -> list[tuple[int, str, str]]:
    with node.session_factory() as session:
        rows = session.scalars(
            select(ExportAttempt)
            .where(ExportAttempt.artifact_fk == artifact_id)
            .order_by(ExportAttempt.attempt)
        )
        return [(r.attempt, r.state, r.status_code) for r in rows]


def _received_srs(folder: Path) -> dict[str, pydicom.Dataset]:
    """SOP Instance UID -> dataset of every SR the PACS holds."""
    found = {}
    for path in folder.rglob("*"):
        if path.is_file():
            ds = pydicom.dcmread(path)
            if ds.Modality == "SR":
                found[str(ds.SOPInstanceUID)] = ds
    return found


def _template(ds: pydicom.Dataset) -> str:
    return str(ds.ContentTemplateSequence[0].TemplateIdentifier)


def _predecessor(ds: pydicom.Dataset) -> str:
    (study,) = ds.PredecessorDocumentsSequence
    (series,) = study.ReferencedSeriesSequence
    (sop,) = series.ReferencedSOPSequence
    return str(sop.ReferencedSOPInstanceUID)


@dataclasses.dataclass(frozen=True)
class Analysed:
    node: Node
    study_id: int
    peer: MllpPeer
    pacs: Path


@pytest.fixture(scope="module")
def analysed(tmp_path_factory, phantom_studies) -> Iterator[Analysed]:
    tmp = tmp_path_factory.mktemp("hl7_delivery")
    pacs_port = find_free_port()
    with MllpPeer() as peer, storescp(pacs_port, tmp / "pacs") as pacs:
        node = make_node(tmp / "home", f"sqlite:///{tmp / 'echo-agent.db'}")
        config = dataclasses.replace(
            node.config,
            destinations=[
                DestinationConfig(name="pacs", ae_title=PEER_AET, host="127.0.0.1", port=pacs_port)
            ],
            hl7_destinations=[_hl7(peer)],
            export=FAST_EXPORT,
        )
        node = Node(config, node.engine, node.session_factory)
        loop = a4c_loops(phantom_studies)[0]
        study_id = seed_study(node, loop, models=oracle_models(loop))
        yield Analysed(node, study_id, peer, pacs)
        node.engine.dispose()


def _wait_sent(client: FlaskClient, study_id: int, timeout_s: float = 60.0) -> dict:
    """The export summary once the sign-off's sends have ended."""
    deadline = time.monotonic() + timeout_s
    while True:
        export = client.get(f"/api/studies/{study_id}/export").get_json()
        if not export["running"]:
            return export
        assert time.monotonic() < deadline, "the sign-off's sends did not end"
        time.sleep(0.1)


def _report(client: FlaskClient, study_id: int, token: str, amendment_reason: str = "") -> None:
    version = client.get(f"/api/studies/{study_id}").get_json()["report"]
    body = {
        "base_version": version["version"],
        "structured_text": version["structured_text"],
        "narrative_text": "Normal LV size and systolic function.",
    }
    url = f"/api/studies/{study_id}/report/sign"
    if amendment_reason:
        url, body["amendment_reason"] = f"/api/studies/{study_id}/report", amendment_reason
    answer = client.post(url, headers={"X-CSRF-Token": token}, json=body)
    assert answer.status_code == 201, answer.get_json()
    assert answer.get_json()["export_started"] is True


def test_results_reach_the_mllp_peer_and_pacs_preliminary_then_final_then_amended(
    analysed: Analysed,
) -> None:
    node, study_id, peer = analysed.node, analysed.study_id, analysed.peer

    # after the analysis: one ORU^R01, result status P, the stored text byte for byte
    (preliminary,) = peer.received
    assert (preliminary.problem, preliminary.answer) == ("", "AA")
    (stored,) = _artifacts(node, study_id, "hl7_oru")
    assert stored.job_fk is not None and stored.media_type == HL7_MEDIA_TYPE
    assert artifact_path(node.config, stored).read_bytes() == preliminary.text.encode("utf-8")
    (msh,) = _segments(preliminary.text, "MSH")
    assert (msh[2], msh[3], msh[4], msh[5]) == ("ECHO-AGENT", "ECHOAGENT", "RIS", "HOSPITAL")
    obr = _obr(preliminary.text)
    assert obr[25] == "P" and _observation_statuses(preliminary.text) <= {"P", "X"}
    assert _tries(node, stored.id) == [(1, "sent", "AA")]

    # ... and PACS holds the TID 5200 SR beside the TID 1500 SR, both preliminary
    (sr,) = _artifacts(node, study_id, "sr")
    (echo_sr,) = _artifacts(node, study_id, "echo_sr")
    held = _received_srs(analysed.pacs)
    assert set(held) == {sr.sop_instance_uid, echo_sr.sop_instance_uid}
    first_echo = held[str(echo_sr.sop_instance_uid)]
    assert _template(first_echo) == "5200" and _template(held[str(sr.sop_instance_uid)]) == "1500"
    assert (first_echo.CompletionFlag, first_echo.VerificationFlag) == ("PARTIAL", "UNVERIFIED")
    assert first_echo.PreliminaryFlag == "PRELIMINARY"

    client = create_app(node.engine, node.config).test_client()
    token = login(client, "cardio")
    export = client.get(f"/api/studies/{study_id}/export").get_json()
    assert export["hl7_destinations_configured"] == [HL7_NAME]
    rows = {row["kind"]: row for row in export["artifacts"]}
    assert rows["hl7_oru"]["destinations"] == [
        {"destination": HL7_DESTINATION, "state": "sent", "attempts": 1, "last_error": ""}
    ]
    assert [d["state"] for d in rows["echo_sr"]["destinations"]] == ["sent"]

    # sign-off: F for the same order, at the signature's time, naming who signed
    _report(client, study_id, token)
    export = _wait_sent(client, study_id)
    assert len(peer.received) == 2
    final = peer.received[1]
    assert (final.problem, final.answer) == ("", "AA")
    final_obr = _obr(final.text)
    assert final_obr[25] == "F" and _observation_statuses(final.text) <= {"F", "X"}
    assert final_obr[3] == obr[3]  # filler order number: the study, one result at the receiver
    assert _segments(final.text, "MSH")[0][9] != msh[9]  # a message of its own
    assert "Okafor" in final_obr[32]
    with node.session_factory() as session:
        signed_at = session.scalars(
            select(ReportVersion.signed_at).where(ReportVersion.status == "signed")
        ).one()
    expected_time = jobs.utc(signed_at).strftime("%Y%m%d%H%M%S%z")
    assert _segments(final.text, "MSH")[0][6] == expected_time
    signed_message = _artifacts(node, study_id, "hl7_oru")[-1]
    assert signed_message.job_fk is None
    assert artifact_path(node.config, signed_message).read_bytes() == final.text.encode("utf-8")
    assert [
        d for row in export["artifacts"] if row["kind"] == "hl7_oru" for d in row["destinations"]
    ] == [
        {"destination": HL7_DESTINATION, "state": "sent", "attempts": 1, "last_error": ""},
    ] * 2

    # ... and PACS gets both SRs signed, the echo SR naming the preliminary one
    _, signed_echo_row = _artifacts(node, study_id, "echo_sr")
    held = _received_srs(analysed.pacs)
    assert len(held) == 4
    signed_echo = held[str(signed_echo_row.sop_instance_uid)]
    assert _template(signed_echo) == "5200"
    assert (signed_echo.CompletionFlag, signed_echo.VerificationFlag) == ("COMPLETE", "VERIFIED")
    assert signed_echo.PreliminaryFlag == "FINAL"
    assert _predecessor(signed_echo) == echo_sr.sop_instance_uid
    assert signed_echo.SeriesInstanceUID == first_echo.SeriesInstanceUID
    assert {_template(ds) for ds in held.values()} == {"1500", "5200"}

    # an amendment: C for the same order, and a third echo SR following the signed one
    _report(client, study_id, token, amendment_reason="typo in the conclusion")
    _wait_sent(client, study_id)
    assert len(peer.received) == 3
    amended = peer.received[2]
    assert amended.problem == "" and _obr(amended.text)[25] == "C"
    assert _obr(amended.text)[3] == obr[3]
    assert _observation_statuses(amended.text) <= {"C", "X"}
    *_, amended_echo_row = _artifacts(node, study_id, "echo_sr")
    held = _received_srs(analysed.pacs)
    assert _predecessor(held[str(amended_echo_row.sop_instance_uid)]) == (
        signed_echo_row.sop_instance_uid
    )
    with node.session_factory() as session:
        events = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "export").order_by(AuditEvent.id)
        ).all()
    results = [e.detail.get("results") for e in events if "results" in e.detail]
    assert {HL7_DESTINATION: "sent"} in results


def _message_node(
    database_url: str, tmp_path: Path, peer: MllpPeer, timeout_s: float = 10.0
) -> Node:
    """A fresh node whose one HL7 destination is ``peer``. The wait for an ACK is generous by
    default: the peer validates every message with hl7apy, which on a loaded machine can take
    longer than a short timeout, and a late AR would be taken for no answer and retried."""
    node = make_node(tmp_path / "home", database_url)
    config = dataclasses.replace(
        node.config, hl7_destinations=[_hl7(peer, timeout_s=timeout_s)], export=FAST_EXPORT
    )
    return Node(config, node.engine, node.session_factory)


def _copy_message(node: Node, source: Analysed) -> tuple[int, int, str]:
    """A study in ``node`` holding a copy of the analysed study's preliminary message (the
    pipeline's output, without analysing the loop again): (study id, artifact id, text)."""
    (original,) = [
        a for a in _artifacts(source.node, source.study_id, "hl7_oru") if a.job_fk is not None
    ]
    text = artifact_path(source.node.config, original).read_bytes()
    study_id = seed_study(node, next(source.node.config.store_path.rglob("*.dcm")))
    target = node.config.home_path / "oru.hl7"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(text)
    with node.session_factory.begin() as session:
        job = session.scalars(select(Job).where(Job.study_fk == study_id)).one()
        copy = Artifact(
            study_fk=study_id,
            job_fk=job.id,
            kind="hl7_oru",
            file_path="oru.hl7",
            media_type=HL7_MEDIA_TYPE,
            sha256=original.sha256,
        )
        session.add(copy)
        session.flush()
        return study_id, copy.id, text.decode("utf-8")


def _queue(node: Node, study_id: int, artifact_id: int) -> int:
    with node.session_factory.begin() as session:
        (job_id,) = queue_deliveries(
            session, node.config, study_id, utcnow(), hl7_messages={HL7_NAME: artifact_id}
        )
    return job_id


def test_an_error_ack_is_retried_with_the_same_message_until_accepted(
    analysed: Analysed, database_url: str, tmp_path: Path
) -> None:
    with MllpPeer() as peer:
        node = _message_node(database_url, tmp_path, peer)
        study_id, artifact_id, text = _copy_message(node, analysed)
        job_id = _queue(node, study_id, artifact_id)
        peer.script("AE", "AA")
        assert see_through(node.session_factory, node.config, [job_id]) == {job_id: "done"}
        assert [r.answer for r in peer.received] == ["AE", "AA"]
        assert [r.text for r in peer.received] == [text, text]  # same control id, same bytes
    assert _tries(node, artifact_id) == [(1, "failed", "AE"), (2, "sent", "AA")]
    with node.session_factory() as session:
        job = session.get(Job, job_id)
        assert job is not None and (job.kind, job.destination, job.attempts) == (
            jobs.KIND_DELIVER_HL7,
            HL7_DESTINATION,
            2,
        )
        first = session.scalars(
            select(ExportAttempt).where(ExportAttempt.artifact_fk == artifact_id)
        ).first()
        assert first is not None and "database unavailable, try again" in first.error
    node.engine.dispose()


def test_no_answer_or_an_ack_of_another_message_is_retried(
    analysed: Analysed, tmp_path: Path
) -> None:
    with MllpPeer() as peer:
        # "silent" costs one whole timeout: short, yet long enough for the answers that come
        node = _message_node(f"sqlite:///{tmp_path / 'node.db'}", tmp_path, peer, timeout_s=3.0)
        study_id, artifact_id, _ = _copy_message(node, analysed)
        job_id = _queue(node, study_id, artifact_id)
        peer.script("silent", "wrong_id", "AA")
        assert see_through(node.session_factory, node.config, [job_id]) == {job_id: "done"}
        assert len(peer.received) == 3
    # neither counts as a verdict on the message: recorded like no answer at all
    assert _tries(node, artifact_id) == [(1, "failed", ""), (2, "failed", ""), (3, "sent", "AA")]
    node.engine.dispose()


def test_a_rejection_fails_the_job_at_once(
    analysed: Analysed, database_url: str, tmp_path: Path
) -> None:
    with MllpPeer() as peer:
        node = _message_node(database_url, tmp_path, peer)
        study_id, artifact_id, _ = _copy_message(node, analysed)
        job_id = _queue(node, study_id, artifact_id)
        peer.script("AR", "AA")
        assert see_through(node.session_factory, node.config, [job_id]) == {job_id: "failed"}
        # failed for good: another pass, or a worker, makes no second try
        assert see_through(node.session_factory, node.config, [job_id]) == {job_id: "failed"}
        assert (
            jobs.claim_next(node.session_factory, "d0", utcnow(), lane=jobs.LANE_DELIVERY) is None
        )
        assert [r.answer for r in peer.received] == ["AR"]
    assert _tries(node, artifact_id) == [(1, "failed", "AR")]
    with node.session_factory() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.attempts == 1
        assert "AR (rejected)" in job.last_error and "unknown patient" in job.last_error
    node.engine.dispose()


def test_a_preliminary_message_is_not_sent_once_the_report_is_signed(
    analysed: Analysed, tmp_path: Path
) -> None:
    with MllpPeer() as peer:
        node = _message_node(f"sqlite:///{tmp_path / 'node.db'}", tmp_path, peer)
        study_id, artifact_id, _ = _copy_message(node, analysed)
        job_id = _queue(node, study_id, artifact_id)  # queued while still preliminary
        with node.session_factory.begin() as session:
            session.add(
                ReportVersion(
                    study_fk=study_id, version=1, status="signed", signed_at=dt.datetime.now(dt.UTC)
                )
            )
        assert see_through(node.session_factory, node.config, [job_id]) == {job_id: "done"}
        # and a re-analysis after sign-off queues no P message at all
        queued = queue_outputs(
            node.session_factory, node.config, study_id, {}, utcnow(), {HL7_NAME: artifact_id}
        )
        assert queued == []
        assert peer.received == []
    assert _tries(node, artifact_id) == []
    node.engine.dispose()
