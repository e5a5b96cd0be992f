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

The parts: ``pacs_agent.job_types`` (kinds, lanes, outcomes, back-off), ``job_rows`` (creating
and queueing), ``job_claims`` (claims and heartbeats), ``job_outcomes`` (done, retry, failed)
and ``job_recovery`` (start-up and stale-worker recovery, the sweeper's query). This module
keeps every name it always exported.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from pacs_agent.db.models import Job
from pacs_agent.job_claims import (
    claim_job,
    claim_next,
    heartbeat,
    seconds_until_due,
)
from pacs_agent.job_outcomes import (
    execute_job,
    fail_attempt,
    finish_job,
)
from pacs_agent.job_recovery import (
    queued_waiting_since,
    recover_interrupted,
    requeue_stale,
)
from pacs_agent.job_rows import (
    create_delivery_job,
    create_job,
    enqueue,
)
from pacs_agent.job_types import (
    DEFAULT_JOB_BACKOFF,
    DELIVERY_KINDS,
    KIND_ANALYZE,
    KIND_DELIVER_DICOM,
    KIND_DELIVER_FHIR,
    KIND_DELIVER_HL7,
    KIND_DELIVER_STOW,
    LANE_ANALYSIS,
    LANE_DELIVERY,
    LANES,
    MAX_ERROR_CHARS,
    TERMINAL_STATES,
    Backoff,
    PermanentJobError,
    Recovery,
    RetryLater,
    utc,
)

__all__ = [
    "DEFAULT_JOB_BACKOFF",
    "DELIVERY_KINDS",
    "KIND_ANALYZE",
    "KIND_DELIVER_DICOM",
    "KIND_DELIVER_FHIR",
    "KIND_DELIVER_HL7",
    "KIND_DELIVER_STOW",
    "LANES",
    "LANE_ANALYSIS",
    "LANE_DELIVERY",
    "MAX_ERROR_CHARS",
    "TERMINAL_STATES",
    "Backoff",
    "PermanentJobError",
    "Recovery",
    "RetryLater",
    "claim_job",
    "claim_next",
    "count_by_state",
    "create_delivery_job",
    "create_job",
    "enqueue",
    "execute_job",
    "fail_attempt",
    "finish_job",
    "heartbeat",
    "queued_waiting_since",
    "recover_interrupted",
    "requeue_stale",
    "seconds_until_due",
    "utc",
]


def count_by_state(session: Session) -> dict[str, int]:
    """Job counts per state, for status pages and logs."""
    rows = session.execute(select(Job.state, func.count()).group_by(Job.state)).all()
    return {state: int(n) for state, n in rows}
