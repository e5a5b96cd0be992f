"""Tries at sending one artifact to one destination: the bookkeeping that C-STORE export to
PACS and FHIR delivery to the EHR share.

Every try is one ``ExportAttempt`` row: "pending" while it runs, then "sent" or "failed". The
rows are the only state, so a crash mid-try, a restart or a second caller resumes where things
stood: a dangling "pending" try is closed as failed and counts, and a sent artifact is never
sent again. What differs between transports is only how one try is made and which failures no
retry can mend.

Two ways to drive the tries: ``send_once`` makes one try and returns (a delivery job,
``pacs_agent.deliveries``, which the queue retries with back-off while no worker waits), and
``send_with_retries`` loops in the caller's thread, waiting out the back-off.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from pacs_agent.db.models import ExportAttempt, utcnow
from pacs_agent.jobs import Backoff, utc
from pacs_agent.states import AttemptState, attempt_transition

log = logging.getLogger(__name__)

ERROR_CHARS = 2000  # what an attempt row keeps of an error text

# Stops a back-off wait early; returns True when the caller should give up (shutdown).
Wait = Callable[[float], bool]


def sleep_wait(seconds: float) -> bool:
    time.sleep(seconds)
    return False


class Outcome(Protocol):
    """One try's result: ``status_code`` as the transport writes it ("" when no answer came)."""

    @property
    def ok(self) -> bool: ...

    @property
    def status_code(self) -> str: ...

    @property
    def error(self) -> str: ...


@dataclass(frozen=True)
class Sent:
    """An ``Outcome`` as a plain value, for transports whose client returns something else
    (an MLLP ACK, an HTTP answer) and must say what the attempt row records."""

    ok: bool
    status_code: str
    error: str


@dataclass(frozen=True)
class DestinationStatus:
    """Where one artifact stands with one destination.

    state: "not_sent" (never tried), "pending" (a try is running, or the next one is due
    later), "sent", or "failed" (out of attempts, or a failure no retry can mend).
    """

    destination: str
    state: str
    attempts: int
    last_error: str
    last_status_code: str
    last_attempt_at: dt.datetime | None


def _never_permanent(_status_code: str) -> bool:
    return False


def attempt_rows(session: Session, artifact_id: int, destination: str) -> list[ExportAttempt]:
    return list(
        session.scalars(
            select(ExportAttempt)
            .where(
                ExportAttempt.artifact_fk == artifact_id, ExportAttempt.destination == destination
            )
            .order_by(ExportAttempt.attempt, ExportAttempt.id)
        )
    )


def standing(
    session: Session,
    artifact_id: int,
    destination: str,
    max_attempts: int,
    permanent: Callable[[str], bool] = _never_permanent,
) -> DestinationStatus:
    """The artifact's state with ``destination``; ``permanent(status_code)`` says a failed try
    ends it at once (an EHR's 400, say)."""
    rows = attempt_rows(session, artifact_id, destination)
    if not rows:
        return DestinationStatus(destination, "not_sent", 0, "", "", None)
    last = rows[-1]
    if any(r.state == "sent" for r in rows):
        state = "sent"
    elif last.state == "failed" and (len(rows) >= max_attempts or permanent(last.status_code)):
        state = "failed"
    else:
        state = "pending"
    return DestinationStatus(
        destination, state, len(rows), last.error, last.status_code, last.started_at
    )


def close_interrupted(
    session: Session, artifact_id: int, destination: str, now: dt.datetime
) -> None:
    """A "pending" try at start is one a crash cut short: it failed, and it counts."""
    for row in attempt_rows(session, artifact_id, destination):
        if row.state == AttemptState.PENDING:
            row.state = attempt_transition(row.state, AttemptState.FAILED)
            row.finished_at = now
            row.error = row.error or "interrupted: the node stopped during this try"


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int
    backoff: Backoff
    permanent: Callable[[str], bool] = _never_permanent


def send_with_retries(
    session_factory: sessionmaker[Session],
    artifact_id: int,
    destination: str,
    send: Callable[[], Outcome],
    policy: RetryPolicy,
    wait: Wait = sleep_wait,
    clock: Callable[[], dt.datetime] = utcnow,
) -> DestinationStatus:
    """Calls ``send`` until the artifact is sent, out of attempts or permanently refused, or
    ``wait`` says stop, waiting out the back-off between tries. Safe to call again: resumes."""
    with session_factory.begin() as session:
        close_interrupted(session, artifact_id, destination, clock())
    while True:
        with session_factory() as session:
            status = standing(
                session, artifact_id, destination, policy.max_attempts, policy.permanent
            )
            rows = attempt_rows(session, artifact_id, destination)
        if status.state in ("sent", "failed"):
            return status
        if rows:
            last_end = utc(rows[-1].finished_at or rows[-1].started_at)
            due = last_end + dt.timedelta(seconds=policy.backoff.delay_s(len(rows)))
            delay_s = (due - clock()).total_seconds()
            if delay_s > 0 and wait(delay_s):
                return status
        _try(session_factory, artifact_id, destination, send, len(rows) + 1, policy, clock)


def send_once(
    session_factory: sessionmaker[Session],
    artifact_id: int,
    destination: str,
    send: Callable[[], Outcome],
    policy: RetryPolicy,
    clock: Callable[[], dt.datetime] = utcnow,
) -> DestinationStatus:
    """One try, unless the artifact is already sent or failed for good; returns where it
    stands afterwards ("pending": another try may succeed). No waiting: the caller schedules
    the next try (``policy.backoff.delay_s(status.attempts)`` from now)."""
    with session_factory.begin() as session:
        close_interrupted(session, artifact_id, destination, clock())
    with session_factory() as session:
        status = standing(session, artifact_id, destination, policy.max_attempts, policy.permanent)
    if status.state in ("sent", "failed"):
        return status
    _try(session_factory, artifact_id, destination, send, status.attempts + 1, policy, clock)
    with session_factory() as session:
        return standing(session, artifact_id, destination, policy.max_attempts, policy.permanent)


def _try(
    session_factory: sessionmaker[Session],
    artifact_id: int,
    destination: str,
    send: Callable[[], Outcome],
    number: int,
    policy: RetryPolicy,
    clock: Callable[[], dt.datetime],
) -> None:
    """One try recorded as one row: "pending" before ``send``, its outcome after."""
    attempt_id = _start_attempt(session_factory, artifact_id, destination, number, clock())
    outcome = send()
    _finish_attempt(session_factory, attempt_id, outcome, clock())
    if outcome.ok:
        log.info("artifact %d sent to %s (%s)", artifact_id, destination, outcome.status_code)
    else:
        log.warning(
            "artifact %d to %s, try %d of %d: %s",
            artifact_id,
            destination,
            number,
            policy.max_attempts,
            outcome.error,
        )


def _start_attempt(
    session_factory: sessionmaker[Session],
    artifact_id: int,
    destination: str,
    attempt: int,
    now: dt.datetime,
) -> int:
    with session_factory.begin() as session:
        row = ExportAttempt(
            artifact_fk=artifact_id,
            destination=destination,
            state=attempt_transition(None, AttemptState.PENDING),
            attempt=attempt,
            started_at=now,
        )
        session.add(row)
        session.flush()
        return row.id


def _finish_attempt(
    session_factory: sessionmaker[Session], attempt_id: int, outcome: Outcome, now: dt.datetime
) -> None:
    with session_factory.begin() as session:
        row = session.get(ExportAttempt, attempt_id)
        if row is None:  # the artifact was replaced meanwhile (re-analysis): nothing to record
            return
        row.state = attempt_transition(
            row.state, AttemptState.SENT if outcome.ok else AttemptState.FAILED
        )
        row.status_code = outcome.status_code
        row.error = outcome.error[:ERROR_CHARS]
        row.finished_at = now
