"""Records a received instance in the database: its patient, study, series and instance rows.

Several associations ingest at once, on SQLite and on PostgreSQL. Parent rows are created with
``INSERT ... ON CONFLICT DO NOTHING`` so two instances of a new study arriving together both
find the one study row; the instance row itself is a plain insert, so a second copy of the same
SOP instance fails on the unique constraint and the caller treats it as a duplicate.

An instance that contradicts what is already recorded is never recorded (``ConflictError``,
with a ``kind``); it would otherwise be analysed into another patient's or study's report:

* "patient": its patient identity conflicts with the patient its study was first received
  under (rules in ``pacs_agent.identity``).
* "series": its Series Instance UID is already recorded under another study. A series belongs
  to exactly one study (PS3.3 A.1.2.3), so this is a conflict even when the patient is the
  same: filing the instance into that series would move it into the other study, and filing it
  into a second series row with the same UID is impossible (the UID is unique).
* "instance": its SOP Instance UID is already stored, under another patient or another study.
  That is not a resend of the same object, so it is not acknowledged as a duplicate. A resend
  under the same study and patient stays a duplicate, even in another series (logged): the
  first copy is kept and no other patient or study is touched.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from pacs_agent.db.models import Instance, Patient, Series, Study, utcnow
from pacs_agent.dicom.validate import InstanceHeader
from pacs_agent.errors import EchoAgentError
from pacs_agent.identity import NODE_ISSUER_PREFIX, PatientIdentity, identity_conflict
from pacs_agent.states import StudyState, study_transition

log = logging.getLogger("echo_agent.ingest")

RECEIVING = StudyState.RECEIVING
# Patient ID is type 2 (present, may be empty). Instances without one are kept apart per study
# instead of merging every anonymous patient into one record.
NO_PATIENT_ID_ISSUER_PREFIX = NODE_ISSUER_PREFIX


# Reasons name what is wrong, never a value: they go to the log and the quarantine list.
SERIES_IN_ANOTHER_STUDY = "Series Instance UID belongs to another study"
SOP_INSTANCE_ELSEWHERE = "SOP Instance UID already stored for another patient/study"

ConflictKind = Literal["patient", "series", "instance"]


@dataclass(frozen=True)
class Conflict:
    """Why an instance cannot be recorded: which rule (``kind``) and a reason without PHI."""

    kind: ConflictKind
    reason: str


class ConflictError(EchoAgentError):
    """The instance contradicts what is recorded (see the module); nothing of it is recorded."""

    def __init__(self, conflict: Conflict) -> None:
        super().__init__(conflict.reason)
        self.conflict = conflict


@dataclass(frozen=True)
class StoredFile:
    """A file the store holds for an instance; ``relative_path`` is relative to the store root."""

    relative_path: str
    size_bytes: int
    sha256: str


def find_instance(session: Session, sop_instance_uid: str) -> Instance | None:
    return session.scalars(
        select(Instance).where(Instance.sop_instance_uid == sop_instance_uid)
    ).one_or_none()


def new_instance_conflict(session: Session, header: InstanceHeader) -> Conflict | None:
    """Why a not yet stored instance cannot join its known study or series (None: it can).

    A cheap look before anything is written; ``record_instance`` checks again inside its
    transaction, where a study or series created meanwhile by another association is seen too.
    """
    patient_fk = session.scalar(
        select(Study.patient_fk).where(Study.study_instance_uid == header.study_instance_uid)
    )
    if patient_fk is not None:
        reason = _patient_conflict(session, header, patient_fk)
        if reason is not None:
            return Conflict("patient", reason)
    series_study_uid = session.scalar(
        select(Study.study_instance_uid)
        .join(Series, Series.study_fk == Study.id)
        .where(Series.series_instance_uid == header.series_instance_uid)
    )
    if series_study_uid is not None and series_study_uid != header.study_instance_uid:
        return Conflict("series", SERIES_IN_ANOTHER_STUDY)
    return None


def resend_conflict(
    session: Session, existing: Instance, header: InstanceHeader
) -> Conflict | None:
    """Why an instance whose SOP Instance UID is ``existing``'s is not a resend of it.

    None: it names the same study and a patient that may be the study's (the identity rules),
    so it is a duplicate. Another series under the same study is only logged: the stored copy
    stays where it is and nothing of another patient or study is touched.
    """
    stored = session.execute(
        select(Study.study_instance_uid, Study.patient_fk, Series.series_instance_uid)
        .join(Series, Series.study_fk == Study.id)
        .where(Series.id == existing.series_fk)
    ).one()
    if stored.study_instance_uid != header.study_instance_uid:
        return Conflict("instance", SOP_INSTANCE_ELSEWHERE)
    if _patient_conflict(session, header, stored.patient_fk) is not None:
        return Conflict("instance", SOP_INSTANCE_ELSEWHERE)
    if stored.series_instance_uid != header.series_instance_uid:
        log.warning(
            "SOP instance %s received again under another series of its study; "
            "the first copy is kept",
            header.sop_instance_uid,
        )
    return None


def record_instance(
    session: Session,
    header: InstanceHeader,
    stored: StoredFile,
    calling_ae: str,
    now: dt.datetime | None = None,
) -> Instance:
    """Adds the instance and whatever parent rows are missing, and flushes (does not commit).

    Raises ``sqlalchemy.exc.IntegrityError`` when the SOP instance is already recorded, and
    ``ConflictError`` (the caller rolls back) when the study belongs to a patient the instance
    is not ("patient") or the series to another study ("series"). A study that was past
    "receiving" goes back to "receiving", so that assembly reopens it.
    """
    now = now or utcnow()
    # an instance of a known study joins the study's patient: a second patient row for the
    # same person (an issuer one sender leaves out) would only be an orphan
    known = session.scalar(
        select(Study.patient_fk).where(Study.study_instance_uid == header.study_instance_uid)
    )
    patient_fk = known if known is not None else _ensure_patient(session, header, now)
    study_fk = _ensure_study(session, header, patient_fk, now)
    series_fk = _ensure_series(session, header, study_fk)
    instance = Instance(
        sop_instance_uid=header.sop_instance_uid,
        sop_class_uid=header.sop_class_uid,
        series_fk=series_fk,
        instance_number=header.instance_number,
        transfer_syntax_uid=header.transfer_syntax_uid,
        number_of_frames=header.number_of_frames,
        file_path=stored.relative_path,
        file_size_bytes=stored.size_bytes,
        sha256=stored.sha256,
        calling_ae=calling_ae[:16],
        received_at=now,
    )
    session.add(instance)
    session.flush()
    return instance


def patient_key(header: InstanceHeader) -> tuple[str, str]:
    """(patient_id, issuer) as stored; an empty Patient ID gets an issuer unique to its study."""
    patient_id = _fit(header.patient_id, 64)
    if patient_id:
        return patient_id, _fit(header.issuer_of_patient_id, 64)
    digest = hashlib.sha256(header.study_instance_uid.encode()).hexdigest()[:32]
    return "", NO_PATIENT_ID_ISSUER_PREFIX + digest


def _ensure_patient(session: Session, header: InstanceHeader, now: dt.datetime) -> int:
    patient_id, issuer = patient_key(header)
    values = {
        "patient_id": patient_id,
        "issuer": issuer,
        "name": _fit(header.patient_name, 324),
        "birth_date": header.patient_birth_date,
        "sex": _fit(header.patient_sex, 16),
        "created_at": now,
    }
    session.execute(
        _insert(session, Patient)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["patient_id", "issuer"])
    )
    return session.scalars(
        select(Patient.id).where(Patient.patient_id == patient_id, Patient.issuer == issuer)
    ).one()


def _ensure_study(
    session: Session, header: InstanceHeader, patient_fk: int, now: dt.datetime
) -> int:
    uid = header.study_instance_uid
    values = {
        "study_instance_uid": uid,
        "patient_fk": patient_fk,
        "accession_number": _fit(header.accession_number, 16),
        "study_date": header.study_date,
        "study_time": _fit(header.study_time, 16),
        "description": _fit(header.study_description, 64),
        "referring_physician": _fit(header.referring_physician, 324),
        "status": study_transition(None, RECEIVING),
        "status_reason": "",
        "first_received_at": now,
        "last_received_at": now,
    }
    session.execute(
        _insert(session, Study)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["study_instance_uid"])
    )
    row = session.execute(
        select(Study.id, Study.status, Study.patient_fk).where(Study.study_instance_uid == uid)
    ).one()
    # before the study is touched: a refused instance must not reopen it either
    reason = _patient_conflict(session, header, row.patient_fk)
    if reason is not None:
        raise ConflictError(Conflict("patient", reason))
    changes: dict[str, Any] = {"last_received_at": now}
    if row.status != RECEIVING:
        changes.update(
            status=study_transition(row.status, RECEIVING),
            status_reason=f"reopened: instance after '{row.status}'",
        )
        log.info(
            "study %s reopened by instance %s (was %s)", uid, header.sop_instance_uid, row.status
        )
    session.execute(update(Study).where(Study.id == row.id).values(**changes))
    return int(row.id)


def _patient_conflict(session: Session, header: InstanceHeader, patient_fk: int) -> str | None:
    patient = session.execute(
        select(Patient.patient_id, Patient.issuer, Patient.name, Patient.birth_date).where(
            Patient.id == patient_fk
        )
    ).one()
    return identity_conflict(
        PatientIdentity(patient.patient_id, patient.issuer, patient.name, patient.birth_date),
        # cut as the patient row stores them, so a long value compares with its stored self
        PatientIdentity(
            _fit(header.patient_id, 64),
            _fit(header.issuer_of_patient_id, 64),
            _fit(header.patient_name, 324),
            header.patient_birth_date,
        ),
    )


def _ensure_series(session: Session, header: InstanceHeader, study_fk: int) -> int:
    uid = header.series_instance_uid
    values = {
        "series_instance_uid": uid,
        "study_fk": study_fk,
        "modality": _fit(header.modality, 16),
        "series_number": header.series_number,
        "description": _fit(header.series_description, 64),
        "protocol_name": _fit(header.protocol_name, 64),
        "eligibility": "pending",
        "not_analysed_reason": "",
    }
    session.execute(
        _insert(session, Series)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["series_instance_uid"])
    )
    row = session.execute(
        select(Series.id, Series.study_fk).where(Series.series_instance_uid == uid)
    ).one()
    if row.study_fk != study_fk:
        # a series spans no studies, whoever the patient: never file it into the other study
        raise ConflictError(Conflict("series", SERIES_IN_ANOTHER_STUDY))
    return int(row.id)


def _insert(session: Session, model: type[Any]) -> Any:
    """The dialect's INSERT, which has ON CONFLICT; the node runs on SQLite and PostgreSQL."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(model)
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(model)
    raise RuntimeError(f"database dialect {dialect!r} is not supported (SQLite or PostgreSQL)")


def _fit(text: str, max_chars: int) -> str:
    # PostgreSQL refuses over-long strings; a non-conformant value must not lose the instance
    return text[:max_chars]
