"""The state machines (``pacs_agent.states``): every allowed move passes, a forbidden one raises
``StateTransitionError``, and the stored values are the strings the CHECK constraints name.

Also the error hierarchies: each package's errors derive from its base and keep their older
built-in base, so ``except ValueError`` sites still catch them.
"""

from __future__ import annotations

import pytest

from inference.checkpoints import CheckpointError
from inference.decode import DecodeError
from inference.errors import InferenceError
from inference.preprocess import PreprocessError
from llm.backend import LanguageModelError
from llm.errors import LlmError
from pacs_agent.config import ConfigError
from pacs_agent.db import models
from pacs_agent.errors import EchoAgentError, SignOffError, StateTransitionError
from pacs_agent.jobs import PermanentJobError, RetryLater
from pacs_agent.selection import SelectionError
from pacs_agent.states import (
    ACTIVE_JOB_STATES,
    ATTEMPT_MOVES,
    JOB_MOVES,
    REPORT_MOVES,
    STUDY_MOVES,
    TERMINAL_JOB_STATES,
    AttemptState,
    JobState,
    ReportState,
    StudyState,
    attempt_transition,
    can_move,
    is_signed,
    job_transition,
    report_transition,
    study_transition,
)
from pacs_agent.store import OutOfSpaceError, QuarantinedError, StoreError
from reporting.errors import ReportingError
from reporting.overlay import RenderingError
from web.signoff import SignOffError as WebSignOffError

S = StudyState
J = JobState
A = AttemptState
R = ReportState


def test_stored_values_are_the_check_constraints_strings() -> None:
    assert models.STUDY_STATES == (
        "receiving", "complete", "analysing", "drafted", "signed", "failed", "not_eligible"
    )  # fmt: skip
    assert models.JOB_STATES == ("received", "queued", "running", "done", "failed")
    assert models.REPORT_STATES == ("draft", "preliminary", "signed", "amended")
    assert models.EXPORT_STATES == ("pending", "sent", "failed")
    assert models.GROUNDING_VERDICTS == ("pass", "fail", "replaced", "not_checked")
    assert JobState.QUEUED == "queued" and f"{StudyState.NOT_ELIGIBLE}" == "not_eligible"


def test_every_state_has_a_row_in_its_table() -> None:
    for enum, moves in ((S, STUDY_MOVES), (J, JOB_MOVES), (A, ATTEMPT_MOVES), (R, REPORT_MOVES)):
        assert set(moves) == {None, *enum}, enum


STUDY_ALLOWED = [
    (None, S.RECEIVING),
    (S.RECEIVING, S.COMPLETE),
    (S.COMPLETE, S.ANALYSING),
    (S.COMPLETE, S.NOT_ELIGIBLE),
    (S.ANALYSING, S.FAILED),
    (S.RECEIVING, S.DRAFTED),
    (S.COMPLETE, S.DRAFTED),
    (S.ANALYSING, S.DRAFTED),
    *[(state, S.SIGNED) for state in S],  # a signature or an amendment, whatever else happens
    *[(state, S.RECEIVING) for state in S if state != S.RECEIVING],  # a late instance reopens
]


@pytest.mark.parametrize(("current", "new"), STUDY_ALLOWED)
def test_study_allowed_moves(current: StudyState | None, new: StudyState) -> None:
    assert study_transition(current, new) is new
    assert study_transition(None if current is None else str(current), str(new)) is new
    assert can_move(current, new)


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (None, S.COMPLETE),
        (S.RECEIVING, S.RECEIVING),
        (S.RECEIVING, S.ANALYSING),
        (S.SIGNED, S.DRAFTED),
        (S.FAILED, S.DRAFTED),
        (S.DRAFTED, S.ANALYSING),
        (S.NOT_ELIGIBLE, S.FAILED),
    ],
)
def test_study_forbidden_moves(current: StudyState | None, new: StudyState) -> None:
    with pytest.raises(StateTransitionError, match="study"):
        study_transition(current, new)
    assert not can_move(current, new)


def test_every_study_move_is_listed_above() -> None:
    """The table and the tests agree, so a new move is a decision, not an accident."""
    listed = set(STUDY_ALLOWED)
    table = {(cur, new) for cur, targets in STUDY_MOVES.items() for new in targets}
    assert table == listed


JOB_ALLOWED = [
    (None, J.RECEIVED),
    (J.RECEIVED, J.QUEUED),
    (J.QUEUED, J.RUNNING),
    (J.RUNNING, J.RUNNING),  # a stale job taken over
    (J.RUNNING, J.DONE),
    (J.RUNNING, J.QUEUED),  # a retry
    (J.RUNNING, J.FAILED),
]


@pytest.mark.parametrize(("current", "new"), JOB_ALLOWED)
def test_job_allowed_moves(current: JobState | None, new: JobState) -> None:
    assert job_transition(current, new) is new
    assert can_move(current, new)


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (None, J.QUEUED),
        (J.RECEIVED, J.RUNNING),
        (J.QUEUED, J.DONE),
        (J.DONE, J.QUEUED),
        (J.FAILED, J.QUEUED),
        (J.FAILED, J.RUNNING),
        (J.DONE, J.DONE),
    ],
)
def test_job_forbidden_moves(current: JobState | None, new: JobState) -> None:
    with pytest.raises(StateTransitionError, match="job"):
        job_transition(current, new)


def test_every_job_move_is_listed_above() -> None:
    table = {(cur, new) for cur, targets in JOB_MOVES.items() for new in targets}
    assert table == set(JOB_ALLOWED)
    assert set(TERMINAL_JOB_STATES) == {s for s, targets in JOB_MOVES.items() if not targets}
    assert set(ACTIVE_JOB_STATES) | set(TERMINAL_JOB_STATES) == set(J)


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (None, A.PENDING),
        (A.PENDING, A.SENT),
        (A.PENDING, A.FAILED),
        (A.FAILED, A.SENT),  # a try another worker closed as interrupted, ending after all
    ],
)
def test_attempt_allowed_moves(current: AttemptState | None, new: AttemptState) -> None:
    assert attempt_transition(current, new) is new


@pytest.mark.parametrize(
    ("current", "new"),
    [(None, A.SENT), (A.SENT, A.FAILED), (A.SENT, A.PENDING), (A.FAILED, A.PENDING)],
)
def test_attempt_forbidden_moves(current: AttemptState | None, new: AttemptState) -> None:
    with pytest.raises(StateTransitionError, match="delivery attempt"):
        attempt_transition(current, new)


REPORT_ALLOWED = [
    *[(cur, new) for cur in (None, R.PRELIMINARY, R.DRAFT)
      for new in (R.PRELIMINARY, R.DRAFT, R.SIGNED)],
    (R.SIGNED, R.AMENDED),
    (R.AMENDED, R.AMENDED),
]  # fmt: skip


@pytest.mark.parametrize(("current", "new"), REPORT_ALLOWED)
def test_report_allowed_moves(current: ReportState | None, new: ReportState) -> None:
    assert report_transition(current, new) is new


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (R.SIGNED, R.PRELIMINARY),  # a re-analysis never overwrites a signed report
        (R.SIGNED, R.DRAFT),
        (R.SIGNED, R.SIGNED),
        (R.AMENDED, R.SIGNED),
        (R.AMENDED, R.PRELIMINARY),
        (R.PRELIMINARY, R.AMENDED),
        (None, R.AMENDED),
    ],
)
def test_report_forbidden_moves(current: ReportState | None, new: ReportState) -> None:
    with pytest.raises(StateTransitionError, match="report") as caught:
        report_transition(current, new)
    assert caught.value.new == str(new)


def test_every_report_move_is_listed_above() -> None:
    table = {(cur, new) for cur, targets in REPORT_MOVES.items() for new in targets}
    assert table == set(REPORT_ALLOWED)
    assert [s for s in R if is_signed(s)] == [R.SIGNED, R.AMENDED]
    assert not is_signed(None)


def test_unknown_values_are_refused_not_guessed() -> None:
    with pytest.raises(StateTransitionError, match="'finished'"):
        job_transition(J.RUNNING, "finished")
    with pytest.raises(StateTransitionError):
        study_transition("archived", S.RECEIVING)
    assert not can_move("archived", S.RECEIVING)


def test_transition_error_is_a_value_error_of_the_node() -> None:
    with pytest.raises(ValueError, match=r"'signed' -> 'preliminary' is not an allowed move"):
        report_transition("signed", "preliminary")
    assert issubclass(StateTransitionError, EchoAgentError)


@pytest.mark.parametrize(
    ("error", "base", "builtin"),
    [
        (PermanentJobError, EchoAgentError, Exception),
        (RetryLater, EchoAgentError, Exception),
        (StoreError, EchoAgentError, RuntimeError),
        (OutOfSpaceError, EchoAgentError, RuntimeError),
        (QuarantinedError, EchoAgentError, Exception),
        (SelectionError, EchoAgentError, ValueError),
        (ConfigError, EchoAgentError, ValueError),
        (SignOffError, EchoAgentError, ValueError),
        (DecodeError, InferenceError, ValueError),
        (PreprocessError, InferenceError, ValueError),
        (CheckpointError, InferenceError, ValueError),
        (RenderingError, ReportingError, RuntimeError),
        (LanguageModelError, LlmError, RuntimeError),
    ],
)
def test_each_package_has_one_error_base(
    error: type[Exception], base: type[Exception], builtin: type[Exception]
) -> None:
    assert issubclass(error, base) and issubclass(error, builtin)


def test_sign_off_error_is_the_one_the_review_app_catches() -> None:
    assert WebSignOffError is SignOffError
