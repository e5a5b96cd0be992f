"""The node's state machines: study, job (analyses and deliveries alike), delivery attempt and
report version, each a ``StrEnum`` with one transition function that knows the allowed moves.

Why one place: a state used to be a bare string written in half a dozen modules, so nothing
said which moves exist, and a typo or a forbidden move (a signed report turned back into a
preliminary one) was only caught, if at all, by a CHECK constraint. Now every write goes
through ``*_transition(current, new)``, which returns ``new`` as the enum or raises
``StateTransitionError``; a conditional write asks ``can_move`` (the same tables).

The stored values are exactly the strings the CHECK constraints and the Alembic migrations
name; a ``StrEnum`` member equals its string, so the columns stay ``String`` and rows stay
readable with plain SQL. ``None`` as the current state means "no row yet".
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import TypeVar

from pacs_agent.errors import StateTransitionError


class StudyState(StrEnum):
    """A study, from its first instance to its signed report."""

    RECEIVING = "receiving"  # instances arrive; the assembler waits for quiet
    COMPLETE = "complete"  # quiet for the stable age; its loops are judged next
    ANALYSING = "analysing"  # at least one analysis job
    DRAFTED = "drafted"  # a preliminary report exists
    SIGNED = "signed"  # a cardiologist signed (or amended) the report
    FAILED = "failed"  # every analysis job failed
    NOT_ELIGIBLE = "not_eligible"  # no loop the node can analyse


class JobState(StrEnum):
    """A job row (``pacs_agent.jobs``): an analysis or one delivery."""

    RECEIVED = "received"  # the row exists, no queue has it yet
    QUEUED = "queued"  # waiting (``next_attempt_at`` says from when)
    RUNNING = "running"  # a worker holds it and stamps its heartbeat
    DONE = "done"
    FAILED = "failed"  # out of attempts, or a failure no retry mends


class AttemptState(StrEnum):
    """One try of a delivery (an ``ExportAttempt`` row, ``pacs_agent.attempts``)."""

    PENDING = "pending"  # the try is under way (or a crash cut it short)
    SENT = "sent"
    FAILED = "failed"


class ReportState(StrEnum):
    """A report version (``ReportVersion.status``); the study's report is its latest version."""

    DRAFT = "draft"  # a person's edit, unsigned
    PRELIMINARY = "preliminary"  # the node's draft from an analysis
    SIGNED = "signed"
    AMENDED = "amended"  # a signed change to a signed report


TERMINAL_JOB_STATES = (JobState.DONE, JobState.FAILED)
ACTIVE_JOB_STATES = (JobState.RECEIVED, JobState.QUEUED, JobState.RUNNING)
SIGNED_REPORT_STATES = (ReportState.SIGNED, ReportState.AMENDED)

# what may follow every study state: a late instance reopens it (ingest), and a signature or
# an amendment stands whatever the loop's analysis is doing
_REOPEN_OR_SIGN = frozenset({StudyState.RECEIVING, StudyState.SIGNED})

# current -> the states that may follow it
STUDY_MOVES: Mapping[StudyState | None, frozenset[StudyState]] = {
    None: frozenset({StudyState.RECEIVING}),
    StudyState.RECEIVING: frozenset({StudyState.COMPLETE, StudyState.DRAFTED, StudyState.SIGNED}),
    StudyState.COMPLETE: _REOPEN_OR_SIGN
    | {StudyState.ANALYSING, StudyState.NOT_ELIGIBLE, StudyState.DRAFTED},
    StudyState.ANALYSING: _REOPEN_OR_SIGN | {StudyState.FAILED, StudyState.DRAFTED},
    StudyState.DRAFTED: _REOPEN_OR_SIGN,
    StudyState.SIGNED: _REOPEN_OR_SIGN,
    StudyState.FAILED: _REOPEN_OR_SIGN,
    StudyState.NOT_ELIGIBLE: _REOPEN_OR_SIGN,
}

JOB_MOVES: Mapping[JobState | None, frozenset[JobState]] = {
    None: frozenset({JobState.RECEIVED}),
    JobState.RECEIVED: frozenset({JobState.QUEUED}),
    JobState.QUEUED: frozenset({JobState.RUNNING}),
    # running -> running: a worker takes over a job whose worker stopped beating
    JobState.RUNNING: frozenset(
        {JobState.RUNNING, JobState.DONE, JobState.QUEUED, JobState.FAILED}
    ),
    JobState.DONE: frozenset(),
    JobState.FAILED: frozenset(),
}

ATTEMPT_MOVES: Mapping[AttemptState | None, frozenset[AttemptState]] = {
    None: frozenset({AttemptState.PENDING}),
    AttemptState.PENDING: frozenset({AttemptState.SENT, AttemptState.FAILED}),
    AttemptState.SENT: frozenset(),
    # a slow worker's try that another worker closed as interrupted (it took the job over)
    # still records its real outcome when it ends
    AttemptState.FAILED: frozenset({AttemptState.SENT, AttemptState.FAILED}),
}

_UNSIGNED_NEXT = frozenset({ReportState.PRELIMINARY, ReportState.DRAFT, ReportState.SIGNED})
# the report's state (its latest version's; None: no version yet) -> the next version's state.
# An unsigned version is replaced by a re-analysis's preliminary one in place; a signed one
# never is: after a signature only an amendment follows.
REPORT_MOVES: Mapping[ReportState | None, frozenset[ReportState]] = {
    None: _UNSIGNED_NEXT,
    ReportState.PRELIMINARY: _UNSIGNED_NEXT,
    ReportState.DRAFT: _UNSIGNED_NEXT,
    ReportState.SIGNED: frozenset({ReportState.AMENDED}),
    ReportState.AMENDED: frozenset({ReportState.AMENDED}),
}

S = TypeVar("S", StudyState, JobState, AttemptState, ReportState)

_MOVES: Mapping[type[StrEnum], tuple[str, Mapping]] = {
    StudyState: ("study", STUDY_MOVES),
    JobState: ("job", JOB_MOVES),
    AttemptState: ("delivery attempt", ATTEMPT_MOVES),
    ReportState: ("report", REPORT_MOVES),
}


def _checked(kind: type[S], current: str | None, new: str) -> S:
    machine, moves = _MOVES[kind]
    try:
        target = kind(new)
        source = None if current is None else kind(current)
    except ValueError as exc:  # a value no table knows: say which machine refused it
        raise StateTransitionError(machine, current, new) from exc
    if target not in moves[source]:
        raise StateTransitionError(machine, current, new)
    return target


def study_transition(current: str | None, new: str) -> StudyState:
    """``new`` as a ``StudyState`` when a study in ``current`` may move there; else raises
    ``StateTransitionError``. Receiving -> complete -> analysing | not_eligible; analysing ->
    failed; receiving, complete or analysing -> drafted; any state -> receiving (a late
    instance reopens it) and -> signed (a signature or amendment)."""
    return _checked(StudyState, current, new)


def job_transition(current: str | None, new: str) -> JobState:
    """``new`` as a ``JobState`` when a job in ``current`` may move there; else raises
    ``StateTransitionError``. Received -> queued -> running -> done | failed | queued (a
    retry), and running -> running (a stale job taken over)."""
    return _checked(JobState, current, new)


def attempt_transition(current: str | None, new: str) -> AttemptState:
    """``new`` as an ``AttemptState`` when a delivery try in ``current`` may move there; else
    raises ``StateTransitionError``. Pending -> sent | failed; sent is final; failed -> sent |
    failed only for a try another worker closed as interrupted while it was still running."""
    return _checked(AttemptState, current, new)


def report_transition(current: str | None, new: str) -> ReportState:
    """``new`` as a ``ReportState`` when a report whose latest version is ``current`` (None:
    none yet) may take a version in ``new``; else raises ``StateTransitionError``. Unsigned
    (none, preliminary, draft) -> preliminary | draft | signed; signed or amended -> amended."""
    return _checked(ReportState, current, new)


def can_move(current: str | None, new: S) -> bool:
    """Whether ``new``'s machine allows ``current`` -> ``new`` (the table the transition
    function checks), for a write that happens only when it is allowed."""
    _, moves = _MOVES[type(new)]
    try:
        source = None if current is None else type(new)(current)
    except ValueError:
        return False
    return new in moves[source]


def is_signed(report_state: str | None) -> bool:
    """Whether a report whose latest version is in ``report_state`` is signed (or amended)."""
    return report_state in SIGNED_REPORT_STATES


__all__ = [
    "ACTIVE_JOB_STATES",
    "ATTEMPT_MOVES",
    "JOB_MOVES",
    "REPORT_MOVES",
    "SIGNED_REPORT_STATES",
    "STUDY_MOVES",
    "TERMINAL_JOB_STATES",
    "AttemptState",
    "JobState",
    "ReportState",
    "StudyState",
    "attempt_transition",
    "can_move",
    "is_signed",
    "job_transition",
    "report_transition",
    "study_transition",
]
