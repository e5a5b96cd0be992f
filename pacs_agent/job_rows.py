"""New job rows: created once per (loop, kind) or (artifact, destination, kind), then queued.

Why a module of its own: creation is the one place that must be idempotent under races
(INSERT ... ON CONFLICT DO NOTHING); claiming, outcomes and recovery only move existing rows.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from sqlalchemy import update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from pacs_agent.db.models import Job
from pacs_agent.job_types import DELIVERY_KINDS, KIND_ANALYZE
from pacs_agent.states import JobState, job_transition


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
    return insert_job(
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
    return insert_job(
        session, study_fk=study_id, instance_fk=None, artifact_fk=artifact_id,
        destination=destination, kind=kind, max_attempts=max_attempts, created_at=now,
    )  # fmt: skip


def insert_job(session: Session, **values: Any) -> int | None:
    """A new job row in state ``received`` with ``values``; None when the row's unique rule
    (per loop and kind, or per artifact, destination and kind) already holds one."""
    stmt = (
        dialect_insert(session)(Job)
        .values(
            state=job_transition(None, JobState.RECEIVED),
            attempts=0,
            last_error="",
            worker_id="",
            **values,
        )
        .on_conflict_do_nothing()
        .returning(Job.id)
    )
    return session.execute(stmt).scalar_one_or_none()


def dialect_insert(session: Session) -> Any:
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
