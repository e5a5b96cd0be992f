"""Jobs: work as a database row that outlives the process running it: the analysis of one
loop (``analyze``), or the delivery of one artifact to one destination (``deliver_dicom``,
``deliver_fhir``, ``deliver_hl7``, ``deliver_stow``; ``pacs_agent.deliveries``).

States: ``received`` (the row exists, no queue has it yet) -> ``queued`` -> ``running`` ->
``done`` | ``failed``. A failed attempt goes back to ``queued`` with ``next_attempt_at`` pushed
out exponentially until ``max_attempts`` is spent. Every transition is one conditional UPDATE
whose WHERE clause names the state it leaves, so two workers (threads, processes or nodes on one
PostgreSQL database) can never both win the same transition; the row count says who won.

Attempts are counted when a job is claimed, so an attempt that a crash cut short still counts:
a loop that kills the node every time it is decoded stops after ``max_attempts`` restarts
instead of looping forever.

Workers claim from a lane: the analysis lane takes every kind but the deliveries, the delivery
lane only deliveries (see ``pacs_agent.queue``), so analysis never waits behind a network try.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from pacs_agent.db.engine import retry_on_disconnect
from pacs_agent.db.models import Job, Study
from pacs_agent.errors import EchoAgentError
from pacs_agent.logcontext import job_log_context
from pacs_agent.states import (
    TERMINAL_JOB_STATES,
    JobState,
    StudyState,
    job_transition,
    study_transition,
)

log = logging.getLogger(__name__)

KIND_ANALYZE = "analyze"
KIND_DELIVER_DICOM = "deliver_dicom"  # one artifact to one PACS destination by C-STORE
KIND_DELIVER_FHIR = "deliver_fhir"  # one FHIR bundle to the EHR
KIND_DELIVER_HL7 = "deliver_hl7"  # one stored ORU^R01 to one HL7 destination over MLLP
KIND_DELIVER_STOW = "deliver_stow"  # one DICOM artifact to one DICOMweb destination by STOW-RS
DELIVERY_KINDS = (KIND_DELIVER_DICOM, KIND_DELIVER_FHIR, KIND_DELIVER_HL7, KIND_DELIVER_STOW)
# which kinds a worker claims: None = every kind
LANE_ANALYSIS = "analysis"  # every kind but the deliveries
LANE_DELIVERY = "delivery"  # deliveries only
LANES = (LANE_ANALYSIS, LANE_DELIVERY)
TERMINAL_STATES = TERMINAL_JOB_STATES
# last_error is Text, but a whole traceback in a status column helps no reader
MAX_ERROR_CHARS = 2000


class PermanentJobError(EchoAgentError):
    """Retrying cannot help (corrupt pixel data, a file missing from the store): fail now."""


class RetryLater(EchoAgentError):  # noqa: N818 - it is an outcome, not a fault
    """The attempt failed and another may succeed after ``delay_s`` (a delivery's own back-off
    policy, which differs from the queue's): back to ``queued``, due then."""

    def __init__(self, message: str, delay_s: float) -> None:
        super().__init__(message)
        self.delay_s = delay_s


@dataclass(frozen=True)
class Backoff:
    """Exponential back-off: ``initial_s``, doubled per attempt, never above ``max_s``."""

    initial_s: float
    max_s: float

    def delay_s(self, attempt: int) -> float:
        """Delay before the try that follows ``attempt`` (1-based)."""
        if attempt < 1:
            raise ValueError(f"attempt is 1-based, got {attempt}")
        return min(self.max_s, self.initial_s * 2.0 ** (attempt - 1))


# The defaults of [queue] backoff_initial_s / backoff_max_s: they suit minute-long analyses.
DEFAULT_JOB_BACKOFF = Backoff(initial_s=5.0, max_s=300.0)


@dataclass(frozen=True)
class Recovery:
    """What start-up recovery did: jobs put back on the queue and jobs out of attempts."""

    requeued: tuple[int, ...]
    failed: tuple[int, ...]


def utc(value: dt.datetime) -> dt.datetime:
    """SQLite hands back naive datetimes (stored as UTC); PostgreSQL aware ones."""
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value


def create_job(
    session: Session,
    study_id: int,
    instance_id: int,
    now: dt.datetime,
    max_attempts: int,
    kind: str = KIND_ANALYZE,
) -> int | None:
    """Inserts the job for (study, instance, kind) unless it exists; returns the new id or None.

    INSERT ... ON CONFLICT DO NOTHING rather than select-then-insert: two assemblers (or one
    racing a late instance) cannot both create the job, and the losing one's transaction is not
    spoiled by an IntegrityError.
    """
    return _insert_job(
        session, study_fk=study_id, instance_fk=instance_id, kind=kind,
        max_attempts=max_attempts, created_at=now,
    )  # fmt: skip


def create_delivery_job(
    session: Session,
    kind: str,
    study_id: int,
    artifact_id: int,
    destination: str,
    now: dt.datetime,
    max_attempts: int,
) -> int | None:
    """Inserts the job sending ``artifact_id`` to ``destination`` unless one exists; returns
    the new id or None (ON CONFLICT DO NOTHING, as ``create_job``)."""
    if kind not in DELIVERY_KINDS:
        raise ValueError(f"{kind!r} is not a delivery kind")
    return _insert_job(
        session, study_fk=study_id, instance_fk=None, artifact_fk=artifact_id,
        destination=destination, kind=kind, max_attempts=max_attempts, created_at=now,
    )  # fmt: skip


def _insert_job(session: Session, **values: Any) -> int | None:
    """A new job row in state ``received`` with ``values``; None when the row's unique rule
    (per loop and kind, or per artifact, destination and kind) already holds one."""
    stmt = (
        _insert(session)(Job)
        .values(state=job_transition(None, JobState.RECEIVED), attempts=0, last_error="",
                worker_id="", **values)
        .on_conflict_do_nothing()
        .returning(Job.id)
    )
    return session.execute(stmt).scalar_one_or_none()


def _insert(session: Session) -> Any:
    """The dialect's INSERT, which has ON CONFLICT DO NOTHING."""
    dialect = session.get_bind().dialect.name
    insert_fn = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}.get(dialect)
    if insert_fn is None:  # pragma: no cover - the node supports exactly these two
        raise RuntimeError(f"unsupported database {dialect}")
    return insert_fn


def enqueue(session: Session, job_ids: Iterable[int], now: dt.datetime) -> list[int]:
    """received -> queued, due now; returns the ids that moved."""
    moved = []
    for job_id in job_ids:
        result = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.state == JobState.RECEIVED)
            .values(state=job_transition(JobState.RECEIVED, JobState.QUEUED), next_attempt_at=now)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount == 1:
            moved.append(job_id)
    return moved


@retry_on_disconnect("claiming a job")
def claim_next(
    session_factory: sessionmaker[Session],
    worker_id: str,
    now: dt.datetime,
    batch: int = 8,
    lane: str | None = None,
) -> int | None:
    """Takes the oldest due queued job of ``lane`` (None: any kind) for ``worker_id``; None
    when nothing is due.

    Candidates are read first and then claimed one by one with UPDATE ... WHERE state =
    'queued': a candidate another worker took in between simply updates no row.
    """
    with session_factory() as session:
        candidates = session.scalars(
            select(Job.id)
            .where(
                Job.state == JobState.QUEUED,
                or_(Job.next_attempt_at.is_(None), Job.next_attempt_at <= now),
                *_lane_filter(lane),
            )
            .order_by(Job.next_attempt_at, Job.id)
            .limit(batch)
        ).all()
    for job_id in candidates:
        with session_factory.begin() as session:
            result = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.state == JobState.QUEUED)
                .values(**_claimed((JobState.QUEUED,), worker_id, now))
                .execution_options(synchronize_session=False)
            )
            if result.rowcount == 1:
                return job_id
    return None


def _lane_filter(lane: str | None) -> list[Any]:
    if lane is None:
        return []
    if lane == LANE_DELIVERY:
        return [Job.kind.in_(DELIVERY_KINDS)]
    if lane == LANE_ANALYSIS:
        return [Job.kind.not_in(DELIVERY_KINDS)]
    raise ValueError(f"lane must be one of {', '.join(LANES)} or None, got {lane!r}")


def _claimed(
    leaving: tuple[JobState, ...], worker_id: str, now: dt.datetime
) -> dict[str, Any]:
    """The columns a claim sets, whichever path (polling thread or queue message) wins it;
    ``leaving`` names the states its WHERE clause takes the job from (each must be allowed to
    move to running)."""
    for state in leaving:
        job_transition(state, JobState.RUNNING)
    return {
        "state": JobState.RUNNING,
        "worker_id": worker_id,
        "attempts": Job.attempts + 1,
        "started_at": now,
        "heartbeat_at": now,
        "finished_at": None,
    }


@retry_on_disconnect("a job heartbeat")
def heartbeat(
    session_factory: sessionmaker[Session], running: Iterable[tuple[int, str]], now: dt.datetime
) -> None:
    """Stamps ``heartbeat_at`` on each (job id, worker id) that is still this worker's."""
    with session_factory.begin() as session:
        for job_id, worker_id in running:
            session.execute(
                update(Job)
                .where(Job.id == job_id, Job.state == JobState.RUNNING, Job.worker_id == worker_id)
                .values(heartbeat_at=now)
                .execution_options(synchronize_session=False)
            )


@retry_on_disconnect("recording a finished job")
def finish_job(
    session_factory: sessionmaker[Session], job_id: int, worker_id: str, now: dt.datetime
) -> bool:
    """running -> done; False when the job is no longer this worker's (recovered meanwhile)."""
    with session_factory.begin() as session:
        result = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.state == JobState.RUNNING, Job.worker_id == worker_id)
            .values(state=job_transition(JobState.RUNNING, JobState.DONE), finished_at=now,
                    heartbeat_at=now, last_error="")
            .execution_options(synchronize_session=False)
        )
        return result.rowcount == 1


@retry_on_disconnect("recording a failed attempt")
def fail_attempt(
    session_factory: sessionmaker[Session],
    job_id: int,
    worker_id: str,
    error: str,
    now: dt.datetime,
    backoff: Backoff,
    permanent: bool = False,
    delay_s: float | None = None,
) -> JobState | None:
    """running -> queued (later) or failed (no attempts left, or ``permanent``); ``delay_s``
    replaces ``backoff``'s delay (a delivery's own policy, ``RetryLater``).

    Returns the new state, or None when the job is no longer this worker's.
    """
    error = error[:MAX_ERROR_CHARS]
    with session_factory.begin() as session:
        job = session.get(Job, job_id)
        if job is None or job.state != JobState.RUNNING or job.worker_id != worker_id:
            return None
        final = permanent or job.attempts >= job.max_attempts
        new_state = job_transition(job.state, JobState.FAILED if final else JobState.QUEUED)
        values: dict[str, object] = {"state": new_state, "last_error": error, "heartbeat_at": now}
        if final:
            values.update(finished_at=now)
        else:
            seconds = backoff.delay_s(job.attempts) if delay_s is None else max(0.0, delay_s)
            delay = dt.timedelta(seconds=seconds)
            values.update(next_attempt_at=now + delay)
        result = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.state == JobState.RUNNING, Job.worker_id == worker_id)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:
            return None
        if final:
            _fail_study_if_nothing_left(session, job.study_fk, now)
        return new_state


def _fail_study_if_nothing_left(session: Session, study_id: int, now: dt.datetime) -> None:
    """A study whose every analysis job failed is failed too, so the worklist does not say
    'analysing'. A delivery that failed leaves the analysed study as it is."""
    states = set(
        session.scalars(
            select(Job.state).where(Job.study_fk == study_id, Job.kind.not_in(DELIVERY_KINDS))
        )
    )
    if states == {JobState.FAILED}:
        session.execute(
            update(Study)
            .where(Study.id == study_id, Study.status == StudyState.ANALYSING)
            .values(
                status=study_transition(StudyState.ANALYSING, StudyState.FAILED),
                status_reason="every analysis job failed",
            )
            .execution_options(synchronize_session=False)
        )


def recover_interrupted(session: Session, now: dt.datetime) -> Recovery:
    """Start-up recovery for the local backend, where this node runs every job, deliveries
    included.

    A job still ``running`` was cut short by a crash or a hard stop: it goes back to ``queued``
    (its attempt stays counted) or, out of attempts, to ``failed``; a delivery's try that the
    stop cut short is closed as failed when the job runs again (``attempts.close_interrupted``).
    A job left ``received`` (created, never queued) is queued. Must not run while another
    node's workers share the database: their running jobs would look interrupted too.
    """
    requeued, failed = _put_back_running(session, now, stale_before=None)
    received = session.scalars(select(Job.id).where(Job.state == JobState.RECEIVED)).all()
    requeued.extend(enqueue(session, received, now))
    return Recovery(requeued=tuple(requeued), failed=tuple(failed))


def requeue_stale(session: Session, now: dt.datetime, stale_before: dt.datetime) -> Recovery:
    """Recovery for workers on other machines (the Celery backend): a ``running`` job whose
    heartbeat is older than ``stale_before`` lost its worker (killed, host gone) and goes back
    to ``queued``, or to ``failed`` out of attempts. A job a live worker still stamps is left
    alone, so any number of listeners may run this at once; the conditional UPDATEs decide.
    A ``received`` job older than ``stale_before`` (its creator died before queueing it) is
    queued too."""
    requeued, failed = _put_back_running(session, now, stale_before=stale_before)
    received = session.scalars(
        select(Job.id).where(Job.state == JobState.RECEIVED, Job.created_at < stale_before)
    ).all()
    requeued.extend(enqueue(session, received, now))
    return Recovery(requeued=tuple(requeued), failed=tuple(failed))


def _put_back_running(
    session: Session, now: dt.datetime, stale_before: dt.datetime | None
) -> tuple[list[int], list[int]]:
    """running -> queued (due now) or failed (no attempts left); every running job, or with
    ``stale_before`` only those whose heartbeat (else start) is older. Returns (requeued,
    failed)."""
    requeued: list[int] = []
    failed: list[int] = []
    condition = [Job.state == JobState.RUNNING]
    if stale_before is not None:
        condition.append(
            or_(
                Job.heartbeat_at < stale_before,
                and_(Job.heartbeat_at.is_(None), Job.started_at < stale_before),
            )
        )
    running = session.scalars(select(Job).where(*condition).order_by(Job.id)).all()
    for job in running:
        if stale_before is None:
            note = f"interrupted: the node stopped during attempt {job.attempts}"
        else:
            note = (
                f"interrupted: worker {job.worker_id} stopped beating "
                f"during attempt {job.attempts}"
            )
        if job.attempts >= job.max_attempts:
            values: dict[str, object] = {
                "state": job_transition(job.state, JobState.FAILED),
                "finished_at": now,
                "last_error": f"{note}; no attempts left",
            }
        else:
            values = {
                "state": job_transition(job.state, JobState.QUEUED),
                "next_attempt_at": now,
                "last_error": note,
            }
        result = session.execute(
            update(Job)
            .where(Job.id == job.id, *condition)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount == 1:
            (failed if values["state"] == JobState.FAILED else requeued).append(job.id)
            if values["state"] == JobState.FAILED:
                _fail_study_if_nothing_left(session, job.study_fk, now)
    return requeued, failed


@retry_on_disconnect("claiming a delivered job")
def claim_job(
    session_factory: sessionmaker[Session],
    job_id: int,
    worker_id: str,
    now: dt.datetime,
    stale_before: dt.datetime,
) -> bool:
    """Claims one named job for ``worker_id`` (a queue message delivered it); True when won.

    Wins when the job is ``queued`` and due, or ``running`` with a heartbeat older than
    ``stale_before`` and attempts left (its worker died; the broker delivered the message
    again). Loses, changing nothing, when the job is done, failed, not yet due, or running
    with a fresh heartbeat elsewhere: that is what makes a message delivered twice harmless.
    """
    due_queued = and_(
        Job.state == JobState.QUEUED,
        or_(Job.next_attempt_at.is_(None), Job.next_attempt_at <= now),
    )
    abandoned = and_(
        Job.state == JobState.RUNNING,
        Job.attempts < Job.max_attempts,
        or_(
            Job.heartbeat_at < stale_before,
            and_(Job.heartbeat_at.is_(None), Job.started_at < stale_before),
        ),
    )
    with session_factory.begin() as session:
        result = session.execute(
            update(Job)
            .where(Job.id == job_id, or_(due_queued, abandoned))
            .values(**_claimed((JobState.QUEUED, JobState.RUNNING), worker_id, now))
            .execution_options(synchronize_session=False)
        )
        return result.rowcount == 1


def queued_waiting_since(session: Session, due_before: dt.datetime) -> list[int]:
    """Queued jobs due since before ``due_before``: their message is late or was lost (a
    broker that keeps nothing on disk restarted), so a sweeper publishes them again."""
    return list(
        session.scalars(
            select(Job.id)
            .where(
                Job.state == JobState.QUEUED,
                or_(Job.next_attempt_at.is_(None), Job.next_attempt_at < due_before),
            )
            .order_by(Job.next_attempt_at, Job.id)
        )
    )


def seconds_until_due(session: Session, job_id: int, now: dt.datetime) -> float | None:
    """Seconds until a queued job's next attempt (0 when due); None when it is not queued."""
    job = session.get(Job, job_id)
    if job is None or job.state != JobState.QUEUED:
        return None
    if job.next_attempt_at is None:
        return 0.0
    return max(0.0, (utc(job.next_attempt_at) - now).total_seconds())


def execute_job(
    session_factory: sessionmaker[Session],
    job_id: int,
    worker_id: str,
    runner: Callable[[int], None],
    backoff: Backoff,
    clock: Callable[[], dt.datetime],
) -> JobState | None:
    """Runs a claimed job and records the outcome; returns the job's new state.

    Any Exception is the job's failure, never the worker's: it is written to ``last_error``.
    BaseException (SystemExit, KeyboardInterrupt) passes through and leaves the job
    ``running`` for start-up recovery. Log lines carry the job's, study's and instance's ids.
    """
    with job_log_context(session_factory, job_id):
        return _execute(session_factory, job_id, worker_id, runner, backoff, clock)


def _execute(
    session_factory: sessionmaker[Session],
    job_id: int,
    worker_id: str,
    runner: Callable[[int], None],
    backoff: Backoff,
    clock: Callable[[], dt.datetime],
) -> JobState | None:
    try:
        runner(job_id)
    except RetryLater as exc:
        log.warning("job %d attempt failed, retried in %.1f s: %s", job_id, exc.delay_s, exc)
        return fail_attempt(
            session_factory, job_id, worker_id, str(exc), clock(), backoff, delay_s=exc.delay_s
        )
    except PermanentJobError as exc:
        log.warning("job %d failed permanently: %s", job_id, exc)
        return fail_attempt(
            session_factory, job_id, worker_id, str(exc), clock(), backoff, permanent=True
        )
    except Exception as exc:
        log.exception("job %d attempt failed", job_id)
        message = f"{type(exc).__name__}: {exc}"
        return fail_attempt(session_factory, job_id, worker_id, message, clock(), backoff)
    if not finish_job(session_factory, job_id, worker_id, clock()):
        log.warning("job %d finished on %s but was no longer its own", job_id, worker_id)
        return None
    return JobState.DONE


def count_by_state(session: Session) -> dict[str, int]:
    """Job counts per state, for status pages and logs."""
    rows = session.execute(select(Job.state, func.count()).group_by(Job.state)).all()
    return {state: int(n) for state, n in rows}
