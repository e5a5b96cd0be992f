"""Login rate limiting with two budgets, counted in the database so that every web process
(and the same one after a restart) sees the same failures:

- per client address across all user names: password spraying (one common password tried
  against many accounts) from one place stops after ``max_failures_per_address``;
- per (user name, address): guessing one account stops after ``max_failures_per_user``, while
  the same user elsewhere (or another user here, within the address budget) can still log in.

Failures older than ``window_s`` stop counting; a refused (429) try is not itself counted, so
the wait ends when the window says. Flask-Limiter would need Redis, Memcached or MongoDB to share
its counters; the node's default deployment is SQLite alone (see the README).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from pacs_agent.db.models import LoginFailure

MAX_FAILURES_PER_USER = 5
MAX_FAILURES_PER_ADDRESS = 10
WINDOW_S = 15 * 60.0


def _as_utc(moment: dt.datetime) -> dt.datetime:
    """SQLite hands timestamps back without a zone; they were written in UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


class LoginRateLimiter:
    """The budgets; the caller passes its database session and commits. ``name_key`` is an
    opaque key for the user name (the caller's keyed hash), never the typed name itself."""

    def __init__(
        self,
        max_failures_per_user: int = MAX_FAILURES_PER_USER,
        max_failures_per_address: int = MAX_FAILURES_PER_ADDRESS,
        window_s: float = WINDOW_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_failures_per_user = max_failures_per_user
        self.max_failures_per_address = max_failures_per_address
        self.window_s = window_s
        self._clock = clock  # wall clock: the timestamps are shared between processes

    def _now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self._clock(), dt.UTC)

    def _wait_s(self, session: Session, budget: int, address: str, name_key: str | None) -> float:
        """Seconds until fewer than ``budget`` failures remain in the window (0: allowed)."""
        now = self._now()
        query = select(LoginFailure.at).where(
            LoginFailure.address == address[:64],
            LoginFailure.at > now - dt.timedelta(seconds=self.window_s),
        )
        if name_key is not None:
            query = query.where(LoginFailure.username_hash == name_key)
        newest = list(session.scalars(query.order_by(LoginFailure.at.desc()).limit(budget)))
        if len(newest) < budget:
            return 0.0
        frees_at = _as_utc(newest[-1]) + dt.timedelta(seconds=self.window_s)
        return max(1.0, (frees_at - now).total_seconds())

    def retry_after_s(self, session: Session, name_key: str, address: str) -> float:
        """0 when a try is allowed now, else the seconds until the longer of the two waits."""
        return max(
            self._wait_s(session, self.max_failures_per_address, address, None),
            self._wait_s(session, self.max_failures_per_user, address, name_key),
        )

    def failed(self, session: Session, name_key: str, address: str) -> None:
        now = self._now()
        session.execute(
            delete(LoginFailure).where(LoginFailure.at <= now - dt.timedelta(seconds=self.window_s))
        )
        session.add(LoginFailure(at=now, address=address[:64], username_hash=name_key))

    def succeeded(self, session: Session, name_key: str, address: str) -> None:
        """The account's own failures from here are forgiven; they still counted toward the
        address budget until now, and other names' failures keep counting."""
        session.execute(
            delete(LoginFailure).where(
                LoginFailure.address == address[:64], LoginFailure.username_hash == name_key
            )
        )
