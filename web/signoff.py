"""Sign-off: a cardiologist's signature turns the draft into the final report.

Signing (or amending a signed report) writes a new ``ReportVersion`` (never editing one in
place), signed DICOM SRs (the TID 1500 Measurement Report and the TID 5200 Echocardiography
Procedure Report) that each name the previous one of their template as predecessor, a FHIR
bundle whose DiagnosticReport is ``final`` (``amended`` after an amendment) and an HL7 ORU^R01
per ``[[hl7_destinations]]`` entry (result status F, C after an amendment; message time the
signature's), then queues the sends of the SRs to every PACS destination, of the bundle to the
EHR (when one is configured) and of each message to its HL7 destination as delivery
jobs (``pacs_agent.deliveries``), so the request returns at once and a stop loses no send: the
jobs are rows that the next worker takes up. The files go under
``<home>/reports/<study>/`` and are recorded without a job, so a re-analysis of the loop (which
replaces its job's artifacts) can never delete what was signed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from inference.types import Measurements
from pacs_agent.config import Config
from pacs_agent.db.models import Analysis, Artifact, Instance, Job, Study, User, utcnow
from pacs_agent.deliveries import ACTIVE_STATES, active_for_study, queue_deliveries, see_through
from pacs_agent.drafting import report_text
from pacs_agent.errors import SignOffError
from pacs_agent.export import artifact_path, destination_status
from pacs_agent.fhir_delivery import delivery_status
from pacs_agent.hl7_delivery import ARTIFACT_KIND as HL7_KIND
from pacs_agent.hl7_delivery import HL7_MEDIA_TYPE, message_status, write_messages
from pacs_agent.jobs import DELIVERY_KINDS, KIND_DELIVER_FHIR, KIND_DELIVER_HL7, KIND_DELIVER_STOW
from pacs_agent.outputs import node_identifier_system
from pacs_agent.reports import ReportText, latest_analysis, plan_signature, record_signature
from pacs_agent.stow_delivery import stow_status
from reporting.dicom_base import derived_uid
from reporting.echo_sr import write_echo_sr, write_signed_echo_sr
from reporting.fhir import build_fhir_bundle, bundle_json
from reporting.outputs import DICOM_MEDIA_TYPE, FHIR_MEDIA_TYPE
from reporting.sr import write_signed_sr
from reporting.types import DraftReport, Signature, SourceLoop
from web.audit import write_event
from web.export_resume import UnfinishedExport, unfinished_signoff_exports
from web.studies import analysis_algorithms

log = logging.getLogger("echo_agent.web.signoff")

REPORTS_DIR_NAME = "reports"
# who the audit log names for sends the node takes up again on its own after a restart
RESUMING_USER = "echo-agent (resumed after restart)"
# (study id, [(artifact id, PACS destination names or None for all)], FHIR artifact id,
#  {HL7 destination name: ORU^R01 artifact id})
Sends = tuple[int, list[tuple[int, tuple[str, ...] | None]], int | None, dict[str, int]]


@dataclass(frozen=True)
class SignedOutputs:
    version_id: int
    version: int
    sr_artifact_id: int
    fhir_artifact_id: int
    echo_sr_artifact_id: int
    # [[hl7_destinations]] name -> the ORU^R01 artifact written for it
    hl7_messages: dict[str, int] = field(default_factory=dict)

    @property
    def dicom_artifact_ids(self) -> list[int]:
        """What goes to every PACS destination: the TID 1500 SR, then the TID 5200 SR."""
        return [self.sr_artifact_id, self.echo_sr_artifact_id]


def observer_name(user: User) -> str:
    """DICOM PN ``Family^Given`` from the display name ("Ada Okafor" -> "Okafor^Ada")."""
    name = (user.display_name or user.username).strip()
    if "^" in name:
        return name
    parts = name.split()
    if len(parts) < 2:
        return name
    return f"{parts[-1]}^{' '.join(parts[:-1])}"


def _previous_sr(
    session: Session, study_id: int, analysis: Analysis, kind: str = "sr"
) -> Artifact | None:
    """The SR of ``kind`` the new signed one follows: the last signed one, else the analysis's
    preliminary one (None when there is neither)."""
    signed = session.scalar(
        select(Artifact)
        .where(Artifact.study_fk == study_id, Artifact.kind == kind, Artifact.job_fk.is_(None))
        .order_by(Artifact.id.desc())
        .limit(1)
    )
    if signed is not None:
        return signed
    return session.scalar(
        select(Artifact)
        .where(Artifact.job_fk == analysis.job_fk, Artifact.kind == kind)
        .order_by(Artifact.id.desc())
        .limit(1)
    )


def finalise(
    session: Session,
    config: Config,
    study: Study,
    user: User,
    *,
    structured_text: str,
    narrative_text: str,
    amendment_reason: str = "",
    now: dt.datetime | None = None,
) -> SignedOutputs:
    """Writes the signed SR and FHIR bundle and adds the signed (or amended) version
    (``pacs_agent.reports``); the caller commits. Raises SignOffError when there is nothing to
    sign."""
    analysis = latest_analysis(session, study.id)
    if analysis is None:
        raise SignOffError("this study has no analysed loop to report on")
    signing = plan_signature(session, study.id, amendment_reason)
    number = signing.number
    signed_at = now or utcnow()
    instance = session.get(Instance, analysis.instance_fk)
    if instance is None:
        raise SignOffError("the analysed loop is no longer in the store")
    source_ds: Dataset = dcmread(config.store_path / instance.file_path, stop_before_pixels=True)
    previous_sr = _previous_sr(session, study.id, analysis)
    if previous_sr is None:
        raise SignOffError("the analysis has no preliminary SR to sign")
    previous_sr_ds = dcmread(artifact_path(config, previous_sr))
    previous_echo_sr = _previous_sr(session, study.id, analysis, "echo_sr")
    organisation = str(source_ds.get("InstitutionName", "") or "").strip()
    signature = Signature(
        observer_name=observer_name(user),
        organisation=organisation or f"echo-agent node {config.dicom.ae_title.strip()}",
        signed_at=signed_at,
    )
    report = DraftReport(
        narrative_text=report_text(structured_text, narrative_text),
        demo_models=analysis.demo_models,
        status=signing.published_status,
        version=number,
        signature=signature,
        amendment_reason=signing.amendment_reason,
    )
    measurements = Measurements.from_json(analysis.measurements)
    algorithms = analysis_algorithms(analysis)
    folder = config.home_path / REPORTS_DIR_NAME / str(study.id)
    folder.mkdir(parents=True, exist_ok=True)
    seed = f"{source_ds.SOPInstanceUID}/study-{study.id}/report-v{number}"
    sr_path = folder / f"sr_v{number}.dcm"
    sr = write_signed_sr(
        previous_sr_ds,
        source_ds,
        measurements,
        algorithms,
        report,
        sr_path,
        sop_instance_uid=derived_uid(seed, "sr"),
    )
    echo_sr_path = folder / f"echo_sr_v{number}.dcm"
    if previous_echo_sr is not None:
        echo_sr = write_signed_echo_sr(
            dcmread(artifact_path(config, previous_echo_sr)),
            source_ds,
            measurements,
            algorithms,
            report,
            echo_sr_path,
            sop_instance_uid=derived_uid(seed, "echo_sr"),
        )
    else:  # analysed before the node wrote TID 5200: a signed one with no predecessor
        echo_sr = write_echo_sr(
            source_ds,
            measurements,
            algorithms,
            report,
            echo_sr_path,
            sop_instance_uid=derived_uid(seed, "echo_sr"),
            series_instance_uid=derived_uid(seed, "echo_sr", "series"),
        )
    messages = write_messages(
        folder,
        config,
        SourceLoop.from_dataset(source_ds),
        measurements,
        algorithms,
        report,
        message_time=signed_at,
        file_prefix=f"oru_v{number}",
    )
    bundle = build_fhir_bundle(
        SourceLoop.from_dataset(source_ds),
        measurements,
        algorithms,
        report,
        node_system=node_identifier_system(config),
        issued=signed_at,
    )
    fhir_path = folder / f"fhir_bundle_v{number}.json"
    fhir_path.write_text(bundle_json(bundle), encoding="utf-8")

    version = record_signature(
        session,
        study.id,
        signing,
        ReportText(structured_text, narrative_text),
        signer_id=user.id,
        signed_at=signed_at,
        demo_models=analysis.demo_models,
    )
    sr_artifact = _artifact(config, study.id, version.id, "sr", sr_path, DICOM_MEDIA_TYPE,
                            str(sr.SOPInstanceUID))
    fhir_artifact = _artifact(config, study.id, version.id, "fhir", fhir_path, FHIR_MEDIA_TYPE,
                              None)
    echo_sr_artifact = _artifact(config, study.id, version.id, "echo_sr", echo_sr_path,
                                 DICOM_MEDIA_TYPE, str(echo_sr.SOPInstanceUID))
    hl7_artifacts = {
        m.destination: _artifact(config, study.id, version.id, HL7_KIND, m.path, HL7_MEDIA_TYPE,
                                 None)
        for m in messages
    }
    session.add_all([sr_artifact, fhir_artifact, echo_sr_artifact, *hl7_artifacts.values()])
    session.flush()
    return SignedOutputs(version.id, number, sr_artifact.id, fhir_artifact.id,
                         echo_sr_artifact.id, {n: a.id for n, a in hl7_artifacts.items()})


def _artifact(
    config: Config,
    study_id: int,
    version_id: int,
    kind: str,
    path: Path,
    media_type: str,
    sop_instance_uid: str | None,
) -> Artifact:
    try:
        stored = str(path.resolve().relative_to(config.home_path))
    except ValueError:
        stored = str(path.resolve())
    return Artifact(
        study_fk=study_id,
        job_fk=None,
        report_version_fk=version_id,
        kind=kind,
        sop_instance_uid=sop_instance_uid,
        file_path=stored,
        media_type=media_type,
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
    )


class ExportRunner:
    """Queues the sends of a sign-off as delivery jobs: the DICOM artifacts to the PACS
    destinations, the FHIR bundle to the EHR and the ORU^R01 messages to their HL7
    destinations, the same jobs an analysis queues.

    With ``submit`` (the review app inside a node) each job goes to the node's queue, whose
    delivery worker runs it. Without (the app on its own), a thread per sign-off sees its jobs
    through (``deliveries.see_through``) and then writes the outcome to the audit log. Either
    way the jobs are rows in the table, so a stop loses no send.
    """

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        config: Config,
        submit: Callable[[int], None] | None = None,
    ) -> None:
        self.session_factory = session_factory
        self.config = config
        self._submit = submit
        self._watching: dict[int, int] = {}  # study id -> threads seeing its jobs through
        self._lock = threading.Lock()

    def running(self, study_id: int) -> bool:
        """Whether a send of the study is queued or under way (or its outcome still being
        written to the audit log)."""
        with self._lock:
            if self._watching.get(study_id, 0) > 0:
                return True
        with self.session_factory() as session:
            return active_for_study(session, study_id)

    def will_send(
        self,
        artifact_ids: list[int],
        fhir_artifact_id: int | None,
        hl7_messages: dict[str, int] | None = None,
    ) -> bool:
        hl7_names = {d.name for d in self.config.hl7_destinations}
        return bool(
            (artifact_ids and (self.config.destinations or self.config.dicomweb_destinations))
            or (fhir_artifact_id is not None and self.config.ehr.fhir_base_url)
            or hl7_names.intersection(hl7_messages or {})
        )

    def start(
        self,
        study_id: int,
        artifact_ids: list[int],
        user_id: int,
        username: str,
        fhir_artifact_id: int | None = None,
        hl7_messages: dict[str, int] | None = None,
    ) -> list[int] | None:
        """Queues the sends; returns the ids of the delivery jobs that carry them, or None
        when there is nowhere to send anything (no destination, no EHR, no HL7 peer)."""
        if not self.will_send(artifact_ids, fhir_artifact_id, hl7_messages):
            return None
        sends: Sends = (
            study_id, [(a, None) for a in artifact_ids], fhir_artifact_id, dict(hl7_messages or {})
        )
        job_ids = self._queue(sends)
        self._hand_on(sends, job_ids, user_id, username, resumed=False)
        return job_ids

    def resume_unfinished(self) -> list[threading.Thread]:
        """Queues the sign-off sends a stop cut short (``web.export_resume``); called once
        when the review app starts serving. Returns the threads seeing them through (none
        when a queue runs them)."""
        with self.session_factory() as session:
            items = unfinished_signoff_exports(session, self.config)
        return self.resume(items)

    def resume(self, items: Sequence[UnfinishedExport]) -> list[threading.Thread]:
        threads = []
        for item in items:
            log.info(
                "study %d: resuming sign-off exports cut short by a stop (SR %s, FHIR %s)",
                item.study_id,
                ", ".join(f"{a} -> {'/'.join(names)}" for a, names in item.sr_destinations) or "-",
                item.fhir_artifact_id if item.fhir_artifact_id is not None else "-",
            )
            sends: Sends = (
                item.study_id,
                [(artifact_id, names) for artifact_id, names in item.sr_destinations],
                item.fhir_artifact_id,
                {},
            )
            job_ids = self._queue(sends)
            thread = self._hand_on(sends, job_ids, None, RESUMING_USER, resumed=True)
            if thread is not None:
                threads.append(thread)
        return threads

    def _queue(self, sends: Sends) -> list[int]:
        """Creates the jobs (an artifact and destination that has one keeps it) and returns
        every unfinished delivery job of these artifacts, new or older."""
        study_id, pacs, fhir_artifact_id, hl7_messages = sends
        with self.session_factory.begin() as session:
            for artifact_id, names in pacs:
                queue_deliveries(
                    session, self.config, study_id, utcnow(),
                    dicom_artifacts=[artifact_id], destinations=names,
                )  # fmt: skip
            if fhir_artifact_id is not None:
                queue_deliveries(session, self.config, study_id, utcnow(),
                                 fhir_artifact=fhir_artifact_id)  # fmt: skip
            if hl7_messages:
                queue_deliveries(session, self.config, study_id, utcnow(),
                                 hl7_messages=hl7_messages)  # fmt: skip
            artifacts = _artifacts_of(sends)
            return list(session.scalars(
                select(Job.id)
                .where(Job.artifact_fk.in_(artifacts), Job.kind.in_(DELIVERY_KINDS),
                       Job.state.in_(ACTIVE_STATES))
                .order_by(Job.id)
            ))  # fmt: skip

    def _hand_on(
        self,
        sends: Sends,
        job_ids: list[int],
        user_id: int | None,
        username: str,
        resumed: bool,
    ) -> threading.Thread | None:
        """To the queue when there is one; else a thread that runs the jobs here."""
        if self._submit is not None:
            for job_id in job_ids:
                try:
                    self._submit(job_id)
                except Exception as exc:  # queued in the table all the same
                    log.warning("delivery job %d not handed to the queue: %s", job_id, exc)
            return None
        study_id = sends[0]
        with self._lock:
            self._watching[study_id] = self._watching.get(study_id, 0) + 1
        thread = threading.Thread(
            target=self._see_through,
            args=(sends, job_ids, user_id, username, resumed),
            name=f"deliveries-study-{study_id}",
            daemon=True,
        )
        thread.start()
        return thread

    def _see_through(
        self,
        sends: Sends,
        job_ids: list[int],
        user_id: int | None,
        username: str,
        resumed: bool,
    ) -> None:
        study_id = sends[0]
        try:
            error = ""
            try:
                see_through(self.session_factory, self.config, job_ids)
            except Exception as exc:  # recorded and shown; the thread must not die silently
                log.exception("sending the sign-off of study %d failed", study_id)
                error = f"{type(exc).__name__}: {exc}"
            for artifact_id in _artifacts_of(sends):
                detail: dict[str, object] = {"artifact_id": artifact_id}
                if error:
                    detail["error"] = error
                else:
                    detail["results"] = self._results(artifact_id, job_ids)
                if resumed:
                    detail["resumed"] = True
                write_event(
                    self.session_factory,
                    action="export",
                    user_id=user_id,
                    username=username,
                    study_id=study_id,
                    target_type="artifact",
                    target_id=str(artifact_id),
                    detail=detail,
                )
        finally:
            with self._lock:
                self._watching[study_id] -= 1

    def _results(self, artifact_id: int, job_ids: list[int]) -> dict[str, str]:
        """Destination -> where the artifact stands with it, for the destinations it had
        jobs for (``attempts.DestinationStatus.state``)."""
        results: dict[str, str] = {}
        with self.session_factory() as session:
            rows = session.execute(
                select(Job.kind, Job.destination)
                .where(Job.id.in_(job_ids), Job.artifact_fk == artifact_id)
                .order_by(Job.id)
            ).all()
            for kind, destination in rows:
                if kind == KIND_DELIVER_FHIR:
                    limit = self.config.ehr.max_attempts
                    status = delivery_status(session, artifact_id, destination or "", limit)
                elif kind == KIND_DELIVER_HL7:
                    limit = self.config.export.max_attempts
                    status = message_status(session, artifact_id, destination or "", limit)
                elif kind == KIND_DELIVER_STOW:
                    limit = self.config.export.max_attempts
                    status = stow_status(session, artifact_id, destination or "", limit)
                else:
                    limit = self.config.export.max_attempts
                    status = destination_status(session, artifact_id, destination or "", limit)
                results[status.destination] = status.state
        return results


def _artifacts_of(sends: Sends) -> list[int]:
    """Every artifact a sign-off's sends carry: the SRs, the bundle, the HL7 messages."""
    _, pacs, fhir_artifact_id, hl7_messages = sends
    artifacts = [a for a, _ in pacs] + ([fhir_artifact_id] if fhir_artifact_id else [])
    return artifacts + list(hl7_messages.values())
