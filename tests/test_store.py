"""The instance store without the network: durable writes, duplicates, database failures, and
what a late instance does to its study. Every test runs on SQLite and PostgreSQL where the
database takes part."""

from __future__ import annotations

import datetime as dt
import hashlib
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from dicom_helpers import Ids, encode_dataset, us_loop_dataset
from pydicom.uid import ExplicitVRLittleEndian

from pacs_agent.db import make_engine, make_session_factory, upgrade
from pacs_agent.db.models import Instance, Patient, Series, Study
from pacs_agent.dicom.filemeta import encode_file_meta
from pacs_agent.dicom.validate import InstanceHeader, inspect_dataset
from pacs_agent.store import (
    INCOMING_DIR_NAME,
    PARTIAL_SUFFIX,
    InstanceStore,
    OutOfSpaceError,
    check_free_space,
    instance_relative_path,
    open_store,
    store_instance,
)


@pytest.fixture
def engine(database_url: str):
    upgrade(database_url)
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def store(tmp_path: Path) -> InstanceStore:
    return open_store(tmp_path / "store")


def _instance(ids: Ids | None = None, **kwargs) -> tuple[InstanceHeader, list[bytes]]:
    ds = us_loop_dataset(ids or Ids.new(), **kwargs)
    data = encode_dataset(ds, ExplicitVRLittleEndian)
    header = inspect_dataset(
        data, ExplicitVRLittleEndian, str(ds.SOPClassUID), str(ds.SOPInstanceUID)
    )
    meta = encode_file_meta(header.sop_class_uid, header.sop_instance_uid, ExplicitVRLittleEndian)
    return header, [meta, data]


def _files(store: InstanceStore) -> list[Path]:
    return sorted(p for p in store.root.rglob("*.dcm") if INCOMING_DIR_NAME not in p.parts)


def _partials(store: InstanceStore) -> list[Path]:
    return sorted(store.incoming.iterdir())


def _count(engine: sa.Engine, model: type) -> int:
    with sa.orm.Session(engine) as session:
        return int(session.scalar(sa.select(sa.func.count()).select_from(model)) or 0)


def test_stores_once_and_acknowledges_a_repeat(engine: sa.Engine, store: InstanceStore) -> None:
    sessions = make_session_factory(engine)
    header, parts = _instance()
    first = store_instance(store, sessions, header, parts, calling_ae="CART1")
    assert first.stored
    assert first.path.read_bytes() == b"".join(parts)
    assert first.path.relative_to(store.root).as_posix() == instance_relative_path(
        header.study_instance_uid, header.series_instance_uid, header.sop_instance_uid
    )
    again = store_instance(store, sessions, header, parts, calling_ae="CART1")
    assert (again.outcome, again.instance_id, again.path) == (
        "duplicate",
        first.instance_id,
        first.path,
    )
    assert _files(store) == [first.path]
    assert _partials(store) == []
    with sa.orm.Session(engine) as session:
        row = session.scalars(sa.select(Instance)).one()
        assert row.sha256 == hashlib.sha256(b"".join(parts)).hexdigest()
        assert row.file_size_bytes == first.size_bytes == first.path.stat().st_size
        assert (row.calling_ae, row.number_of_frames) == ("CART1", 4)
        assert row.transfer_syntax_uid == ExplicitVRLittleEndian


def test_concurrent_copies_of_one_instance_are_stored_once(
    engine: sa.Engine, store: InstanceStore
) -> None:
    sessions = make_session_factory(engine)
    header, parts = _instance(rows=512, columns=512, frames=16)  # 4 MB: the writes overlap
    barrier = threading.Barrier(6)
    outcomes: list[str] = []
    errors: list[BaseException] = []

    def save() -> None:
        try:
            barrier.wait()
            outcomes.append(store_instance(store, sessions, header, parts).outcome)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=save) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert sorted(outcomes) == ["duplicate"] * 5 + ["stored"]
    assert _count(engine, Instance) == 1
    assert len(_files(store)) == 1
    assert _files(store)[0].read_bytes() == b"".join(parts)
    assert _partials(store) == []


def test_instances_of_one_new_study_arriving_together_share_its_rows(
    engine: sa.Engine, store: InstanceStore
) -> None:
    sessions = make_session_factory(engine)
    study, series = "1.2.826.0.1.3680043.99.1", "1.2.826.0.1.3680043.99.1.1"
    instances = [_instance(Ids.new(study, series)) for _ in range(6)]
    barrier = threading.Barrier(len(instances))
    errors: list[BaseException] = []

    def save(header: InstanceHeader, parts: list[bytes]) -> None:
        try:
            barrier.wait()
            store_instance(store, sessions, header, parts)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=save, args=item) for item in instances]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert (_count(engine, Patient), _count(engine, Study), _count(engine, Series)) == (1, 1, 1)
    assert _count(engine, Instance) == 6


def _make_inserts_fail(engine: sa.Engine) -> None:
    """A real database failure: SQLite refuses the insert, PostgreSQL refuses the commit."""
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.exec_driver_sql(
                "CREATE TRIGGER refuse BEFORE INSERT ON instances "
                "BEGIN SELECT RAISE(ABORT, 'refused by test trigger'); END"
            )
        else:
            conn.exec_driver_sql(
                "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'refused by test trigger'; END $$"
            )
            conn.exec_driver_sql(
                "CREATE CONSTRAINT TRIGGER refuse AFTER INSERT ON instances "
                "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse()"
            )


def test_database_failure_leaves_no_file(engine: sa.Engine, store: InstanceStore) -> None:
    sessions = make_session_factory(engine)
    _make_inserts_fail(engine)
    header, parts = _instance()
    with pytest.raises(sa.exc.SQLAlchemyError, match="refused by test trigger"):
        store_instance(store, sessions, header, parts)
    assert _files(store) == []
    assert _partials(store) == []
    assert _count(engine, Instance) == 0
    assert _count(engine, Study) == 0


def test_late_instance_reopens_its_study(engine: sa.Engine, store: InstanceStore) -> None:
    sessions = make_session_factory(engine)
    ids = Ids.new()
    store_instance(store, sessions, *_instance(ids))
    earlier = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    with sessions.begin() as session:
        session.execute(
            sa.update(Study).values(
                status="complete", last_received_at=earlier, completed_at=earlier
            )
        )
    store_instance(store, sessions, *_instance(Ids.new(ids.study, ids.series)))
    with sessions() as session:
        study = session.scalars(sa.select(Study)).one()
        assert study.status == "receiving"
        assert "complete" in study.status_reason
        assert study.last_received_at.replace(tzinfo=dt.UTC) > earlier


def test_a_repeat_does_not_reopen_or_touch_the_study(
    engine: sa.Engine, store: InstanceStore
) -> None:
    sessions = make_session_factory(engine)
    header, parts = _instance()
    store_instance(store, sessions, header, parts)
    with sessions.begin() as session:
        session.execute(sa.update(Study).values(status="complete"))
    assert store_instance(store, sessions, header, parts).outcome == "duplicate"
    with sessions() as session:
        assert session.scalars(sa.select(Study.status)).one() == "complete"


def test_patients_without_an_id_are_not_merged(engine: sa.Engine, store: InstanceStore) -> None:
    sessions = make_session_factory(engine)
    for name in ("Anon^One", "Anon^Two"):
        store_instance(store, sessions, *_instance(patient_id="", patient_name=name))
    with sessions() as session:
        names = sorted(session.scalars(sa.select(Patient.name)))
    assert names == ["Anon^One", "Anon^Two"]


def test_open_store_removes_partial_files_left_by_a_crash(tmp_path: Path) -> None:
    first = open_store(tmp_path / "store")
    leftover = first.incoming / f"abc{PARTIAL_SUFFIX}"
    leftover.write_bytes(b"half a loop")
    open_store(tmp_path / "store")
    assert not leftover.exists()


def test_free_space_floor(tmp_path: Path) -> None:
    roomy = open_store(tmp_path / "store", min_free_disk_mb=0)
    check_free_space(roomy, 1024)
    full = InstanceStore(roomy.root, min_free_disk_mb=10**9)
    with pytest.raises(OutOfSpaceError, match="min_free_disk_mb"):
        check_free_space(full, 1024)


def test_paths_come_from_uids_and_never_leave_the_store() -> None:
    assert instance_relative_path("1.2.3", "1.2.3.4", "1.2.3.4.5") == "1.2.3/1.2.3.4/1.2.3.4.5.dcm"
    odd = instance_relative_path("../../etc", "/abs", "a b")
    parts = odd.split("/")
    assert len(parts) == 3
    assert all(p.startswith("h") and ".." not in p and "/" not in p for p in parts[:2])
    assert parts[2].endswith(".dcm") and parts[2].startswith("h")


@pytest.mark.parametrize("module", ["pacs_agent.ingest", "pacs_agent.store", "pacs_agent.dicom"])
def test_the_ingest_modules_import_first_in_a_fresh_interpreter(module: str) -> None:
    """``ingest`` and the ``dicom`` package need each other's modules; whichever a script or a
    worker imports first must load (an eager import in the package once made this fail)."""
    done = subprocess.run(
        [sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
