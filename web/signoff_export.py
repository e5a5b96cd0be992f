"""The sends of a sign-off: the signed SRs to the PACS destinations, the FHIR bundle to the
EHR and the ORU^R01 messages to their HL7 destinations, queued as delivery jobs
(``pacs_agent.deliveries``) and, without a node's queue, seen through on a thread of their own
whose outcome goes to the audit log.

Why a module of its own: signing (``web.signoff.finalise``) writes and records the objects in
one request; sending them outlives it, is resumed after a restart, and is audited apart.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from pacs_agent.config import Config
from pacs_agent.db.models import Job, utcnow
from pacs_agent.deliveries import ACTIVE_STATES, active_for_study, queue_deliveries, see_through
from pacs_agent.export import destination_status
from pacs_agent.fhir_delivery import delivery_status
from pacs_agent.hl7_delivery import message_status
from pacs_agent.jobs import DELIVERY_KINDS, KIND_DELIVER_FHIR, KIND_DELIVER_HL7, KIND_DELIVER_STOW
from pacs_agent.stow_delivery import stow_status
from web.audit import write_event
from web.export_resume import UnfinishedExport, unfinished_signoff_exports

# the logger keeps the name the sign-off has always logged under
log = logging.getLogger("echo_agent.web.signoff")

# who the audit log names for sends the node takes up again on its own after a restart
RESUMING_USER = "echo-agent (resumed after restart)"
# (study id, [(artifact id, PACS destination names or None for all)], FHIR artifact id,
#  {HL7 destination name: ORU^R01 artifact id})
Sends = tuple[int, list[tuple[int, tuple[str, ...] | None]], int | None, dict[str, int]]


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
            study_id,
            [(a, None) for a in artifact_ids],
            fhir_artifact_id,
            dict(hl7_messages or {}),
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
        """Queues the sends of ``items`` again and hands them on as ``start`` does, audited as
        resumed by ``RESUMING_USER``."""
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
