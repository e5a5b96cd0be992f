"""HL7 v2 results to the ``[[hl7_destinations]]``: one stored ORU^R01 per report version and
destination, sent over MLLP by a ``deliver_hl7`` job (``pacs_agent.deliveries``).

The message is built once, when its report version comes to be: the preliminary one (result
status P) by the analysis, the final one (F) at sign-off with the signature time as message
time, an amendment (C) likewise. Each destination gets a message of its own, because MSH-5/6
name the receiver (``receiving_application`` / ``receiving_facility``). The text is stored as
an ``hl7_oru`` artifact and every try sends those bytes as they are: a resend after a lost ACK
carries the same control id (MSH-10), so the receiver can see it is a duplicate. The filler
order number is the Study Instance UID, so P, F and C of one study update one result there.

Every try is one ``ExportAttempt`` row whose destination is ``hl7:<name>`` (as C-STORE and
FHIR record theirs); the status code is the ACK code. AA (or CA) delivers; AE, no answer, a
timeout or an ACK for another message are retried with the ``[export]`` back-off up to its
``max_attempts``; AR (or CR) fails at once, since the same bytes would be rejected again.

Only the study's current message is sent: a preliminary one while no version is signed, a
signed one while its version is the latest. A preliminary try that was waiting out its
back-off when the report was signed ends unsent, so the receiver never gets P after F, nor F
after C.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from inference.types import Measurements
from pacs_agent.attempts import DestinationStatus, RetryPolicy, Sent, send_once, standing
from pacs_agent.config import Config, Hl7DestinationConfig
from pacs_agent.db.models import Artifact, ExportAttempt, Job, ReportVersion, utcnow
from pacs_agent.export import artifact_path
from pacs_agent.hl7_mllp import REJECTED, RETRYABLE, send_oru
from pacs_agent.jobs import KIND_DELIVER_HL7, Backoff
from pacs_agent.states import SIGNED_REPORT_STATES
from reporting.hl7_oru import build_oru
from reporting.types import Algorithms, DraftReport, SourceLoop

log = logging.getLogger("echo_agent.hl7_delivery")

ARTIFACT_KIND = "hl7_oru"
HL7_MEDIA_TYPE = "application/hl7-v2"  # ER7 text, segments ended by CR, UTF-8
DESTINATION_PREFIX = "hl7:"
LOCAL_PROBLEM = "local"  # status code of a try that never reached the network (no file)
SIGNED_STATES = SIGNED_REPORT_STATES


@dataclass(frozen=True)
class WrittenMessage:
    """One stored ORU^R01: the ``[[hl7_destinations]]`` name it is for and its file."""

    destination: str
    path: Path
    sha256: str


def destination_name(dest: Hl7DestinationConfig) -> str:
    """What ``Job.destination`` and ``ExportAttempt.destination`` hold for ``dest``."""
    return f"{DESTINATION_PREFIX}{dest.name}"


def configured(config: Config, destination: str) -> Hl7DestinationConfig | None:
    """The ``[[hl7_destinations]]`` entry behind an ``hl7:<name>`` destination, if any."""
    return next((d for d in config.hl7_destinations if destination_name(d) == destination), None)


def message_file_name(dest: Hl7DestinationConfig, prefix: str = "oru") -> str:
    """A file name per destination: the name made safe for a path, and a short digest of
    the exact name so two names that read alike never share a file."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", dest.name).strip("._") or "destination"
    digest = hashlib.sha256(dest.name.encode("utf-8")).hexdigest()[:8]
    return f"{prefix}_{safe[:40]}_{digest}.hl7"


def write_messages(
    folder: Path,
    config: Config,
    source: SourceLoop,
    measurements: Measurements,
    algorithms: Algorithms,
    report: DraftReport,
    *,
    message_time: dt.datetime | None = None,
    file_prefix: str = "oru",
) -> list[WrittenMessage]:
    """Builds and stores the ORU^R01 of this report version for every HL7 destination (none
    configured: nothing is written); ``message_time`` (MSH-7) defaults to now. A message that
    cannot be built as valid HL7 is logged and left out: the DICOM and FHIR results of the
    version must not depend on it."""
    written: list[WrittenMessage] = []
    for dest in config.hl7_destinations:
        try:
            text = build_oru(
                source,
                measurements,
                algorithms,
                report,
                receiving_application=dest.receiving_application,
                receiving_facility=dest.receiving_facility,
                sending_facility=config.dicom.ae_title.strip(),
                message_time=message_time,
            )
        except ValueError as exc:
            # the reason may quote header values (a patient name): the type only in the log
            log.error(
                "no ORU^R01 %s for HL7 destination %s: the message is not valid HL7 (%s)",
                report.status,
                dest.name,
                type(exc).__name__,
            )
            continue
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / message_file_name(dest, file_prefix)
        data = text.encode("utf-8")
        path.write_bytes(data)  # bytes: no newline translation of the CR segment ends
        written.append(WrittenMessage(dest.name, path, hashlib.sha256(data).hexdigest()))
    return written


def message_policy(config: Config) -> RetryPolicy:
    """``[export]``'s tries and back-off (an interface engine is a results peer like PACS);
    AR / CR and a local problem end the delivery at once."""
    limits = config.export
    backoff = Backoff(limits.backoff_initial_s, limits.backoff_max_s)
    return RetryPolicy(limits.max_attempts, backoff, _permanent)


def _permanent(status_code: str) -> bool:
    return status_code in REJECTED or status_code == LOCAL_PROBLEM


def is_current(session: Session, artifact_id: int) -> bool:
    """Whether the message may still go out: a preliminary one (written by an analysis job)
    while the study has no signed version, a signed one while its version is the latest."""
    artifact = session.get(Artifact, artifact_id)
    if artifact is None:
        return False
    latest = session.scalar(
        select(ReportVersion)
        .where(ReportVersion.study_fk == artifact.study_fk)
        .order_by(ReportVersion.version.desc())
        .limit(1)
    )
    signed = latest is not None and latest.status in SIGNED_STATES
    if artifact.job_fk is not None:
        return not signed
    return signed and latest is not None and artifact.report_version_fk == latest.id


def send_message_once(
    session_factory: sessionmaker[Session],
    artifact_id: int,
    dest: Hl7DestinationConfig,
    config: Config,
    clock: Callable[[], dt.datetime] = utcnow,
) -> DestinationStatus:
    """One MLLP try of the stored message to ``dest`` (none when it is already delivered or
    failed for good); ``dest.timeout_s`` bounds the connection and the wait for the ACK."""
    with session_factory() as session:
        artifact = session.get(Artifact, artifact_id)
        if artifact is None:
            raise ValueError(f"artifact {artifact_id} does not exist")
        if artifact.kind != ARTIFACT_KIND:
            raise ValueError(f"artifact {artifact_id} is a {artifact.kind}, not an HL7 message")
        path = artifact_path(config, artifact)

    def send() -> Sent:
        try:
            text = path.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            return Sent(False, LOCAL_PROBLEM, f"cannot send: {type(exc).__name__}: {exc}")
        try:
            outcome = send_oru(dest.host, dest.port, text, dest.timeout_s)
        except ValueError as exc:  # no MSH-10, or MLLP frame bytes in the stored text
            return Sent(False, LOCAL_PROBLEM, f"cannot send: {exc}")
        if outcome.ok or not outcome.retryable or outcome.ack_code in RETRYABLE:
            code = outcome.ack_code  # AA / CA, AR / CR, AE / CE: the verdict on this message
        else:
            code = ""  # no answer, or an ACK of some other message: as no answer
        return Sent(outcome.ok, code, "" if outcome.ok else outcome.text)

    return send_once(
        session_factory, artifact_id, destination_name(dest), send, message_policy(config), clock
    )


def message_destinations(session: Session, artifact_id: int) -> list[str]:
    """The ``hl7:<name>`` destinations a message has had a job or a try for, in order."""
    names = list(
        session.scalars(
            select(Job.destination)
            .where(Job.artifact_fk == artifact_id, Job.kind == KIND_DELIVER_HL7)
            .order_by(Job.id)
        )
    )
    tried = session.scalars(
        select(ExportAttempt.destination)
        .where(ExportAttempt.artifact_fk == artifact_id)
        .order_by(ExportAttempt.id)
    )
    for name in tried:
        if name not in names:
            names.append(name)
    return [n for n in names if n]


def message_status(
    session: Session, artifact_id: int, destination: str, max_attempts: int
) -> DestinationStatus:
    """Like ``export.destination_status``, and "failed" after one AR."""
    return standing(session, artifact_id, destination, max_attempts, _permanent)


def message_statuses(session: Session, artifact_id: int, config: Config) -> list[DestinationStatus]:
    """Where the message stands with each destination it was queued for (the page, the API)."""
    limit = config.export.max_attempts
    return [
        message_status(session, artifact_id, name, limit)
        for name in message_destinations(session, artifact_id)
    ]
