"""Sign-off sends cut short by a stop go on when the review app starts again.

A study is analysed by the real pipeline (a truth oracle plays the networks) and signed through
the JSON API; the database is then left as a stop leaves it (the export rows are the only state:
a try still "pending", or a failed try waiting out its back-off), and a new app takes up the
sends to a real PACS (dcmtk's storescp) and a FHIR server. Sends that never began (a destination
or an EHR configured later) and a bundle an amendment superseded are left alone.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from dicom_helpers import PEER_AET, storescp
from fhir_receiver import FhirReceiver
from sqlalchemy import select
from web_helpers import (
    Node,
    a4c_loops,
    login,
    make_node,
    oracle_models,
    seed_study,
)

from pacs_agent.config import Config, DestinationConfig, EhrConfig, ExportConfig
from pacs_agent.db.models import Artifact, AuditEvent, ExportAttempt
from pacs_agent.fhir_delivery import destination_name
from web.app import create_app
from web.export_resume import unfinished_signoff_exports
from web.signoff import RESUMING_USER


@dataclasses.dataclass(frozen=True)
class Signed:
    node: Node
    study_id: int
    sr_id: int
    fhir_id: int


@pytest.fixture
def ehr() -> Iterator[FhirReceiver]:
    with FhirReceiver().serve() as receiver:
        yield receiver


def _sign(node: Node, study_id: int, amendment_reason: str = "") -> None:
    """Signs (or amends) through the API with nowhere configured to send to."""
    client = create_app(node.engine, node.config).test_client()
    token = login(client, "cardio")
    version = client.get(f"/api/studies/{study_id}").get_json()["report"]
    body = {"base_version": version["version"], "structured_text": version["structured_text"],
            "narrative_text": "Normal LV size and systolic function."}
    if amendment_reason:
        url = f"/api/studies/{study_id}/report"
        body["amendment_reason"] = amendment_reason
    else:
        url = f"/api/studies/{study_id}/report/sign"
    answer = client.post(url, headers={"X-CSRF-Token": token}, json=body)
    assert answer.status_code == 201, answer.get_json()


def _signed_artifacts(node: Node, study_id: int, kind: str) -> list[int]:
    with node.session_factory() as session:
        return list(session.scalars(
            select(Artifact.id).where(Artifact.study_fk == study_id, Artifact.kind == kind,
                                      Artifact.job_fk.is_(None)).order_by(Artifact.id)))


@pytest.fixture
def signed(tmp_path, database_url, phantom_studies) -> Iterator[Signed]:
    node = make_node(tmp_path / "home", database_url)
    loop = a4c_loops(phantom_studies)[0]
    study_id = seed_study(node, loop, models=oracle_models(loop))
    _sign(node, study_id)
    (sr_id,) = _signed_artifacts(node, study_id, "sr")
    (fhir_id,) = _signed_artifacts(node, study_id, "fhir")
    yield Signed(node, study_id, sr_id, fhir_id)
    node.engine.dispose()


def _sending_config(node: Node, pacs_port: int, ehr_url: str) -> Config:
    return dataclasses.replace(
        node.config,
        destinations=[DestinationConfig(name="pacs", ae_title=PEER_AET, host="127.0.0.1",
                                        port=pacs_port)],
        export=ExportConfig(max_attempts=3, backoff_initial_s=0.05, backoff_max_s=1.0),
        ehr=EhrConfig(fhir_base_url=ehr_url, backoff_initial_s=0.05, backoff_max_s=1.0,
                      timeout_s=10.0),
    )


def _leave_as_a_stop_does(node: Node, artifact_id: int, destination: str, cut: str) -> None:
    """The rows a node killed mid-try ("mid_try") or during a back-off wait ("back_off")
    leaves behind."""
    started = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)
    with node.session_factory.begin() as session:
        if cut == "mid_try":
            session.add(ExportAttempt(artifact_fk=artifact_id, destination=destination,
                                      state="pending", attempt=1, started_at=started))
        else:
            session.add(ExportAttempt(artifact_fk=artifact_id, destination=destination,
                                      state="failed", attempt=1, error="connection refused",
                                      started_at=started, finished_at=started))


def _tries(node: Node, artifact_id: int) -> list[tuple[int, str, str]]:
    with node.session_factory() as session:
        rows = session.scalars(select(ExportAttempt).where(ExportAttempt.artifact_fk == artifact_id)
                               .order_by(ExportAttempt.attempt))
        return [(r.attempt, r.state, r.error) for r in rows]


@pytest.mark.parametrize("cut", ["mid_try", "back_off"])
def test_sends_cut_short_by_a_stop_go_on_at_the_next_start(
    signed: Signed, ehr: FhirReceiver, free_port: int, tmp_path: Path, cut: str
) -> None:
    node = signed.node
    config = _sending_config(node, free_port, ehr.base_url)
    _leave_as_a_stop_does(node, signed.sr_id, "pacs", cut)
    _leave_as_a_stop_does(node, signed.fhir_id, destination_name(config.ehr), cut)
    with node.session_factory() as session:
        (owed,) = unfinished_signoff_exports(session, config)
    assert owed.study_id == signed.study_id
    assert owed.sr_destinations == ((signed.sr_id, ("pacs",)),)
    assert owed.fhir_artifact_id == signed.fhir_id

    with storescp(free_port, tmp_path / "pacs") as received:
        threads = create_app(node.engine, config).config["ECHO_AGENT_EXPORTS"].resume_unfinished()
        assert len(threads) == 1
        threads[0].join(timeout=60)
        assert not threads[0].is_alive()
        files = [p for p in received.rglob("*") if p.is_file()]

    with node.session_factory() as session:
        sr = session.get(Artifact, signed.sr_id)
        assert sr is not None
        sr_uid = sr.sop_instance_uid
    assert [str(pydicom.dcmread(p).SOPInstanceUID) for p in files] == [sr_uid]
    for artifact_id in (signed.sr_id, signed.fhir_id):
        tries = _tries(node, artifact_id)
        assert [(n, state) for n, state, _ in tries] == [(1, "failed"), (2, "sent")]
        if cut == "mid_try":  # the try the stop cut short counts, and says why it failed
            assert tries[0][2].startswith("interrupted")
    (report,) = ehr.all("DiagnosticReport")
    assert report["status"] == "final"
    with node.session_factory() as session:
        events = session.scalars(select(AuditEvent).where(AuditEvent.action == "export")).all()
        assert sorted(e.detail["artifact_id"] for e in events) == sorted(
            [signed.sr_id, signed.fhir_id])
        assert {e.username for e in events} == {RESUMING_USER}
        assert all(e.detail["resumed"] is True for e in events)
        # all sent: the next start has nothing to take up
        assert unfinished_signoff_exports(session, config) == []


def test_sends_that_never_began_are_not_made_at_start(
    signed: Signed, ehr: FhirReceiver, free_port: int
) -> None:
    """A PACS destination and an EHR configured after the sign-off: old signed reports are not
    sent to them behind the operator's back."""
    config = _sending_config(signed.node, free_port, ehr.base_url)
    app = create_app(signed.node.engine, config)
    assert app.config["ECHO_AGENT_EXPORTS"].resume_unfinished() == []
    assert _tries(signed.node, signed.sr_id) == []
    assert ehr.transactions() == []


def test_a_superseded_bundle_is_never_resumed_over_the_amended_one(
    signed: Signed, ehr: FhirReceiver, free_port: int
) -> None:
    node = signed.node
    _sign(node, signed.study_id, amendment_reason="wording")
    first, amended = _signed_artifacts(node, signed.study_id, "fhir")
    assert first == signed.fhir_id
    config = _sending_config(node, free_port, ehr.base_url)
    destination = destination_name(config.ehr)
    _leave_as_a_stop_does(node, first, destination, "back_off")
    with node.session_factory() as session:
        assert unfinished_signoff_exports(session, config) == []
    _leave_as_a_stop_does(node, amended, destination, "back_off")
    with node.session_factory() as session:
        (owed,) = unfinished_signoff_exports(session, config)
    assert (owed.fhir_artifact_id, owed.sr_destinations) == (amended, ())
