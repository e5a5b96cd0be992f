"""Another patient's instance under an existing study is refused and quarantined, never merged
(issue #15, item 1).

A phantom loop is stored for patient A over a real association, assembled and queued as the
node would, and its study marked analysed; then an instance with a new series and SOP UID,
patient B's ID and name, and A's Study Instance UID arrives. Before the fix it was acknowledged,
joined A's study, reopened it and was queued for analysis into A's report. Now it is refused
with a failure status, nothing of it is in the study, the store or the job table, the object
is kept in the quarantine (file and row) for an admin, and the log names no patient. The same
patient spelled differently (padding, case, a missing issuer) is still accepted.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
import sqlalchemy as sa
from dicom_helpers import (
    Ids,
    dataset_bytes,
    encode_dataset,
    send_files,
    us_loop_dataset,
    write_instance,
)
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from running_node import first_a4c_loop
from sqlalchemy.orm import Session, sessionmaker
from web_helpers import login, make_node

from pacs_agent.assembly import assemble, judge_file
from pacs_agent.config import Config, DicomConfig
from pacs_agent.db.models import (
    Instance,
    Job,
    Patient,
    QuarantinedInstance,
    Series,
    Study,
)
from pacs_agent.dicom import StorageSCP, start_storage_scp, status
from pacs_agent.dicom.filemeta import encode_file_meta
from pacs_agent.dicom.validate import InstanceHeader, inspect_dataset
from pacs_agent.identity import (
    BIRTH_DATE_DIFFERS,
    ISSUER_DIFFERS,
    NAME_DIFFERS,
    PATIENT_ID_DIFFERS,
    PatientIdentity,
    identity_conflict,
    normalized_name,
)
from pacs_agent.store import (
    INCOMING_DIR_NAME,
    QUARANTINE_DIR_NAME,
    QuarantinedError,
    open_store,
    store_instance,
)
from web.app import create_app

STABLE_AGE_S = 0.5
SENDER_AE = "TESTPACS"
# patient A (the study's) and patient B (the wrong one); none of these may reach the log
A_ID, A_NAME = "PID-ALPHA-1", "Alphonse^Anna"
B_ID, B_NAME = "PID-BRAVO-2", "Bravissimo^Boris"
PHI = ("PID-ALPHA", "PID-BRAVO", "Alphonse", "Bravissimo", "Anna", "Boris")


@dataclass
class Listener:
    config: Config
    engine: sa.Engine
    sessions: sessionmaker[Session]
    scp: StorageSCP

    def send(self, *files: Path) -> list[int]:
        return send_files(self.scp.host, self.scp.port, list(files), calling_ae=SENDER_AE)

    def count(self, model: type, *where: object) -> int:
        with self.sessions() as session:
            query = sa.select(sa.func.count()).select_from(model).where(*where)
            return int(session.scalar(query) or 0)

    def store_files(self) -> list[Path]:
        root = self.config.store_path
        return sorted(
            p for p in root.rglob("*") if p.is_file() and INCOMING_DIR_NAME not in p.parts
        )

    def quarantine_files(self) -> list[Path]:
        return sorted((self.config.home_path / QUARANTINE_DIR_NAME).glob("*.dcm"))

    def study(self, study_uid: str) -> Study:
        with self.sessions() as session:
            return session.scalars(
                sa.select(Study).where(Study.study_instance_uid == study_uid)
            ).one()


@pytest.fixture
def listener(tmp_path: Path, database_url: str) -> Iterator[Listener]:
    """The node's Storage SCP on a free port, over a migrated database that has web users."""
    node = make_node(tmp_path / "home", database_url)
    config = dataclasses.replace(
        node.config,
        dicom=DicomConfig(port=0, min_free_disk_mb=0, stable_age_s=STABLE_AGE_S),
    )
    scp = start_storage_scp(config, node.engine)
    yield Listener(config, node.engine, node.session_factory, scp)
    scp.shutdown(timeout_s=5)
    node.engine.dispose()


def _as_patient(
    source: Path,
    target: Path,
    patient_id: str,
    name: str,
    *,
    study_uid: str | None = None,
    new_uids: bool = False,
) -> Path:
    """A copy of ``source`` under another patient; with ``new_uids`` a new series and SOP."""
    ds = pydicom.dcmread(source)
    ds.PatientID = patient_id
    ds.PatientName = name
    if study_uid is not None:
        ds.StudyInstanceUID = study_uid
    if new_uids:
        ds.SeriesInstanceUID = generate_uid()
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    target.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(target)
    return target


def _small_loop(tmp_path: Path, name: str, ids: Ids, **patient: str) -> Path:
    return write_instance(tmp_path / f"{name}.dcm", us_loop_dataset(ids, frames=2, **patient))


def _sop(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def test_another_patients_instance_is_refused_quarantined_and_never_analysed(
    listener: Listener,
    phantom_studies: list[Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = first_a4c_loop(phantom_studies)
    first = _as_patient(loop, tmp_path / "sent" / "a.dcm", A_ID, A_NAME)
    study_uid = str(pydicom.dcmread(first, stop_before_pixels=True).StudyInstanceUID)
    with caplog.at_level(logging.DEBUG):
        assert listener.send(first) == [status.SUCCESS]
        received = listener.study(study_uid).last_received_at
        judge = judge_file(listener.config, classifier=None)
        now = received.replace(tzinfo=dt.UTC) + dt.timedelta(seconds=STABLE_AGE_S)
        (first_job,) = assemble(listener.sessions, listener.config, judge, now).queued_job_ids
        with listener.sessions.begin() as session:  # analysed, a preliminary report drafted
            session.execute(sa.update(Study).values(status="drafted"))

        wrong = _as_patient(loop, tmp_path / "sent" / "b.dcm", B_ID, B_NAME, new_uids=True)
        header = pydicom.dcmread(wrong, stop_before_pixels=True)
        wrong_sop, wrong_series = str(header.SOPInstanceUID), str(header.SeriesInstanceUID)
        assert header.StudyInstanceUID == study_uid

        (answer,) = listener.send(wrong)
        assert answer == status.PATIENT_CONFLICT
        assert 0xC000 <= answer <= 0xCFFF  # a failure: the sender must not count it as stored

        # nothing joined the study: no rows, no file, the study not reopened
        assert listener.count(Instance, Instance.sop_instance_uid == wrong_sop) == 0
        assert listener.count(Series, Series.series_instance_uid == wrong_series) == 0
        assert listener.count(Patient, Patient.patient_id == B_ID) == 0
        assert listener.count(Instance) == 1
        study = listener.study(study_uid)
        assert (study.status, study.last_received_at) == ("drafted", received)
        assert [p.name for p in listener.store_files()] == [f"{_sop(first)}.dcm"]

        # and no analysis of it, now or on the assembler's later passes
        later = now + dt.timedelta(hours=1)
        assert assemble(listener.sessions, listener.config, judge, later).queued_job_ids == ()
        with listener.sessions() as session:
            jobs = session.execute(
                sa.select(Job.id, Instance.sop_instance_uid).join(
                    Instance, Instance.id == Job.instance_fk
                )
            ).all()
        assert [tuple(j) for j in jobs] == [(first_job, _sop(first))]

        # kept in the quarantine, byte for byte, with a row an admin can act on
        with listener.sessions() as session:
            entry = session.scalars(sa.select(QuarantinedInstance)).one()
        assert (entry.sop_instance_uid, entry.study_instance_uid, entry.series_instance_uid) == (
            wrong_sop,
            study_uid,
            wrong_series,
        )
        assert (entry.calling_ae, entry.reason) == (SENDER_AE, PATIENT_ID_DIFFERS)
        kept = listener.config.home_path / entry.file_path
        assert listener.quarantine_files() == [kept]
        assert dataset_bytes(kept) == dataset_bytes(wrong)
        assert entry.file_size_bytes == kept.stat().st_size

        # a sender that retries is refused again without a second copy
        assert listener.send(wrong) == [status.PATIENT_CONFLICT]
        assert listener.count(QuarantinedInstance) == 1
        assert listener.quarantine_files() == [kept]

    ours = [r for r in caplog.records if r.name.startswith("echo_agent")]
    refusals = [r.getMessage() for r in ours if wrong_sop in r.getMessage()]
    assert refusals and all("quarantine" in m for m in refusals)
    assert all(PATIENT_ID_DIFFERS in m for m in refusals)
    logged = "\n".join(r.getMessage() for r in caplog.records).casefold()  # pynetdicom too
    assert not [word for word in PHI if word.casefold() in logged]


def test_the_same_patient_written_differently_joins_the_study(
    listener: Listener, tmp_path: Path
) -> None:
    study = Ids.new()
    files = [
        _small_loop(tmp_path, "first", study, patient_id=A_ID, patient_name=A_NAME),
        # LO padding is not significant: the same Patient ID with trailing spaces
        _small_loop(
            tmp_path, "padded", Ids.new(study.study), patient_id=f"{A_ID}  ", patient_name=A_NAME
        ),
        # the same ID under a name typed in other case with caret padding
        _small_loop(
            tmp_path,
            "upper",
            Ids.new(study.study),
            patient_id=A_ID,
            patient_name=f"{A_NAME.upper()}^^",
        ),
    ]
    with_issuer = us_loop_dataset(
        Ids.new(study.study), frames=2, patient_id=A_ID, patient_name=A_NAME
    )
    with_issuer.IssuerOfPatientID = "HOSPITAL-A"  # one sender fills the issuer, one does not
    files.append(write_instance(tmp_path / "issuer.dcm", with_issuer))
    assert listener.send(*files) == [status.SUCCESS] * 4
    assert listener.count(Instance) == 4
    assert listener.count(Patient) == 1  # no orphan patient row for the issuer variant
    assert listener.count(QuarantinedInstance) == 0
    assert listener.quarantine_files() == []


def test_instances_of_two_patients_racing_into_one_new_study_are_never_merged(
    listener: Listener, tmp_path: Path
) -> None:
    """Whichever patient's instance creates the study, the other's are quarantined: the check
    inside the recording transaction sees a study another association just created."""
    store = open_store(listener.config.store_path, data_dir=listener.config.home_path)
    study = Ids.new()
    jobs: list[tuple[InstanceHeader, list[bytes]]] = []
    for n in range(6):
        patient_id, name = (A_ID, A_NAME) if n % 2 else (B_ID, B_NAME)
        ds = us_loop_dataset(
            Ids.new(study.study), frames=2, patient_id=patient_id, patient_name=name
        )
        data = encode_dataset(ds, ExplicitVRLittleEndian)
        header = inspect_dataset(
            data, ExplicitVRLittleEndian, str(ds.SOPClassUID), str(ds.SOPInstanceUID)
        )
        meta = encode_file_meta(
            header.sop_class_uid, header.sop_instance_uid, ExplicitVRLittleEndian
        )
        jobs.append((header, [meta, data]))
    barrier = threading.Barrier(len(jobs))
    outcomes: dict[str, str] = {}
    errors: list[BaseException] = []

    def save(header: InstanceHeader, parts: list[bytes]) -> None:
        try:
            barrier.wait()
            store_instance(store, listener.sessions, header, parts, SENDER_AE)
            outcomes[header.patient_id] = outcomes.get(header.patient_id, "") + "s"
        except QuarantinedError:
            outcomes[header.patient_id] = outcomes.get(header.patient_id, "") + "q"
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=save, args=job) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert sorted(outcomes.values()) == ["qqq", "sss"], outcomes
    assert listener.count(Patient) == 1
    assert listener.count(Instance) == 3
    assert listener.count(QuarantinedInstance) == 3
    assert len(listener.quarantine_files()) == 3
    assert list(store.quarantine.glob("*.partial")) == []


def test_the_quarantine_is_listed_for_admins_only(listener: Listener, tmp_path: Path) -> None:
    study = Ids.new()
    good = _small_loop(tmp_path, "a", study, patient_id=A_ID, patient_name=A_NAME)
    wrong_ids = Ids.new(study.study)
    wrong = _small_loop(tmp_path, "b", wrong_ids, patient_id=B_ID, patient_name=B_NAME)
    assert listener.send(good, wrong) == [status.SUCCESS, status.PATIENT_CONFLICT]

    app = create_app(listener.engine, listener.config)
    admin = app.test_client()
    login(admin, "admin")
    (entry,) = admin.get("/api/quarantine").get_json()["entries"]
    assert entry["sop_instance_uid"] == wrong_ids.sop
    assert entry["study_instance_uid"] == study.study
    assert (entry["calling_ae"], entry["reason"]) == (SENDER_AE, PATIENT_ID_DIFFERS)
    assert entry["received_at"] and entry["study_id"] == listener.study(study.study).id
    page = admin.get("/admin/quarantine")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert wrong_ids.sop in html and PATIENT_ID_DIFFERS.replace("'", "&#39;") in html
    assert SENDER_AE in html
    assert not [word for word in PHI if word in html]

    for user in ("cardio", "sono"):
        client = app.test_client()
        login(client, user)
        assert client.get("/api/quarantine").status_code == 403
        assert client.get("/admin/quarantine").status_code == 403
        assert "Quarantine" not in client.get("/").get_data(as_text=True)
    assert app.test_client().get("/api/quarantine").status_code == 401


# --- the identity rule on its own ------------------------------------------------------------

D1, D2 = dt.date(1960, 5, 1), dt.date(1971, 2, 3)


@pytest.mark.parametrize(
    ("study", "incoming", "expected"),
    [
        # IDs on both sides decide; the name does not
        (
            PatientIdentity("123", "", "Doe^Jane", D1),
            PatientIdentity("123", "", "Roe^Rick", D2),
            None,
        ),
        (PatientIdentity("123"), PatientIdentity("124"), PATIENT_ID_DIFFERS),
        (PatientIdentity("123 "), PatientIdentity(" 123"), None),  # LO padding
        (PatientIdentity("abc"), PatientIdentity("ABC"), PATIENT_ID_DIFFERS),  # IDs keep case
        (PatientIdentity("123", "HOSP"), PatientIdentity("123", ""), None),  # issuer left out
        (PatientIdentity("123", ""), PatientIdentity("123", "HOSP"), None),
        (PatientIdentity("123", "HOSP"), PatientIdentity("123", "hosp "), None),
        (PatientIdentity("123", "HOSP-A"), PatientIdentity("123", "HOSP-B"), ISSUER_DIFFERS),
        # the node's own issuer for an ID-less patient is not a sender's issuer
        (
            PatientIdentity("", "NOID:ab12", "Doe^Jane", D1),
            PatientIdentity("", "", "DOE^JANE^^", D1),
            None,
        ),
        # without an ID on one side: name and birth date decide
        (
            PatientIdentity("", "", "Doe^Jane", D1),
            PatientIdentity("", "", "Roe^Rick", D1),
            NAME_DIFFERS,
        ),
        (
            PatientIdentity("123", "", "Doe^Jane", D1),
            PatientIdentity("", "", "Roe^Rick", D1),
            NAME_DIFFERS,
        ),
        (
            PatientIdentity("", "", "Doe^Jane", D1),
            PatientIdentity("123", "", "doe ^ jane", D1),
            None,
        ),
        (
            PatientIdentity("", "", "Doe^Jane", D1),
            PatientIdentity("", "", "Doe^Jane", D2),
            BIRTH_DATE_DIFFERS,
        ),
        (PatientIdentity("", "", "Doe^Jane", None), PatientIdentity("", "", "Doe^Jane", D2), None),
        # nothing to compare contradicts nothing
        (PatientIdentity("", "", "Doe^Jane", D1), PatientIdentity(), None),
        (PatientIdentity(), PatientIdentity("", "", "Doe^Jane", D1), None),
    ],
)
def test_identity_conflict(
    study: PatientIdentity, incoming: PatientIdentity, expected: str | None
) -> None:
    assert identity_conflict(study, incoming) == expected


def test_reasons_and_reprs_carry_no_patient_data() -> None:
    a = PatientIdentity("SECRET-ID", "ISSUER", "Secret^Name", D1)
    b = PatientIdentity("OTHER-ID", "ISSUER", "Other^Name", D2)
    reason = identity_conflict(a, b)
    assert reason == PATIENT_ID_DIFFERS
    for text in (reason, repr(a), repr(b)):
        assert "SECRET" not in text.upper() and "OTHER-ID" not in text and "1960" not in text


@pytest.mark.parametrize(
    ("name", "normal"),
    [
        ("Doe^Jane", "doe^jane"),
        ("DOE^JANE^^^", "doe^jane"),
        (" Doe ^ Jane ", "doe^jane"),
        ("Doe^Jane=", "doe^jane"),
        ("Yamada^Tarou=山田^太郎=やまだ^たろう", "yamada^tarou=山田^太郎=やまだ^たろう"),
        ("", ""),
        ("^^", ""),
    ],
)
def test_person_names_compare_without_padding_or_case(name: str, normal: str) -> None:
    assert normalized_name(name) == normal
