"""DICOMweb at /dicomweb: STOW-RS into the same store and checks as C-STORE, QIDO-RS and
WADO-RS over what the node holds (its own results included), bearer tokens and roles.

Most tests use the Flask test client on a migrated SQLite database; the same bytes are sent to
a real Storage SCP to show that a refused part gets the status C-STORE answers. One test runs
a whole node (waitress, listener, assembler, demo networks) and talks to it over HTTP with
``dicomweb-client``, as a PACS and a viewer would.
"""

from __future__ import annotations

import dataclasses
import io
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from dicom_helpers import (
    Ids,
    dataset_bytes,
    encode_dataset,
    send_raw,
    us_loop_dataset,
    write_instance,
    write_raw_file,
)
from flask import Flask
from flask.testing import FlaskClient
from pydicom.uid import ExplicitVRLittleEndian, UltrasoundMultiFrameImageStorage
from running_node import first_a4c_loop, node_config, running_node, wait_for_jobs_done
from sqlalchemy import func, select
from support import require_or_skip
from web_helpers import Node, login, make_node

from pacs_agent.api_tokens import create_token, revoke_token
from pacs_agent.assembly import assemble, judge_file
from pacs_agent.config import DicomConfig, DicomWebConfig
from pacs_agent.db.models import (
    ApiToken,
    AuditEvent,
    Instance,
    Job,
    QuarantinedInstance,
    utcnow,
)
from pacs_agent.dicom import start_storage_scp, status
from web.app import create_app
from web.dicomweb import read_file_meta, split_multipart

DICOM_JSON = "application/dicom+json"
BOUNDARY = "echo-agent-test-boundary"
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"
FAILURE_REASON = "00081197"
REFERENCED_SOP_INSTANCE_UID = "00081155"


@dataclass
class Web:
    node: Node
    app: Flask
    pacs_token: str
    viewer_token: str

    def client(self, token: str | None = None) -> FlaskClient:
        client = self.app.test_client()
        if token is not None:
            client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
        return client


def _web(tmp_path: Path, **dicomweb: int | bool) -> Web:
    node = make_node(tmp_path / "home", f"sqlite:///{tmp_path / 'echo-agent.db'}")
    node.config = dataclasses.replace(
        node.config,
        dicom=DicomConfig(min_free_disk_mb=0, stable_age_s=0.0),
        dicomweb=DicomWebConfig(**dicomweb),
    )
    with node.session_factory.begin() as session:
        pacs = create_token(session, "test-pacs", "pacs")[1]
        viewer = create_token(session, "test-viewer", "viewer")[1]
    return Web(node, create_app(node.engine, node.config), pacs, viewer)


@pytest.fixture
def web(tmp_path: Path) -> Iterator[Web]:
    served = _web(tmp_path)
    yield served
    served.node.engine.dispose()


def multipart(*parts: bytes, content_type: str = "application/dicom") -> tuple[bytes, str]:
    """A STOW-RS body as dicomweb-client writes one (CRLF before each boundary)."""
    body = b"".join(
        f"\r\n--{BOUNDARY}\r\nContent-Type: {content_type}\r\n\r\n".encode() + part
        for part in parts
    )
    body += f"\r\n--{BOUNDARY}--".encode()
    return body, f'multipart/related; type="application/dicom"; boundary="{BOUNDARY}"'


def stow(client: FlaskClient, *parts: bytes, url: str = "/dicomweb/studies", **headers: str):
    body, content_type = multipart(*parts)
    return client.post(url, data=body, headers={"Content-Type": content_type, **headers})


def sop_uids(answer: dict, sequence: str) -> list[str]:
    return [item[REFERENCED_SOP_INSTANCE_UID]["Value"][0]
            for item in answer.get(sequence, {}).get("Value", [])]  # fmt: skip


def failure_reasons(answer: dict) -> list[int]:
    return [item[FAILURE_REASON]["Value"][0]
            for item in answer[FAILED_SOP_SEQUENCE]["Value"]]  # fmt: skip


def parts_of(response) -> list[bytes]:
    """The bodies of a multipart/related WADO-RS answer."""
    assert response.mimetype == "multipart/related"
    assert response.mimetype_params["type"] == "application/dicom"
    data = response.get_data()
    boundary = response.mimetype_params["boundary"].encode()
    return [data[start:end] for _, start, end in split_multipart(data, boundary)]


def instance_count(web: Web) -> int:
    with web.node.session_factory() as session:
        return int(session.scalar(select(func.count()).select_from(Instance)) or 0)


# --- STOW-RS, QIDO-RS, WADO-RS -------------------------------------------------------------


def test_a_loop_stored_by_stow_is_queued_listed_and_retrieved_byte_for_byte(
    web: Web, phantom_studies: list[Path]
) -> None:
    loop = first_a4c_loop(phantom_studies)
    ds = pydicom.dcmread(loop, stop_before_pixels=True)
    study_uid, series_uid, sop_uid = (
        str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))  # fmt: skip
    pacs = web.client(web.pacs_token)

    stored = stow(pacs, loop.read_bytes())
    assert stored.status_code == 200, stored.get_data(as_text=True)
    assert stored.mimetype == DICOM_JSON
    assert sop_uids(stored.get_json(), REFERENCED_SOP_SEQUENCE) == [sop_uid]
    assert FAILED_SOP_SEQUENCE not in stored.get_json()
    with web.node.session_factory() as session:
        instance = session.scalar(select(Instance))
        assert instance is not None and instance.sop_instance_uid == sop_uid
        assert instance.calling_ae == "DICOMWEB"
        stored_path = web.node.config.store_path / instance.file_path
    # the dataset as sent, under the node's own File Meta: as C-STORE keeps it
    assert dataset_bytes(stored_path) == dataset_bytes(loop)

    # the assembler treats it as it treats a loop sent by C-STORE: one analysis job
    config = web.node.config
    result = assemble(web.node.session_factory, config, judge_file(config, None), utcnow())
    assert len(result.queued_job_ids) == 1
    with web.node.session_factory() as session:
        job = session.get(Job, result.queued_job_ids[0])
        assert job is not None and job.instance_fk == instance.id and job.kind == "analyze"

    again = stow(pacs, loop.read_bytes(), url=f"/dicomweb/studies/{study_uid}")
    assert again.status_code == 200, again.get_data(as_text=True)
    assert sop_uids(again.get_json(), REFERENCED_SOP_SEQUENCE) == [sop_uid]
    assert instance_count(web) == 1
    assert len(list(config.store_path.rglob("*.dcm"))) == 1

    viewer = web.client(web.viewer_token)
    studies = viewer.get(f"/dicomweb/studies?PatientID={ds.PatientID}")
    assert studies.status_code == 200 and studies.mimetype == DICOM_JSON
    (study,) = studies.get_json()
    assert study["0020000D"]["Value"] == [study_uid]
    assert study["00100020"]["Value"] == [str(ds.PatientID)]
    assert study["00201208"]["Value"] == [1]
    assert study["00080061"]["Value"] == ["US"]
    assert viewer.get("/dicomweb/studies?PatientID=nobody").get_json() == []
    by_tag = viewer.get(f"/dicomweb/studies?0020000D={study_uid}&includefield=all").get_json()
    assert [s["0020000D"]["Value"][0] for s in by_tag] == [study_uid]

    (series,) = viewer.get(f"/dicomweb/studies/{study_uid}/series").get_json()
    assert series["0020000E"]["Value"] == [series_uid] and series["00080060"]["Value"] == ["US"]
    url = f"/dicomweb/studies/{study_uid}/series/{series_uid}/instances"
    (listed,) = viewer.get(url).get_json()
    assert listed["00080018"]["Value"] == [sop_uid]
    assert listed["00080016"]["Value"] == [str(ds.SOPClassUID)]

    retrieved = viewer.get(f"{url}/{sop_uid}", headers={
        "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})  # fmt: skip
    assert retrieved.status_code == 200
    assert parts_of(retrieved) == [stored_path.read_bytes()]

    (meta,) = viewer.get(f"{url}/{sop_uid}/metadata").get_json()
    assert meta["00080018"]["Value"] == [sop_uid]
    assert "7FE00010" not in meta  # no pixel data in the metadata
    assert meta["00083002"]["Value"] == [str(ds.file_meta.TransferSyntaxUID)]

    other_syntax = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.3'
    wrong_syntax = viewer.get(f"{url}/{sop_uid}", headers={"Accept": other_syntax})
    assert wrong_syntax.status_code == 406
    assert viewer.get(f"{url}/1.2.3.4").status_code == 404

    with web.node.session_factory() as session:
        events = session.execute(select(AuditEvent.action, AuditEvent.username)).all()
    assert ("dicomweb_store", "token:test-pacs") in events
    assert ("view", "token:test-viewer") in events


def _truncated_header(ids: Ids) -> bytes:
    return encode_dataset(us_loop_dataset(ids), ExplicitVRLittleEndian)[:101]


def _no_number_of_frames(ids: Ids) -> bytes:
    ds = us_loop_dataset(ids)
    del ds.NumberOfFrames
    return encode_dataset(ds, ExplicitVRLittleEndian)


def _short_pixel_data(ids: Ids) -> bytes:
    ds = us_loop_dataset(ids, frames=4)
    ds.PixelData = ds.PixelData[: 64 * 80 * 3]
    return encode_dataset(ds, ExplicitVRLittleEndian)


BAD_PARTS = {
    "truncated_header": (_truncated_header, status.CANNOT_PARSE),
    "no_number_of_frames": (_no_number_of_frames, status.DATASET_DOES_NOT_MATCH_SOP_CLASS),
    "short_pixel_data": (_short_pixel_data, status.PIXEL_DATA_INCOMPLETE),
}


def test_a_malformed_part_fails_with_the_status_c_store_answers(web: Web, tmp_path: Path) -> None:
    config = web.node.config
    scp = start_storage_scp(dataclasses.replace(config, dicom=DicomConfig(
        port=0, min_free_disk_mb=0)), web.node.engine)  # fmt: skip
    try:
        for case, (build, expected) in BAD_PARTS.items():
            ids = Ids.new()
            data = build(ids)
            by_c_store = send_raw("127.0.0.1", scp.port, tmp_path, UltrasoundMultiFrameImageStorage,
                                  ids.sop, ExplicitVRLittleEndian, data)  # fmt: skip
            assert by_c_store == expected, case
            part = write_raw_file(tmp_path / f"{case}.dcm", UltrasoundMultiFrameImageStorage,
                                  ids.sop, ExplicitVRLittleEndian, data).read_bytes()  # fmt: skip
            answer = stow(web.client(web.pacs_token), part)
            assert answer.status_code == 409, case
            assert failure_reasons(answer.get_json()) == [by_c_store], case
            assert sop_uids(answer.get_json(), FAILED_SOP_SEQUENCE) == [ids.sop]
    finally:
        scp.shutdown(timeout_s=5)
    assert instance_count(web) == 0

    good = write_instance(tmp_path / "good.dcm", us_loop_dataset(Ids.new())).read_bytes()
    not_dicom = b"this is not a DICOM file at all"
    mixed = stow(web.client(web.pacs_token), good, not_dicom)
    assert mixed.status_code == 202, mixed.get_data(as_text=True)
    assert failure_reasons(mixed.get_json()) == [status.CANNOT_PARSE]
    assert len(sop_uids(mixed.get_json(), REFERENCED_SOP_SEQUENCE)) == 1
    assert instance_count(web) == 1


def test_conflicts_are_quarantined_and_other_studies_refused_as_by_c_store(
    web: Web, tmp_path: Path
) -> None:
    ids = Ids.new()
    first = write_instance(tmp_path / "a.dcm", us_loop_dataset(ids, patient_id="PAT-1"))
    pacs = web.client(web.pacs_token)
    assert stow(pacs, first.read_bytes()).status_code == 200
    other_patient = write_instance(
        tmp_path / "b.dcm", us_loop_dataset(Ids.new(ids.study, ids.series), patient_id="PAT-2")
    )
    answer = stow(pacs, other_patient.read_bytes())
    assert answer.status_code == 409
    assert failure_reasons(answer.get_json()) == [status.PATIENT_CONFLICT]
    with web.node.session_factory() as session:
        assert session.scalar(select(func.count()).select_from(QuarantinedInstance)) == 1

    elsewhere = write_instance(tmp_path / "c.dcm", us_loop_dataset(Ids.new()))
    refused = stow(pacs, elsewhere.read_bytes(), url=f"/dicomweb/studies/{ids.study}")
    assert refused.status_code == 409
    assert failure_reasons(refused.get_json()) == [status.DATASET_DOES_NOT_MATCH_SOP_CLASS]
    assert instance_count(web) == 1


# --- who may ---------------------------------------------------------------------------------


def test_tokens_and_logins_decide_who_may_store_and_read(web: Web, tmp_path: Path) -> None:
    loop = write_instance(tmp_path / "loop.dcm", us_loop_dataset(Ids.new())).read_bytes()

    anonymous = web.client()
    refused = anonymous.get("/dicomweb/studies")
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    assert stow(anonymous, loop).status_code == 401
    assert web.client("eat_not-a-real-token").get("/dicomweb/studies").status_code == 401
    assert web.client(web.pacs_token).get("/api/studies").status_code == 401  # DICOMweb only

    viewer = web.client(web.viewer_token)
    assert viewer.get("/dicomweb/studies").status_code == 200
    assert stow(viewer, loop).status_code == 403
    assert instance_count(web) == 0

    with web.node.session_factory.begin() as session:
        revoke_token(session, "test-pacs")
    assert web.client(web.pacs_token).get("/dicomweb/studies").status_code == 401
    assert stow(web.client(web.pacs_token), loop).status_code == 401

    sonographer = web.app.test_client()
    csrf = login(sonographer, "sono")
    assert sonographer.get("/dicomweb/studies").status_code == 200
    assert stow(sonographer, loop, **{"X-CSRF-Token": csrf}).status_code == 403
    admin = web.app.test_client()
    csrf = login(admin, "admin")
    assert stow(admin, loop).status_code == 403  # a session's store needs its CSRF token
    assert stow(admin, loop, **{"X-CSRF-Token": csrf}).status_code == 200
    assert instance_count(web) == 1


def test_max_request_mb_bounds_a_request_with_or_without_content_length(tmp_path: Path) -> None:
    ds = us_loop_dataset(Ids.new(), rows=512, columns=512, frames=5)  # 1.25 MiB of pixels
    body, content_type = multipart(write_instance(tmp_path / "big.dcm", ds).read_bytes())
    for limit_mb, expected in ((1, 413), (2, 200)):  # 2: above the app's 1 MiB form limit
        web = _web(tmp_path / f"limit{limit_mb}", max_request_mb=limit_mb)
        try:
            pacs = web.client(web.pacs_token)
            sized = pacs.post("/dicomweb/studies", data=body,
                              headers={"Content-Type": content_type})  # fmt: skip
            assert sized.status_code == expected, sized.get_data(as_text=True)
            chunked = pacs.post(
                "/dicomweb/studies",
                input_stream=io.BytesIO(body),
                headers={"Content-Type": content_type, "Transfer-Encoding": "chunked"},
                environ_overrides={"wsgi.input_terminated": True},  # as waitress sets it
            )
            assert chunked.status_code == expected, chunked.get_data(as_text=True)
            assert instance_count(web) == (0 if expected == 413 else 1)
        finally:
            web.node.engine.dispose()


def test_with_dicomweb_disabled_nothing_answers_under_dicomweb(tmp_path: Path) -> None:
    web = _web(tmp_path, enabled=False)
    try:
        answer = web.client(web.pacs_token).get("/dicomweb/studies")
        assert answer.status_code == 302  # the login redirect of any unknown page
    finally:
        web.node.engine.dispose()


def test_bad_requests_are_refused_before_anything_is_stored(web: Web, tmp_path: Path) -> None:
    pacs = web.client(web.pacs_token)
    loop = write_instance(tmp_path / "loop.dcm", us_loop_dataset(Ids.new())).read_bytes()
    body, _ = multipart(loop)
    wrong_type = pacs.post("/dicomweb/studies", data=body,
                           headers={"Content-Type": "application/dicom"})  # fmt: skip
    assert wrong_type.status_code == 415
    no_end = pacs.post("/dicomweb/studies", data=body[:-12],
                       headers={"Content-Type": multipart(loop)[1]})  # fmt: skip
    assert no_end.status_code == 400
    assert pacs.get("/dicomweb/studies?limit=many").status_code == 400
    assert pacs.get("/dicomweb/studies?StudyDate=2024").status_code == 400
    assert instance_count(web) == 0


def test_file_meta_is_read_with_or_without_its_group_length(tmp_path: Path) -> None:
    ids = Ids.new()
    path = write_instance(tmp_path / "x.dcm", us_loop_dataset(ids))
    data = path.read_bytes()
    sop_class, sop, syntax, offset = read_file_meta(memoryview(data))
    assert (sop_class, sop, syntax) == (UltrasoundMultiFrameImageStorage, ids.sop,
                                        ExplicitVRLittleEndian)  # fmt: skip
    assert data[offset:] == dataset_bytes(path)
    # the same file without (0002,0000): the group is walked element by element
    group_length_element = 12
    without = data[:132] + data[132 + group_length_element :]
    assert read_file_meta(memoryview(without))[1:3] == (ids.sop, ExplicitVRLittleEndian)
    with pytest.raises(ValueError, match="DICM"):
        read_file_meta(memoryview(b"\0" * 200))


# --- the command line ------------------------------------------------------------------------


def test_token_add_prints_it_once_and_revoke_ends_it(echo_agent_exe: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECHO_AGENT_")}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([echo_agent_exe, "token", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)  # fmt: skip

    added = cli("add", "orthanc", "--role", "pacs")
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip()
    assert token.startswith("eat_") and "\n" not in token
    again = cli("add", "orthanc", "--role", "viewer")
    assert again.returncode == 2 and "exists" in again.stderr
    listed = cli("list")
    assert listed.returncode == 0 and "orthanc\tpacs" in listed.stdout
    assert token not in listed.stdout

    from pacs_agent.config import Config, DatabaseConfig
    from pacs_agent.db import make_engine, make_session_factory

    url = f"sqlite:///{tmp_path / 'var' / 'echo-agent.db'}"
    engine = make_engine(url)
    try:
        with make_session_factory(engine)() as session:
            row = session.scalar(select(ApiToken))
            assert row is not None and row.token_hash != token and token not in row.token_hash
        app = create_app(engine, Config(home=str(tmp_path / "var"),
                                        database=DatabaseConfig(url=url)))  # fmt: skip
        client = app.test_client()
        client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
        assert client.get("/dicomweb/studies").status_code == 200
        revoked = cli("revoke", "orthanc")
        assert revoked.returncode == 0, revoked.stderr
        assert client.get("/dicomweb/studies").status_code == 401
        assert cli("revoke", "orthanc").returncode == 2
    finally:
        engine.dispose()


# --- a whole node over HTTP ------------------------------------------------------------------


def test_a_node_analyses_a_loop_sent_with_dicomweb_client_and_serves_its_results(
    tmp_path: Path, phantom_studies: list[Path]
) -> None:
    try:
        import dicomweb_client
    except ImportError:
        require_or_skip("dicomweb-client is not installed (pip install -e '.[dev]')")
    config = node_config(tmp_path / "home", f"sqlite:///{tmp_path / 'node.db'}")
    loop = first_a4c_loop(phantom_studies)
    sent = pydicom.dcmread(loop)
    study_uid = str(sent.StudyInstanceUID)
    with running_node(config) as node:
        with node.session_factory.begin() as session:
            pacs_token = create_token(session, "pacs", "pacs")[1]
            viewer_token = create_token(session, "viewer", "viewer")[1]
        url = f"http://127.0.0.1:{node.web_port}/dicomweb"
        pacs = dicomweb_client.DICOMwebClient(
            url, headers={"Authorization": f"Bearer {pacs_token}"})  # fmt: skip
        answer = pacs.store_instances([sent])
        assert [str(i.ReferencedSOPInstanceUID) for i in answer.ReferencedSOPSequence] == [
            str(sent.SOPInstanceUID)]  # fmt: skip

        wait_for_jobs_done(node, 1)  # listed, judged, analysed: as if it came by C-STORE
        viewer = dicomweb_client.DICOMwebClient(
            url, headers={"Authorization": f"Bearer {viewer_token}"})  # fmt: skip
        (study,) = viewer.search_for_studies(search_filters={"StudyInstanceUID": study_uid})
        modalities = set(study["00080061"]["Value"])
        assert {"US", "SEG", "SR"} <= modalities, modalities
        results = {
            s["00080060"]["Value"][0]: s["0020000E"]["Value"][0]
            for s in viewer.search_for_series(study_uid)
        }
        (seg,) = viewer.search_for_instances(study_uid, results["SEG"])
        seg_uid = seg["00080018"]["Value"][0]
        retrieved = viewer.retrieve_instance(study_uid, results["SEG"], seg_uid)
        assert str(retrieved.SOPInstanceUID) == seg_uid and retrieved.Modality == "SEG"
        loop_back = viewer.retrieve_instance(
            study_uid, str(sent.SeriesInstanceUID), str(sent.SOPInstanceUID))  # fmt: skip
        assert loop_back.PixelData == sent.PixelData

        refused = dicomweb_client.DICOMwebClient(url)
        with pytest.raises(Exception, match="401"):
            refused.search_for_studies()
        with pytest.raises(Exception, match="403"):
            viewer.store_instances([sent])
