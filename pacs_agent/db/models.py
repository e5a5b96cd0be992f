"""SQLAlchemy 2 models of what the node knows: the DICOM hierarchy it received, the jobs that
analyse it, what it produced and sent, and the reports clinicians sign. Who did what (users,
sessions, login failures, the audit trail, API tokens) is in ``access_models``, re-exported here.

The schema is owned by the Alembic migrations in ``pacs_agent/migrations``; a test checks that
these models and the migrated schema agree on SQLite and PostgreSQL.

States are short strings checked by CHECK constraints rather than database enums, so a new state
is one migration on either backend and rows stay readable with plain SQL.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from llm.types import Verdict

# the access tables live in their own module; imported here so that ``Base.metadata`` (and so
# Alembic and ``create_all``) sees every table, and so that ``db.models`` keeps naming them all
from pacs_agent.db.access_models import (  # noqa: F401 -- re-exported
    API_TOKEN_ROLES,
    USER_ROLES,
    ApiToken,
    AuditEvent,
    LoginFailure,
    RevokedSession,
    User,
)
from pacs_agent.db.base import NAMING_CONVENTION, UID, Base, one_of, utcnow  # noqa: F401
from pacs_agent.states import AttemptState, JobState, ReportState, StudyState

# the stored values of the state machines (``pacs_agent.states``), in the migrations' order
STUDY_STATES = tuple(s.value for s in StudyState)
JOB_STATES = tuple(s.value for s in JobState)
ARTIFACT_KINDS = (
    "seg",
    "sr",
    "secondary_capture",
    "pdf",
    "fhir",
    "overlay_video",
    "rendering",
    "echo_sr",  # TID 5200 Echocardiography Procedure Report (migration 0005)
    "hl7_oru",  # an HL7 v2 ORU^R01 message for one HL7 destination (migration 0005)
)
REPORT_STATES = tuple(s.value for s in ReportState)
EXPORT_STATES = tuple(s.value for s in AttemptState)
GROUNDING_VERDICTS = tuple(v.value for v in Verdict)
CHAT_ROLES = ("user", "assistant")


class Patient(Base):
    """A patient as PACS identifies them: Patient ID within its issuer."""

    __tablename__ = "patients"
    __table_args__ = (UniqueConstraint("patient_id", "issuer", name="uq_patients_id_issuer"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64))
    issuer: Mapped[str] = mapped_column(String(64), default="")
    name: Mapped[str] = mapped_column(String(324), default="")  # PN: 3 groups x 64 + separators
    birth_date: Mapped[dt.date | None]
    sex: Mapped[str] = mapped_column(String(16), default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    studies: Mapped[list[Study]] = relationship(back_populates="patient")


class Study(Base):
    __tablename__ = "studies"
    __table_args__ = (one_of("status", STUDY_STATES),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    patient_fk: Mapped[int] = mapped_column(
        ForeignKey("patients.id", ondelete="RESTRICT"), index=True
    )
    accession_number: Mapped[str] = mapped_column(String(16), default="", index=True)
    study_date: Mapped[dt.date | None]
    study_time: Mapped[str] = mapped_column(String(16), default="")
    description: Mapped[str] = mapped_column(String(64), default="")
    referring_physician: Mapped[str] = mapped_column(String(324), default="")
    status: Mapped[str] = mapped_column(String(16), default="receiving", index=True)
    status_reason: Mapped[str] = mapped_column(Text, default="")
    first_received_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_received_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    completed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))

    patient: Mapped[Patient] = relationship(back_populates="studies")
    series: Mapped[list[Series]] = relationship(back_populates="study")
    jobs: Mapped[list[Job]] = relationship(back_populates="study")
    artifacts: Mapped[list[Artifact]] = relationship(back_populates="study")
    report_versions: Mapped[list[ReportVersion]] = relationship(
        back_populates="study", order_by="ReportVersion.version"
    )


class Series(Base):
    """A series, with the A4C selector's verdict on it (``eligibility`` and the reason)."""

    __tablename__ = "series"
    __table_args__ = (one_of("eligibility", ("pending", "eligible", "not_eligible")),)

    id: Mapped[int] = mapped_column(primary_key=True)
    series_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    study_fk: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    modality: Mapped[str] = mapped_column(String(16), default="")
    series_number: Mapped[int | None]
    description: Mapped[str] = mapped_column(String(64), default="")
    protocol_name: Mapped[str] = mapped_column(String(64), default="")
    eligibility: Mapped[str] = mapped_column(String(16), default="pending")
    not_analysed_reason: Mapped[str] = mapped_column(Text, default="")

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series")


class Instance(Base):
    """One stored SOP instance; ``file_path`` is relative to the instance store root."""

    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    series_fk: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"), index=True)
    instance_number: Mapped[int | None]
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    number_of_frames: Mapped[int] = mapped_column(Integer, default=1)
    file_path: Mapped[str] = mapped_column(String(512))
    file_size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    calling_ae: Mapped[str] = mapped_column(String(16), default="")
    received_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    series: Mapped[Series] = relationship(back_populates="instances")


class QuarantinedInstance(Base):
    """An instance refused because it contradicts what is recorded: its patient is not its
    study's, its series belongs to another study, or its SOP Instance UID is stored for another
    patient or study (``pacs_agent.ingest.Conflict``).

    It belongs to no study: no row links it to one, so nothing analyses or shows it; the file
    is kept byte for byte (``file_path`` is relative to the node's home) for an admin to
    resolve. ``reason`` names what differs, never a value: no PHI in the row.
    """

    __tablename__ = "quarantined_instances"

    id: Mapped[int] = mapped_column(primary_key=True)
    received_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, index=True
    )
    sop_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    study_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    series_instance_uid: Mapped[str] = mapped_column(UID)
    calling_ae: Mapped[str] = mapped_column(String(16), default="")
    reason: Mapped[str] = mapped_column(String(256))
    file_path: Mapped[str] = mapped_column(String(512))
    file_size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))


class Job(Base):
    """A durable unit of work: a small state machine with attempts and back-off.

    ``kind`` "analyze": the analysis of one loop, one job per (study, instance, kind), so a
    job delivered twice finds its own row and produces its outputs once. Delivery kinds
    (``pacs_agent.deliveries``): one artifact to one destination (``artifact_fk``,
    ``destination``), one job per (artifact, destination, kind). Each unique rule leaves rows
    of the other family alone, because NULLs never collide in a unique index.
    """

    __tablename__ = "jobs"
    __table_args__ = (
        one_of("state", JOB_STATES),
        UniqueConstraint("study_fk", "instance_fk", "kind", name="uq_jobs_study_instance_kind"),
        Index("ix_jobs_state_next_attempt_at", "state", "next_attempt_at"),
        # an index, not a constraint: SQLite adds it without rebuilding the table (0004)
        Index(
            "uq_jobs_artifact_destination_kind", "artifact_fk", "destination", "kind", unique=True
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    study_fk: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    instance_fk: Mapped[int | None] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32), default="analyze")
    state: Mapped[str] = mapped_column(String(16), default="received")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str] = mapped_column(Text, default="")
    worker_id: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    # delivery jobs only. No foreign key: SQLite can add one only by rebuilding ``jobs`` (see
    # migration 0004); ``outputs`` deletes an artifact's delivery jobs with the artifact.
    artifact_fk: Mapped[int | None] = mapped_column(Integer)
    destination: Mapped[str | None] = mapped_column(String(256))

    study: Mapped[Study] = relationship(back_populates="jobs")
    analysis: Mapped[Analysis | None] = relationship(back_populates="job")


class Analysis(Base):
    """The measurements one job produced, as the JSON the inference package returns.

    ``demo_models`` travels with the numbers so that every surface showing them can say that
    phantom-trained models made them.
    """

    __tablename__ = "analyses"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_fk: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), unique=True)
    instance_fk: Mapped[int] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"))
    model_preset: Mapped[str] = mapped_column(String(32))
    demo_models: Mapped[bool] = mapped_column(Boolean)
    ef_percent: Mapped[float | None] = mapped_column(Float)
    measurements: Mapped[dict[str, Any]] = mapped_column(JSON)
    # the analysed loop's Patient's Size and Weight when plausible, else NULL
    # (``reporting.body_size``): they index the LV volumes to body surface area
    patient_height_cm: Mapped[float | None] = mapped_column(Float)
    patient_weight_kg: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    job: Mapped[Job] = relationship(back_populates="analysis")


class Artifact(Base):
    """An output object (SEG, SR, secondary capture, PDF, FHIR bundle, rendering) on disk."""

    __tablename__ = "artifacts"
    __table_args__ = (one_of("kind", ARTIFACT_KINDS),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_fk: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    job_fk: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    report_version_fk: Mapped[int | None] = mapped_column(
        ForeignKey("report_versions.id", ondelete="SET NULL")
    )
    kind: Mapped[str] = mapped_column(String(32))
    sop_instance_uid: Mapped[str | None] = mapped_column(UID, unique=True)
    file_path: Mapped[str] = mapped_column(String(512))
    media_type: Mapped[str] = mapped_column(String(128))
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    study: Mapped[Study] = relationship(back_populates="artifacts")
    exports: Mapped[list[ExportAttempt]] = relationship(back_populates="artifact")


class ReportVersion(Base):
    """Every version of a study's report is kept; a signed one is never edited in place."""

    __tablename__ = "report_versions"
    __table_args__ = (
        one_of("status", REPORT_STATES),
        one_of("grounding_verdict", GROUNDING_VERDICTS),
        UniqueConstraint("study_fk", "version", name="uq_report_versions_study_version"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    study_fk: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="draft")
    structured_text: Mapped[str] = mapped_column(Text, default="")
    narrative_text: Mapped[str] = mapped_column(Text, default="")
    grounding_verdict: Mapped[str] = mapped_column(String(16), default="not_checked")
    grounding_reasons: Mapped[list[Any]] = mapped_column(JSON, default=list)
    demo_models: Mapped[bool] = mapped_column(Boolean, default=False)
    author_fk: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    signed_by_fk: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    signed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    amendment_reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    study: Mapped[Study] = relationship(back_populates="report_versions")


class ChatMessage(Base):
    __tablename__ = "chat_messages"
    __table_args__ = (
        one_of("role", CHAT_ROLES),
        Index("ix_chat_messages_study_user", "study_fk", "user_fk", "created_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    study_fk: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"))
    user_fk: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    grounding: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ExportAttempt(Base):
    """One try at sending an artifact to PACS (C-STORE) or the EHR (FHIR)."""

    __tablename__ = "export_attempts"
    __table_args__ = (one_of("state", EXPORT_STATES),)

    id: Mapped[int] = mapped_column(primary_key=True)
    artifact_fk: Mapped[int] = mapped_column(
        ForeignKey("artifacts.id", ondelete="CASCADE"), index=True
    )
    destination: Mapped[str] = mapped_column(String(256))
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    status_code: Mapped[str] = mapped_column(String(32), default="")
    error: Mapped[str] = mapped_column(Text, default="")
    started_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))

    artifact: Mapped[Artifact] = relationship(back_populates="exports")
