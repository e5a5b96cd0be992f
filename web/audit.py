"""The audit trail: who viewed, edited, signed, exported, asked or logged in, and when.

Events are written in their own transaction, so an audit row is never lost because the request
that caused it rolled back (a failed sign-off is audited as a failure). Views are de-duplicated
for a minute per user and study, so the study page and the API calls it makes do not flood the
trail with one open of one study.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from flask import current_app, g
from sqlalchemy.orm import Session, sessionmaker

from pacs_agent.db.models import AuditEvent
from web.security import client_address

VIEW_DEDUP_S = 60.0



class RecentViews:
    """Per app: when each (user, study) view was last recorded."""

    def __init__(self, window_s: float = VIEW_DEDUP_S) -> None:
        self.window_s = window_s
        self._seen: dict[tuple[int, int], float] = {}
        self._lock = threading.Lock()

    def first_in_window(self, user_id: int, study_id: int) -> bool:
        now = time.monotonic()
        with self._lock:
            last = self._seen.get((user_id, study_id))
            if last is not None and now - last < self.window_s:
                return False
            self._seen[(user_id, study_id)] = now
            return True


def record(
    action: str,
    *,
    study_id: int | None = None,
    target_type: str = "",
    target_id: str | int = "",
    detail: dict[str, Any] | None = None,
    username: str | None = None,
    user_id: int | None = None,
) -> None:
    """Writes one event for the current request's user (or the given one)."""
    user = g.get("user")
    factory: sessionmaker[Session] = current_app.config["ECHO_AGENT_SESSION_FACTORY"]
    write_event(
        factory,
        action=action,
        user_id=user_id if user_id is not None else (user.id if user else None),
        username=username if username is not None else (user.username if user else ""),
        study_id=study_id,
        target_type=target_type,
        target_id=str(target_id),
        remote_addr=client_address(),
        detail=detail or {},
    )


def record_view(study_id: int, via: str) -> None:
    user = g.get("user")
    if user is None:
        return
    recent: RecentViews = current_app.config["ECHO_AGENT_RECENT_VIEWS"]
    if not recent.first_in_window(user.id, study_id):
        return
    record("view", study_id=study_id, target_type="study", target_id=study_id, detail={"via": via})


def write_event(
    factory: sessionmaker[Session],
    *,
    action: str,
    user_id: int | None,
    username: str,
    study_id: int | None = None,
    target_type: str = "",
    target_id: str = "",
    remote_addr: str = "",
    detail: dict[str, Any] | None = None,
) -> None:
    """For code outside a request (the export thread) as well as inside one."""
    with factory.begin() as session:
        session.add(
            AuditEvent(
                user_fk=user_id,
                username=username[:64],
                action=action[:32],
                target_type=target_type[:32],
                target_id=target_id[:128],
                study_fk=study_id,
                remote_addr=remote_addr[:64],
                detail=detail or {},
            )
        )
