"""The outcome of an attempt: done, retried later (the queue's back-off or the runner's own
delay), or failed, and the study failed with its last analysis job.

Why a module of its own: how a runner's exception becomes a job state (and a study state) is
the retry policy, and it is the same for every backend that runs jobs.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from pacs_agent.db.engine import retry_on_disconnect
from pacs_agent.db.models import Job, Study
from pacs_agent.job_types import (
    DELIVERY_KINDS,
    MAX_ERROR_CHARS,
    Backoff,
    PermanentJobError,
    RetryLater,
)
from pacs_agent.logcontext import job_log_context
from pacs_agent.states import JobState, StudyState, job_transition, study_transition

# the logger keeps the name it had before the split, so log configuration still matches it
log = logging.getLogger("pacs_agent.jobs")


@retry_on_disconnect("recording a finished job")
def finish_job(
    session_factory: sessionmaker[Session], job_id: int, worker_id: str, now: dt.datetime
) -> bool:
    """running -> done; False when the job is no longer this worker's (recovered meanwhile)."""
    with session_factory.begin() as session:
        result = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.state == JobState.RUNNING, Job.worker_id == worker_id)
            .values(
                state=job_transition(JobState.RUNNING, JobState.DONE),
                finished_at=now,
                heartbeat_at=now,
                last_error="",
            )
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
            fail_study_if_nothing_left(session, job.study_fk, now)
        return new_state


def fail_study_if_nothing_left(session: Session, study_id: int, now: dt.datetime) -> None:
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
