"""Claiming jobs: a worker takes the oldest due job of its lane, a queue message names one, a
running job's worker stamps its heartbeat.

Why a module of its own: every claim is one conditional UPDATE whose row count says who won;
the polling and the message path must set the same columns (``claimed_values``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from pacs_agent.db.engine import retry_on_disconnect
from pacs_agent.db.models import Job
from pacs_agent.job_types import DELIVERY_KINDS, LANE_ANALYSIS, LANE_DELIVERY, LANES, utc
from pacs_agent.states import JobState, job_transition


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
                *lane_filter(lane),
            )
            .order_by(Job.next_attempt_at, Job.id)
            .limit(batch)
        ).all()
    for job_id in candidates:
        with session_factory.begin() as session:
            result = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.state == JobState.QUEUED)
                .values(**claimed_values((JobState.QUEUED,), worker_id, now))
                .execution_options(synchronize_session=False)
            )
            if result.rowcount == 1:
                return job_id
    return None


def lane_filter(lane: str | None) -> list[Any]:
    if lane is None:
        return []
    if lane == LANE_DELIVERY:
        return [Job.kind.in_(DELIVERY_KINDS)]
    if lane == LANE_ANALYSIS:
        return [Job.kind.not_in(DELIVERY_KINDS)]
    raise ValueError(f"lane must be one of {', '.join(LANES)} or None, got {lane!r}")


def claimed_values(
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
            .values(**claimed_values((JobState.QUEUED, JobState.RUNNING), worker_id, now))
            .execution_options(synchronize_session=False)
        )
        return result.rowcount == 1


def seconds_until_due(session: Session, job_id: int, now: dt.datetime) -> float | None:
    """Seconds until a queued job's next attempt (0 when due); None when it is not queued."""
    job = session.get(Job, job_id)
    if job is None or job.state != JobState.QUEUED:
        return None
    if job.next_attempt_at is None:
        return 0.0
    return max(0.0, (utc(job.next_attempt_at) - now).total_seconds())
