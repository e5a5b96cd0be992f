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
from pacs_agent.ingest import SERIES_IN_ANOTHER_STUDY, SOP_INSTANCE_ELSEWHERE
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


def _encoded(ds: pydicom.Dataset) -> tuple[InstanceHeader, list[bytes]]:
    """The header and file parts ``store_instance`` gets from the listener for ``ds``."""
    data = encode_dataset(ds, ExplicitVRLittleEndian)
    header = inspect_dataset(
        data, ExplicitVRLittleEndian, str(ds.SOPClassUID), str(ds.SOPInstanceUID)
    )
    meta = encode_file_meta(header.sop_class_uid, header.sop_instance_uid, ExplicitVRLittleEndian)
    return header, [meta, data]


def _store_all_at_once(listener: Listener, datasets: list[pydicom.Dataset]) -> list[str]:
    """Stores the datasets from one thread each, released together; per dataset "stored" or
    the kind of conflict it was quarantined for."""
    store = open_store(listener.config.store_path, data_dir=listener.config.home_path)
    jobs = [_encoded(ds) for ds in datasets]
    barrier = threading.Barrier(len(jobs))
    outcomes = [""] * len(jobs)
    errors: list[BaseException] = []

    def save(n: int) -> None:
        header, parts = jobs[n]
        try:
            barrier.wait()
            store_instance(store, listener.sessions, header, parts, SENDER_AE)
            outcomes[n] = "stored"
        except QuarantinedError as exc:
            outcomes[n] = exc.kind
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=save, args=(n,)) for n in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert list(store.quarantine.glob("*.partial")) == []
    return outcomes


def test_instances_of_two_patients_racing_into_one_new_study_are_never_merged(
    listener: Listener, tmp_path: Path
) -> None:
    """Whichever patient's instance creates the study, the other's are quarantined: the check
    inside the recording transaction sees a study another association just created."""
    study = Ids.new()
    patients = [(A_ID, A_NAME) if n % 2 else (B_ID, B_NAME) for n in range(6)]
    datasets = [
        us_loop_dataset(Ids.new(study.study), frames=2, patient_id=patient_id, patient_name=name)
        for patient_id, name in patients
    ]
    outcomes = _store_all_at_once(listener, datasets)
    by_patient = {
        patient_id: sorted(
            o for (p, _), o in zip(patients, outcomes, strict=True) if p == patient_id
        )
        for patient_id in (A_ID, B_ID)
    }
    assert sorted(by_patient.values()) == [["patient"] * 3, ["stored"] * 3], outcomes
    assert listener.count(Patient) == 1
    assert listener.count(Instance) == 3
    assert listener.count(QuarantinedInstance) == 3
    assert len(listener.quarantine_files()) == 3


@pytest.mark.parametrize(
    ("patient_id", "name"), [(A_ID, A_NAME), (B_ID, B_NAME)], ids=["same", "other"]
)
def test_an_instance_of_a_new_study_in_another_studys_series_is_refused(
    listener: Listener, tmp_path: Path, patient_id: str, name: str
) -> None:
    """A series belongs to one study: a new Study UID with a known Series UID is quarantined
    whoever the patient is, and neither the new study nor the series' study gains anything."""
    first = Ids.new()
    stored = _small_loop(tmp_path, "a", first, patient_id=A_ID, patient_name=A_NAME)
    assert listener.send(stored) == [status.SUCCESS]
    before = listener.study(first.study)

    intruder = Ids.new(series=first.series)  # a new study, the first study's series
    wrong = _small_loop(tmp_path, "b", intruder, patient_id=patient_id, patient_name=name)
    assert listener.send(wrong) == [status.SERIES_CONFLICT]
    assert 0xC000 <= status.SERIES_CONFLICT <= 0xCFFF

    assert listener.count(Study, Study.study_instance_uid == intruder.study) == 0
    assert listener.count(Instance, Instance.sop_instance_uid == intruder.sop) == 0
    assert (listener.count(Study), listener.count(Series), listener.count(Instance)) == (1, 1, 1)
    assert listener.count(Patient) == 1
    after = listener.study(first.study)
    assert (after.status, after.last_received_at) == (before.status, before.last_received_at)
    assert [p.name for p in listener.store_files()] == [f"{first.sop}.dcm"]
    with listener.sessions() as session:
        entry = session.scalars(sa.select(QuarantinedInstance)).one()
    assert (entry.sop_instance_uid, entry.study_instance_uid, entry.series_instance_uid) == (
        intruder.sop,
        intruder.study,
        first.series,
    )
    assert entry.reason == SERIES_IN_ANOTHER_STUDY
    assert listener.quarantine_files() == [listener.config.home_path / entry.file_path]
    # a second instance of the first study in that series still joins it
    more = _small_loop(tmp_path, "c", Ids.new(first.study, first.series), patient_id=A_ID)
    assert listener.send(more) == [status.SUCCESS]
    assert (listener.count(Series), listener.count(Instance)) == (1, 2)


def test_new_studies_racing_into_one_series_leave_it_in_one_study(
    listener: Listener,
) -> None:
    """The check inside the recording transaction sees a series another association has just
    filed under its own new study."""
    series = generate_uid()
    datasets = [
        us_loop_dataset(Ids.new(series=series), frames=2, patient_id=A_ID, patient_name=A_NAME)
        for _ in range(4)
    ]
    outcomes = _store_all_at_once(listener, datasets)
    assert sorted(outcomes) == ["series", "series", "series", "stored"], outcomes
    assert (listener.count(Study), listener.count(Series), listener.count(Instance)) == (1, 1, 1)
    with listener.sessions() as session:
        reasons = session.scalars(sa.select(QuarantinedInstance.reason)).all()
    assert reasons == [SERIES_IN_ANOTHER_STUDY] * 3
    assert len(listener.quarantine_files()) == 3


def test_a_stored_sop_instance_resent_for_another_patient_or_study_is_refused(
    listener: Listener, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An identical resend (the same patient, however padded) is a duplicate as before; the
    same SOP Instance UID under another patient or study is quarantined, and the stored copy,
    its row and its study stay as they were."""
    ids = Ids.new()
    stored = _small_loop(tmp_path, "a", ids, patient_id=A_ID, patient_name=A_NAME)
    assert listener.send(stored) == [status.SUCCESS]
    (kept_file,) = listener.store_files()
    kept_bytes = kept_file.read_bytes()
    study_before = listener.study(ids.study)

    padded = _small_loop(tmp_path, "a2", ids, patient_id=f"{A_ID} ", patient_name=A_NAME.upper())
    other_patient = _small_loop(tmp_path, "b", ids, patient_id=B_ID, patient_name=B_NAME)
    moved = Ids(generate_uid(), generate_uid(), ids.sop)  # same patient, another study
    other_study = _small_loop(tmp_path, "c", moved, patient_id=A_ID, patient_name=A_NAME)
    with caplog.at_level(logging.DEBUG):
        statuses = listener.send(stored, padded, other_patient, other_study, other_patient)
    assert statuses == [
        status.SUCCESS,
        status.SUCCESS,
        status.INSTANCE_CONFLICT,
        status.INSTANCE_CONFLICT,
        status.INSTANCE_CONFLICT,  # a retry: refused again, no second copy
    ]
    assert 0xC000 <= status.INSTANCE_CONFLICT <= 0xCFFF

    assert listener.store_files() == [kept_file]
    assert kept_file.read_bytes() == kept_bytes
    assert (listener.count(Study), listener.count(Series), listener.count(Instance)) == (1, 1, 1)
    assert listener.count(Patient) == 1
    with listener.sessions() as session:
        row = session.scalars(sa.select(Instance)).one()
        assert row.series.series_instance_uid == ids.series
    study = listener.study(ids.study)
    assert (study.status, study.last_received_at) == (
        study_before.status,
        study_before.last_received_at,
    )
    with listener.sessions() as session:
        entries = session.scalars(
            sa.select(QuarantinedInstance).order_by(QuarantinedInstance.id)
        ).all()
    assert [(e.study_instance_uid, e.reason) for e in entries] == [
        (ids.study, SOP_INSTANCE_ELSEWHERE),
        (moved.study, SOP_INSTANCE_ELSEWHERE),
    ]
    assert listener.quarantine_files() == sorted(
        listener.config.home_path / e.file_path for e in entries
    )
    assert dataset_bytes(listener.quarantine_files()[0]) in (
        dataset_bytes(other_patient),
        dataset_bytes(other_study),
    )
    logged = "\n".join(r.getMessage() for r in caplog.records).casefold()
    assert not [word for word in PHI if word.casefold() in logged]


def test_one_sop_instance_racing_in_under_several_studies_is_stored_once(
    listener: Listener,
) -> None:
    """Whichever copy is recorded first, the others (another study each) are not taken for
    duplicates when their insert meets the stored row: they are quarantined."""
    sop = generate_uid()
    datasets = [
        us_loop_dataset(Ids(generate_uid(), generate_uid(), sop), frames=2, patient_id=A_ID)
        for _ in range(4)
    ]
    outcomes = _store_all_at_once(listener, datasets)
    assert sorted(outcomes) == ["instance", "instance", "instance", "stored"], outcomes
    assert (listener.count(Study), listener.count(Series), listener.count(Instance)) == (1, 1, 1)
    assert listener.count(QuarantinedInstance) == 3


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
