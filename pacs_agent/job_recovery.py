"""Recovery: jobs left ``running`` by a crash or a dead worker go back to the queue (or fail,
out of attempts), jobs left ``received`` are queued, and queued jobs whose message was lost
are found for the sweeper.

Why a module of its own: it runs at start-up and on a timer, never from a worker, and it is
where the local and the Celery backends differ (all running jobs, or only stale ones).
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from pacs_agent.db.models import Job
from pacs_agent.job_outcomes import fail_study_if_nothing_left
from pacs_agent.job_rows import enqueue
from pacs_agent.job_types import Recovery
from pacs_agent.states import JobState, job_transition


def recover_interrupted(session: Session, now: dt.datetime) -> Recovery:
    """Start-up recovery for the local backend, where this node runs every job, deliveries
    included.

    A job still ``running`` was cut short by a crash or a hard stop: it goes back to ``queued``
    (its attempt stays counted) or, out of attempts, to ``failed``; a delivery's try that the
    stop cut short is closed as failed when the job runs again (``attempts.close_interrupted``).
    A job left ``received`` (created, never queued) is queued. Must not run while another
    node's workers share the database: their running jobs would look interrupted too.
    """
    requeued, failed = put_back_running(session, now, stale_before=None)
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
    requeued, failed = put_back_running(session, now, stale_before=stale_before)
    received = session.scalars(
        select(Job.id).where(Job.state == JobState.RECEIVED, Job.created_at < stale_before)
    ).all()
    requeued.extend(enqueue(session, received, now))
    return Recovery(requeued=tuple(requeued), failed=tuple(failed))


def put_back_running(
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
                f"interrupted: worker {job.worker_id} stopped beating during attempt {job.attempts}"
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
                fail_study_if_nothing_left(session, job.study_fk, now)
    return requeued, failed


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
