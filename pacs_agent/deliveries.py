"""Deliveries as durable jobs: each artifact to each destination is a job of its own, apart
from the analysis that wrote the artifact.

Sending inside the analysis job held its worker through every try and every back-off sleep, so
one PACS that never answers stalled every study behind it. Now the analysis (and sign-off)
only creates the delivery jobs and moves on:

* ``deliver_dicom``: one artifact to one ``[[destinations]]`` entry (``Job.destination`` is its
  name) by C-STORE;
* ``deliver_fhir``: one FHIR bundle to the EHR (``Job.destination`` is ``fhir:<base url>``);
* ``deliver_hl7``: one stored ORU^R01 to one ``[[hl7_destinations]]`` entry over MLLP
  (``Job.destination`` is ``hl7:<name>``; ``pacs_agent.hl7_delivery``);
* ``deliver_stow``: one artifact to one ``[[dicomweb_destinations]]`` entry by STOW-RS
  (``Job.destination`` is ``dicomweb:<name>``; ``pacs_agent.stow_delivery``), queued with
  (and for the same artifacts as) ``deliver_dicom``.

One run of a delivery job makes ONE try, recorded as an ``ExportAttempt`` row exactly as before
(the study page and the API read those rows). Sent: the job is done. Failed for good (out of
the destination's attempts, or an answer no retry mends): the job fails. Otherwise the job goes
back to ``queued``, due after the destination's own back-off (``[export]`` for PACS and HL7,
``[ehr]`` for FHIR), and no worker sleeps meanwhile. The queue runs deliveries on their own
lane (``pacs_agent.queue``).

A process with no job queue (the review app on its own, a test) sees its deliveries through
with ``see_through``: the same claims and the same single tries, so a node worker that takes a
job first simply runs it.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
from collections.abc import Callable, Collection, Iterable, Mapping

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from pacs_agent import hl7_delivery, jobs, stow_delivery
from pacs_agent.attempts import DestinationStatus, RetryPolicy
from pacs_agent.config import Config
from pacs_agent.db.models import Artifact, Job, utcnow
from pacs_agent.export import export_once, export_policy
from pacs_agent.fhir_delivery import deliver_once, delivery_policy, destination_name, is_current
from pacs_agent.jobs import (
    KIND_DELIVER_DICOM,
    KIND_DELIVER_FHIR,
    KIND_DELIVER_HL7,
    KIND_DELIVER_STOW,
    PermanentJobError,
    RetryLater,
)
from pacs_agent.states import ACTIVE_JOB_STATES

log = logging.getLogger("echo_agent.deliveries")

# what PACS receives of a job's outputs; the browser video, raw PDF, FHIR bundle and HL7
# messages go elsewhere
PACS_KINDS = ("seg", "sr", "echo_sr", "secondary_capture", "pdf")
ACTIVE_STATES = ACTIVE_JOB_STATES
# how often ``see_through`` looks again at a job another worker holds
SEE_THROUGH_POLL_S = 0.2


def queue_deliveries(
    session: Session,
    config: Config,
    study_id: int,
    now: dt.datetime,
    *,
    dicom_artifacts: Iterable[int] = (),
    fhir_artifact: int | None = None,
    destinations: Collection[str] | None = None,
    hl7_messages: Mapping[str, int] | None = None,
) -> list[int]:
    """Creates and queues the jobs that send ``dicom_artifacts`` to every configured PACS
    destination, C-STORE and DICOMweb (only those named in ``destinations`` when given: a
    ``[[destinations]]`` name or ``dicomweb:<name>``), ``fhir_artifact`` to
    the EHR when one is configured, and each of ``hl7_messages`` (``[[hl7_destinations]]``
    name -> its ORU^R01 artifact) to its destination while that is configured; returns the
    ids queued now. An (artifact, destination) that already has its job gets no second one.
    The caller commits, then submits the ids."""
    created: list[int] = []
    for artifact_id in dicom_artifacts:
        for dest in config.destinations:
            if destinations is not None and dest.name not in destinations:
                continue
            job_id = jobs.create_delivery_job(
                session,
                KIND_DELIVER_DICOM,
                study_id,
                artifact_id,
                dest.name,
                now,
                config.export.max_attempts,
            )
            if job_id is not None:
                created.append(job_id)
        for web_dest in config.dicomweb_destinations:
            name = stow_delivery.destination_name(web_dest)
            if destinations is not None and name not in destinations:
                continue
            job_id = jobs.create_delivery_job(
                session,
                KIND_DELIVER_STOW,
                study_id,
                artifact_id,
                name,
                now,
                config.export.max_attempts,
            )
            if job_id is not None:
                created.append(job_id)
    if fhir_artifact is not None and config.ehr.fhir_base_url:
        job_id = jobs.create_delivery_job(
            session,
            KIND_DELIVER_FHIR,
            study_id,
            fhir_artifact,
            destination_name(config.ehr),
            now,
            config.ehr.max_attempts,
        )
        if job_id is not None:
            created.append(job_id)
    for name, artifact_id in (hl7_messages or {}).items():
        dest = next((d for d in config.hl7_destinations if d.name == name), None)
        if dest is None:
            continue
        job_id = jobs.create_delivery_job(
            session,
            KIND_DELIVER_HL7,
            study_id,
            artifact_id,
            hl7_delivery.destination_name(dest),
            now,
            config.export.max_attempts,
        )
        if job_id is not None:
            created.append(job_id)
    return jobs.enqueue(session, created, now)


def queue_outputs(
    session_factory: sessionmaker[Session],
    config: Config,
    study_id: int,
    artifact_ids: Mapping[str, int],
    now: dt.datetime,
    hl7_messages: Mapping[str, int] | None = None,
) -> list[int]:
    """The analysis's deliveries: its DICOM objects to PACS, and its (preliminary) bundle to
    the EHR and ORU^R01 messages (result status P) to the HL7 destinations only while they
    are the study's current ones, so a re-analysis after sign-off never puts a preliminary
    report over the final one. Returns the queued job ids."""
    dicom = [artifact_ids[kind] for kind in PACS_KINDS if kind in artifact_ids]
    with session_factory.begin() as session:
        fhir = artifact_ids.get("fhir")
        if fhir is not None and config.ehr.fhir_base_url and not is_current(session, fhir):
            log.info("FHIR bundle %d is not its study's current one: not queued", fhir)
            fhir = None
        messages: dict[str, int] = {}
        for name, artifact_id in (hl7_messages or {}).items():
            if hl7_delivery.is_current(session, artifact_id):
                messages[name] = artifact_id
            else:
                log.info("HL7 message %d: its report is signed; not queued", artifact_id)
        return queue_deliveries(
            session,
            config,
            study_id,
            now,
            dicom_artifacts=dicom,
            fhir_artifact=fhir,
            hl7_messages=messages,
        )


def run_delivery(
    job_id: int,
    session_factory: sessionmaker[Session],
    config: Config,
    clock: Callable[[], dt.datetime] = utcnow,
) -> None:
    """One try of a delivery job. Returns when the artifact is sent (or there is nothing left
    to send); raises ``RetryLater`` when another try may succeed and ``PermanentJobError``
    when none can."""
    with session_factory() as session:
        job = session.get(Job, job_id)
        if job is None:
            raise PermanentJobError(f"job {job_id} does not exist")
        kind, destination = job.kind, job.destination or ""
        artifact = session.get(Artifact, job.artifact_fk) if job.artifact_fk else None
        if artifact is None:  # replaced by a re-analysis, whose own jobs send the new one
            log.info("job %d: its artifact is gone; nothing to send", job_id)
            return
        artifact_id = artifact.id
        if kind == KIND_DELIVER_FHIR:
            superseded = not is_current(session, artifact_id)
        elif kind == KIND_DELIVER_HL7:
            superseded = not hl7_delivery.is_current(session, artifact_id)
        else:
            superseded = False
    if kind == KIND_DELIVER_DICOM:
        dest = next((d for d in config.destinations if d.name == destination), None)
        if dest is None:
            raise PermanentJobError(f"destination {destination!r} is no longer configured")
        policy = export_policy(config)
        status = _once(lambda: export_once(session_factory, artifact_id, dest, config, clock))
    elif kind == KIND_DELIVER_FHIR:
        if not config.ehr.fhir_base_url or destination_name(config.ehr) != destination:
            raise PermanentJobError(f"{destination} is no longer the configured EHR")
        if superseded:
            log.info("job %d: bundle %d was superseded; not sent", job_id, artifact_id)
            return
        policy = delivery_policy(config)
        status = _once(lambda: deliver_once(session_factory, artifact_id, config, clock))
    elif kind == KIND_DELIVER_HL7:
        hl7_dest = hl7_delivery.configured(config, destination)
        if hl7_dest is None:
            raise PermanentJobError(f"{destination} is no longer configured")
        if superseded:  # signed (or amended) meanwhile: P after F would undo the final report
            log.info("job %d: HL7 message %d was superseded; not sent", job_id, artifact_id)
            return
        policy = hl7_delivery.message_policy(config)
        status = _once(
            lambda: hl7_delivery.send_message_once(
                session_factory, artifact_id, hl7_dest, config, clock
            )
        )
    elif kind == KIND_DELIVER_STOW:
        web_dest = stow_delivery.configured(config, destination)
        if web_dest is None:
            raise PermanentJobError(f"{destination} is no longer configured")
        policy = stow_delivery.stow_policy(config)
        status = _once(
            lambda: stow_delivery.stow_once(session_factory, artifact_id, web_dest, config, clock)
        )
    else:
        raise PermanentJobError(f"job {job_id} has kind {kind!r}, which is no delivery")
    _judge(status, policy)


def _once(send: Callable[[], DestinationStatus]) -> DestinationStatus:
    """A ValueError is the artifact's or the configuration's fault (not a bundle, no EHR, the
    row gone): no retry mends it."""
    try:
        return send()
    except ValueError as exc:
        raise PermanentJobError(str(exc)) from exc


def _judge(status: DestinationStatus, policy: RetryPolicy) -> None:
    if status.state == "sent":
        return
    if status.state == "failed":
        raise PermanentJobError(
            f"{status.destination}: {status.last_error or 'failed'} "
            f"(after {status.attempts} tr{'y' if status.attempts == 1 else 'ies'})"
        )
    delay_s = policy.backoff.delay_s(max(1, status.attempts))
    raise RetryLater(f"{status.destination}: {status.last_error}", delay_s)


def job_runner(
    session_factory: sessionmaker[Session],
    config: Config,
    analyse: Callable[[int], None],
) -> Callable[[int], None]:
    """The runner a queue or a Celery worker calls with any job id: deliveries here,
    everything else to ``analyse`` (``pacs_agent.pipeline.run_job``)."""

    def run(job_id: int) -> None:
        with session_factory() as session:
            kind = session.scalar(select(Job.kind).where(Job.id == job_id))
        if kind in jobs.DELIVERY_KINDS:
            run_delivery(job_id, session_factory, config)
        else:
            analyse(job_id)

    return run


def active_for_study(session: Session, study_id: int) -> bool:
    """Whether a delivery of the study is waiting for or making a try."""
    found = session.scalar(
        select(Job.id)
        .where(
            Job.study_fk == study_id,
            Job.kind.in_(jobs.DELIVERY_KINDS),
            Job.state.in_(ACTIVE_STATES),
        )
        .limit(1)
    )
    return found is not None


def see_through(
    session_factory: sessionmaker[Session],
    config: Config,
    job_ids: Iterable[int],
    stop: threading.Event | None = None,
    clock: Callable[[], dt.datetime] = utcnow,
) -> dict[int, str]:
    """Runs the given delivery jobs in this thread until each is done or failed (or gone, or
    ``stop`` is set), for a process without a job queue. Returns job id -> final state.

    Claims like any worker (``jobs.claim_job``), so a job another worker holds is left to it
    and watched; between tries the job waits ``queued`` in the table, claimable by anyone.
    """
    stop = stop or threading.Event()
    worker_id = f"{socket.gethostname()}:{os.getpid()}:see-through-{threading.get_ident()}"
    backoff = jobs.Backoff(config.queue.backoff_initial_s, config.queue.backoff_max_s)
    stale_s = config.queue.heartbeat_stale_s
    pending = set(job_ids)
    final: dict[int, str] = {}

    def runner(job_id: int) -> None:
        run_delivery(job_id, session_factory, config, clock)

    while pending and not stop.is_set():
        waits_s = [SEE_THROUGH_POLL_S * 5]
        ran = False
        for job_id in sorted(pending):
            with session_factory() as session:
                job = session.get(Job, job_id)
                state = "gone" if job is None else job.state
                due_in_s = jobs.seconds_until_due(session, job_id, clock()) if job else None
            if state in (*jobs.TERMINAL_STATES, "gone"):
                final[job_id] = state
                pending.discard(job_id)
            elif due_in_s is None:  # running elsewhere, or not yet queued: look again soon
                waits_s.append(SEE_THROUGH_POLL_S)
            elif due_in_s > 0:
                waits_s.append(due_in_s)
            else:
                now = clock()
                stale_before = now - dt.timedelta(seconds=stale_s)
                if jobs.claim_job(session_factory, job_id, worker_id, now, stale_before):
                    jobs.execute_job(session_factory, job_id, worker_id, runner, backoff, clock)
                    ran = True
                else:
                    waits_s.append(SEE_THROUGH_POLL_S)
        if pending and not ran:
            stop.wait(min(waits_s))
    return final
