"""Export by C-STORE to a real peer (dcmtk's storescp), with retries, back-off, a final failed
state, resumption after a crash, and C-ECHO checks of the destinations."""

from __future__ import annotations

import contextlib
import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from dicom_helpers import (
    PEER_AET,
    Ids,
    dataset_bytes,
    file_transfer_syntax,
    free_tcp_port,
    storescp,
    us_loop_dataset,
    write_instance,
)
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit
from sqlalchemy import select

from pacs_agent import export
from pacs_agent.config import Config, DatabaseConfig, DestinationConfig, DicomConfig, ExportConfig
from pacs_agent.db import make_engine, make_session_factory, upgrade
from pacs_agent.db.models import Artifact, ExportAttempt, Patient, Study
from pacs_agent.dicom import start_storage_scp
from pacs_agent.dicom.ae import node_ae
from pacs_agent.store import INCOMING_DIR_NAME


@pytest.fixture
def sessions(database_url: str):
    upgrade(database_url)
    engine = make_engine(database_url)
    yield make_session_factory(engine)
    engine.dispose()


def config_for(
    home: Path, port: int, max_attempts: int = 3, backoff_initial_s: float = 0.05
) -> Config:
    return Config(
        home=str(home),
        dicom=DicomConfig(ae_title="ECHOAGENT"),
        export=ExportConfig(
            max_attempts=max_attempts,
            backoff_initial_s=backoff_initial_s,
            backoff_max_s=20 * backoff_initial_s,
        ),
        destinations=[
            DestinationConfig(name="pacs", ae_title=PEER_AET, host="127.0.0.1", port=port)
        ],
    )


def make_artifact(sessions, home: Path) -> tuple[int, Path, Ids]:
    """A JPEG-compressed secondary object on disk and its Artifact row (path relative to home)."""
    ids = Ids.new()
    path = write_instance(
        home / "artifacts" / f"{ids.sop}.dcm",
        us_loop_dataset(ids, frames=3, rows=32, columns=48),
        JPEGBaseline8Bit,
    )
    with sessions.begin() as s:
        study = Study(study_instance_uid=ids.study, patient=Patient(patient_id=ids.sop[-20:]))
        artifact = Artifact(
            study=study,
            kind="secondary_capture",
            sop_instance_uid=ids.sop,
            file_path=str(path.relative_to(home)),
            media_type="application/dicom",
            sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        )
        s.add_all([study, artifact])
        s.flush()
        return artifact.id, path, ids


def attempts(sessions, artifact_id: int) -> list[ExportAttempt]:
    with sessions() as s:
        return list(
            s.scalars(
                select(ExportAttempt)
                .where(ExportAttempt.artifact_fk == artifact_id)
                .order_by(ExportAttempt.attempt)
            )
        )


def no_wait(delays: list[float]):
    def wait(seconds: float) -> bool:
        delays.append(seconds)
        return False

    return wait


def test_an_artifact_goes_out_byte_for_byte_in_its_own_syntax(sessions, tmp_path, free_port):
    home = tmp_path / "home"
    artifact_id, path, ids = make_artifact(sessions, home)
    config = config_for(home, free_port)
    with storescp(free_port, tmp_path / "peer") as received:
        status = export.export_artifact(sessions, artifact_id, config.destinations[0], config)
    assert (status.state, status.attempts, status.last_status_code) == ("sent", 1, "0x0000")
    (copy,) = [p for p in received.iterdir() if ids.sop in p.name]
    assert file_transfer_syntax(copy) == JPEGBaseline8Bit
    assert dataset_bytes(copy) == dataset_bytes(path)
    (row,) = attempts(sessions, artifact_id)
    assert (row.destination, row.state, row.attempt, row.error) == ("pacs", "sent", 1, "")
    assert row.finished_at is not None
    # asking again does not send it again
    again = export.export_artifact(sessions, artifact_id, config.destinations[0], config)
    assert again.state == "sent" and len(attempts(sessions, artifact_id)) == 1


def test_failed_tries_back_off_then_the_export_fails_for_good(sessions, tmp_path, free_port):
    home = tmp_path / "home"
    artifact_id, _path, _ids = make_artifact(sessions, home)
    # nothing listens on free_port; the waits are recorded, not slept, so the back-off can be
    # long enough that a slow machine's failed try never eats a whole delay
    config = config_for(home, free_port, max_attempts=3, backoff_initial_s=5.0)
    delays: list[float] = []
    status = export.export_artifact(
        sessions, artifact_id, config.destinations[0], config, wait=no_wait(delays)
    )
    assert (status.state, status.attempts) == ("failed", 3)
    assert "connection refused or timed out" in status.last_error
    rows = attempts(sessions, artifact_id)
    assert [(r.attempt, r.state) for r in rows] == [(1, "failed"), (2, "failed"), (3, "failed")]
    # the back-off doubles (5 s, then 10 s) less the time the failed try itself took
    assert len(delays) == 2 and 4.0 < delays[0] <= 5.0 and 9.0 < delays[1] <= 10.0
    assert export.export_artifact(sessions, artifact_id, config.destinations[0], config) == status
    assert len(attempts(sessions, artifact_id)) == 3, "a failed export is not retried by itself"
    with sessions() as s:
        (shown,) = export.export_status(s, artifact_id, config)
    assert shown == status


def test_a_destination_that_comes_up_between_tries_gets_the_artifact(sessions, tmp_path, free_port):
    home = tmp_path / "home"
    artifact_id, _path, ids = make_artifact(sessions, home)
    config = config_for(home, free_port)
    with contextlib.ExitStack() as stack:

        def start_peer_then_go_on(_seconds: float) -> bool:
            stack.enter_context(storescp(free_port, tmp_path / "peer"))
            return False

        status = export.export_artifact(
            sessions, artifact_id, config.destinations[0], config, wait=start_peer_then_go_on
        )
    assert (status.state, status.attempts) == ("sent", 2)
    assert [r.state for r in attempts(sessions, artifact_id)] == ["failed", "sent"]
    assert any(ids.sop in p.name for p in (tmp_path / "peer").iterdir())


def test_a_try_cut_short_by_a_crash_is_closed_and_counted(sessions, tmp_path, free_port):
    home = tmp_path / "home"
    artifact_id, _path, _ids = make_artifact(sessions, home)
    with sessions.begin() as s:
        s.add(ExportAttempt(artifact_fk=artifact_id, destination="pacs", attempt=1))
    config = config_for(home, free_port, max_attempts=2)
    status = export.export_artifact(
        sessions, artifact_id, config.destinations[0], config, wait=no_wait([])
    )
    rows = attempts(sessions, artifact_id)
    assert [(r.attempt, r.state) for r in rows] == [(1, "failed"), (2, "failed")]
    assert rows[0].error.startswith("interrupted")
    assert status.state == "failed"


def test_a_shutdown_during_the_back_off_leaves_the_export_pending(sessions, tmp_path, free_port):
    home = tmp_path / "home"
    artifact_id, _path, _ids = make_artifact(sessions, home)
    config = config_for(home, free_port)
    status = export.export_artifact(
        sessions, artifact_id, config.destinations[0], config, wait=lambda _s: True
    )
    assert (status.state, status.attempts) == ("pending", 1)


def test_destinations_check_says_which_answer(tmp_path, free_port) -> None:
    closed = free_port
    with storescp(open_port := free_tcp_port(), tmp_path / "peer"):
        config = Config(
            destinations=[
                DestinationConfig(name="up", ae_title=PEER_AET, host="127.0.0.1", port=open_port),
                DestinationConfig(name="down", ae_title="NOBODY", host="127.0.0.1", port=closed),
            ]
        )
        up, down = export.check_destinations(config)
    assert (up.destination, up.ok, up.detail) == ("up", True, "C-ECHO succeeded")
    assert (down.destination, down.ok) == ("down", False)
    assert f"NOBODY@127.0.0.1:{closed}" in down.detail


def test_the_listener_and_every_send_share_one_ae_and_leave_its_contexts_alone(
    database_url: str, tmp_path: Path
) -> None:
    """pynetdicom's model: one AE per process. The listener and the sends of one configuration
    use the same object; each send proposes its contexts to its own association only, so
    threads sending different SOP classes and syntaxes at once all get theirs through."""
    upgrade(database_url)
    engine = make_engine(database_url)
    config = Config(
        home=str(tmp_path / "home"),
        dicom=DicomConfig(port=0, min_free_disk_mb=0),
        database=DatabaseConfig(url=database_url),
    )
    ae = node_ae(config.dicom)
    assert node_ae(DicomConfig(port=0, min_free_disk_mb=0)) is ae
    assert node_ae(DicomConfig(allowed_calling_aes=["PACS1"])) is not ae  # other listener rules
    scp = start_storage_scp(config, engine)
    try:
        assert scp._ae is ae
        syntaxes = (ExplicitVRLittleEndian, JPEGBaseline8Bit, ImplicitVRLittleEndian)
        files = [
            write_instance(
                tmp_path / f"{index}.dcm",
                us_loop_dataset(Ids.new(), frames=2, rows=32, columns=48),
                syntaxes[index % len(syntaxes)],
            )
            for index in range(9)
        ]
        dest = DestinationConfig(name="self", ae_title="ECHOAGENT", host="127.0.0.1",
                                 port=scp.port)  # fmt: skip
        with ThreadPoolExecutor(max_workers=4) as pool:
            outcomes = list(pool.map(lambda p: export.c_store_file(p, dest, ae), files))
        assert [o.error for o in outcomes] == [""] * len(files)
        assert ae.requested_contexts == []
        stored = [p for p in config.store_path.rglob("*.dcm") if INCOMING_DIR_NAME not in p.parts]
        assert len(stored) == len(files)
    finally:
        scp.shutdown(timeout_s=5)
        engine.dispose()
