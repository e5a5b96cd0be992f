"""DICOMweb export: the node's DICOM results reach a DICOMweb archive by STOW-RS.

The archive is a real Orthanc with its DICOMweb plugin (Debian ``orthanc-dicomweb``) on
loopback, configured as the only ``[[dicomweb_destinations]]`` entry (no C-STORE peer). A study
is analysed by the real pipeline (a truth oracle plays the networks) and its delivery jobs run
as a node's delivery worker runs them: Orthanc then holds every DICOM object of the analysis
(SEG, SR, echo SR, ...), preliminary; after sign-off it holds the signed SRs too, final. Each
try is an ``ExportAttempt`` row for ``dicomweb:<name>`` that the study's export summary lists.
An archive that cannot be reached is retried with the ``[export]`` back-off, not failed; an
instance the archive refuses fails at once with its Failure Reason.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from orthanc_helpers import Orthanc, run_orthanc
from sqlalchemy import select
from support import find_free_port
from web_helpers import Node, a4c_loops, login, make_node, oracle_models, seed_study

from pacs_agent.config import ConfigError, DicomwebDestinationConfig, ExportConfig, load_config
from pacs_agent.db.models import Artifact, ExportAttempt, Job, utcnow
from pacs_agent.deliveries import PACS_KINDS, queue_deliveries, run_delivery
from pacs_agent.jobs import PermanentJobError, RetryLater
from pacs_agent.stow_delivery import judge_answer
from web.app import create_app

ARCHIVE = "archive"
DESTINATION = f"dicomweb:{ARCHIVE}"
FAST_EXPORT = ExportConfig(max_attempts=3, backoff_initial_s=0.05, backoff_max_s=0.2)


@dataclasses.dataclass(frozen=True)
class Analysed:
    node: Node
    study_id: int
    orthanc: Orthanc


@pytest.fixture(scope="module")
def analysed(tmp_path_factory, phantom_studies) -> Iterator[Analysed]:
    tmp = tmp_path_factory.mktemp("dicomweb_export")
    with run_orthanc(tmp / "orthanc", {}, dicomweb=True) as orthanc:
        node = make_node(tmp / "home", f"sqlite:///{tmp / 'echo-agent.db'}")
        web_dest = DicomwebDestinationConfig(
            name=ARCHIVE, url=f"{orthanc.url}/dicom-web", timeout_s=30.0
        )
        config = dataclasses.replace(
            node.config, destinations=[], dicomweb_destinations=[web_dest], export=FAST_EXPORT
        )
        node = Node(config, node.engine, node.session_factory)
        loop = a4c_loops(phantom_studies)[0]
        study_id = seed_study(node, loop, models=oracle_models(loop))
        yield Analysed(node, study_id, orthanc)
        node.engine.dispose()


def _artifacts(node: Node, study_id: int) -> list[Artifact]:
    with node.session_factory() as session:
        return list(
            session.scalars(
                select(Artifact)
                .where(Artifact.study_fk == study_id, Artifact.kind.in_(PACS_KINDS))
                .order_by(Artifact.id)
            )
        )


def _tries(node: Node, artifact_id: int) -> list[tuple[str, str, str]]:
    with node.session_factory() as session:
        rows = session.scalars(
            select(ExportAttempt)
            .where(ExportAttempt.artifact_fk == artifact_id)
            .order_by(ExportAttempt.attempt)
        )
        return [(r.destination, r.state, r.status_code) for r in rows]


def _held_tags(orthanc: Orthanc, sop_instance_uid: str) -> dict:
    """The instance's main tags as Orthanc holds them (fails when it does not hold it)."""
    orthanc_id = orthanc.find_instance(sop_instance_uid)
    assert orthanc_id is not None, f"Orthanc does not hold {sop_instance_uid}"
    return orthanc.get(f"/instances/{orthanc_id}/simplified-tags")


def _wait_sent(client: FlaskClient, study_id: int, timeout_s: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        export = client.get(f"/api/studies/{study_id}/export").get_json()
        if not export["running"]:
            return export
        assert time.monotonic() < deadline, "the sign-off's sends did not end"
        time.sleep(0.1)


def _sign(client: FlaskClient, study_id: int, token: str) -> None:
    version = client.get(f"/api/studies/{study_id}").get_json()["report"]
    answer = client.post(
        f"/api/studies/{study_id}/report/sign",
        headers={"X-CSRF-Token": token},
        json={
            "base_version": version["version"],
            "structured_text": version["structured_text"],
            "narrative_text": "Normal LV size and systolic function.",
        },
    )
    assert answer.status_code == 201, answer.get_json()
    assert answer.get_json()["export_started"] is True


def test_results_reach_orthanc_by_stow_rs_preliminary_then_final(analysed: Analysed) -> None:
    node, study_id, orthanc = analysed.node, analysed.study_id, analysed.orthanc

    # after the analysis: every DICOM object of it, one STOW-RS try each
    preliminary = _artifacts(node, study_id)
    kinds = {a.kind for a in preliminary}
    assert {"seg", "sr", "echo_sr"} <= kinds
    for artifact in preliminary:
        assert _tries(node, artifact.id) == [(DESTINATION, "sent", "200")], artifact.kind
        held = _held_tags(orthanc, str(artifact.sop_instance_uid))
        assert held["SOPInstanceUID"] == artifact.sop_instance_uid
    (echo_sr,) = [a for a in preliminary if a.kind == "echo_sr"]
    assert _held_tags(orthanc, str(echo_sr.sop_instance_uid))["PreliminaryFlag"] == "PRELIMINARY"
    # ... and the archive's QIDO-RS lists the study with them
    (study,) = orthanc.get("/dicom-web/studies")
    held_uids = {
        item["00080018"]["Value"][0]
        for item in orthanc.get(f"/dicom-web/studies/{study['0020000D']['Value'][0]}/instances")
    }
    assert {str(a.sop_instance_uid) for a in preliminary} <= held_uids

    client = create_app(node.engine, node.config).test_client()
    token = login(client, "cardio")
    rows = {
        r["kind"]: r for r in client.get(f"/api/studies/{study_id}/export").get_json()["artifacts"]
    }
    assert rows["echo_sr"]["destinations"] == [
        {"destination": DESTINATION, "state": "sent", "attempts": 1, "last_error": ""}
    ]

    # sign-off: the signed SR and echo SR reach the archive too, final
    _sign(client, study_id, token)
    _wait_sent(client, study_id)
    signed = [a for a in _artifacts(node, study_id) if a.job_fk is None]
    assert {a.kind for a in signed} == {"sr", "echo_sr"}
    for artifact in signed:
        assert _tries(node, artifact.id) == [(DESTINATION, "sent", "200")], artifact.kind
    (signed_echo,) = [a for a in signed if a.kind == "echo_sr"]
    held = _held_tags(orthanc, str(signed_echo.sop_instance_uid))
    assert (held["PreliminaryFlag"], held["VerificationFlag"]) == ("FINAL", "VERIFIED")


def test_an_archive_that_does_not_answer_is_retried_with_backoff(analysed: Analysed) -> None:
    node = analysed.node
    dead = DicomwebDestinationConfig(
        name="dead", url=f"http://127.0.0.1:{find_free_port()}/dicom-web", timeout_s=2.0
    )
    config = dataclasses.replace(node.config, dicomweb_destinations=[dead])
    sr = next(a for a in _artifacts(node, analysed.study_id) if a.kind == "sr")
    with node.session_factory.begin() as session:
        (job_id,) = queue_deliveries(
            session, config, analysed.study_id, utcnow(), dicom_artifacts=[sr.id]
        )
    for tries in (1, 2):
        with pytest.raises(RetryLater) as retry:
            run_delivery(job_id, node.session_factory, config)
        expected_s = min(
            FAST_EXPORT.backoff_initial_s * 2 ** (tries - 1), FAST_EXPORT.backoff_max_s
        )
        assert retry.value.delay_s == pytest.approx(expected_s)
        dead_tries = [t for t in _tries(node, sr.id) if t[0] == "dicomweb:dead"]
        assert dead_tries == [("dicomweb:dead", "failed", "")] * tries
    with node.session_factory() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.kind == "deliver_stow" and job.state != "failed"
        row = session.scalars(
            select(ExportAttempt).where(ExportAttempt.destination == "dicomweb:dead").limit(1)
        ).one()
        assert "cannot reach" in row.error


def test_a_refusal_fails_the_delivery_at_once(analysed: Analysed) -> None:
    """A 4xx (here Orthanc's 404 for a URL that is no DICOMweb root) would come again for the
    same bytes: one try, then the job fails with the answer."""
    node = analysed.node
    wrong = DicomwebDestinationConfig(name="wrong", url=f"{analysed.orthanc.url}/no-such-root")
    config = dataclasses.replace(node.config, dicomweb_destinations=[wrong])
    seg = next(a for a in _artifacts(node, analysed.study_id) if a.kind == "seg")
    with node.session_factory.begin() as session:
        (job_id,) = queue_deliveries(
            session, config, analysed.study_id, utcnow(), dicom_artifacts=[seg.id]
        )
    with pytest.raises(PermanentJobError, match="HTTP 404"):
        run_delivery(job_id, node.session_factory, config)
    assert [t for t in _tries(node, seg.id) if t[0] == "dicomweb:wrong"] == [
        ("dicomweb:wrong", "failed", "404")
    ]


def test_a_failed_sop_sequence_names_the_failure_reason() -> None:
    """A 409 (or a 202) whose Failed SOP Sequence names the instance: refused, with the
    reason; a 200 that does not name it is no success."""
    uid = "1.2.826.0.1.3680043.8.498.1"
    failed = json.dumps(
        {
            "00081198": {
                "vr": "SQ",
                "Value": [
                    {
                        "00081155": {"vr": "UI", "Value": [uid]},
                        "00081197": {"vr": "US", "Value": [49442]},
                    }
                ],
            }
        }
    ).encode()
    outcome = judge_answer(409, failed, uid)
    assert (outcome.ok, outcome.status_code) == (False, "409")
    assert "Failure Reason 49442" in outcome.error
    assert not judge_answer(200, b"{}", uid).ok
    stored = json.dumps(
        {"00081199": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": [uid]}}]}}
    ).encode()
    assert judge_answer(200, stored, uid).ok


def test_dicomweb_destinations_are_read_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "echo-agent.toml"
    path.write_text(
        '[[dicomweb_destinations]]\nname = "archive"\nurl = "https://pacs.example/dicom-web"\n'
        'timeout_s = 12.5\nbearer_token_env = "ARCHIVE_TOKEN"\n'
    )
    (dest,) = load_config(path, environ={}).dicomweb_destinations
    assert dest == DicomwebDestinationConfig(
        name="archive",
        url="https://pacs.example/dicom-web",
        timeout_s=12.5,
        bearer_token_env="ARCHIVE_TOKEN",
    )
    path.write_text('[[dicomweb_destinations]]\nname = "archive"\nurl = "pacs.example"\n')
    with pytest.raises(ConfigError, match="url must be an http"):
        load_config(path, environ={})
