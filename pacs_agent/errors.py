"""The node's error hierarchy: every error ``pacs_agent`` raises on purpose derives from
``EchoAgentError``, so a caller that wants "anything the node refused" catches one class.

The classes themselves live beside the code that raises them (``store.StoreError``,
``jobs.PermanentJobError``, ...) and keep their older built-in base (``ValueError``,
``RuntimeError``) as a second base, so every ``except`` site written before this hierarchy
still catches them. The few errors that more than one module raises live here.
"""

from __future__ import annotations


class EchoAgentError(Exception):
    """Base of every error the node (``pacs_agent`` and the packages above it) raises."""


class StateTransitionError(EchoAgentError, ValueError):
    """A state machine (study, job, delivery attempt, report) was asked for a move its table
    does not allow (``pacs_agent.states``): a bug or a race, never a user's mistake."""

    def __init__(self, machine: str, current: str | None, new: str) -> None:
        shown = "(none)" if current is None else repr(str(current))
        super().__init__(f"{machine}: {shown} -> {str(new)!r} is not an allowed move")
        self.machine = machine
        self.current = None if current is None else str(current)
        self.new = str(new)


class SignOffError(EchoAgentError, ValueError):
    """The report cannot be signed as asked (no analysis, no SR to follow, bad state)."""


__all__ = ["EchoAgentError", "SignOffError", "StateTransitionError"]
