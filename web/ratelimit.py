"""Login rate limiting per (username, client address): a guessing attack on one account from
one place stops after a few tries, while the same user elsewhere (or another user here) can
still log in. In memory: the web app runs in one process, and a restart forgiving a few failed
attempts is harmless."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

MAX_FAILURES = 5
WINDOW_S = 15 * 60.0


class LoginRateLimiter:
    def __init__(
        self,
        max_failures: int = MAX_FAILURES,
        window_s: float = WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self._clock = clock
        self._failures: dict[tuple[str, str], list[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: tuple[str, str]) -> list[float]:
        cutoff = self._clock() - self.window_s
        kept = [t for t in self._failures.get(key, []) if t > cutoff]
        if kept:
            self._failures[key] = kept
        else:
            self._failures.pop(key, None)
        return kept

    def retry_after_s(self, username: str, address: str) -> float:
        """0 when a try is allowed now, else the seconds until the oldest failure expires."""
        key = (username.lower(), address)
        with self._lock:
            recent = self._recent(key)
            if len(recent) < self.max_failures:
                return 0.0
            return max(1.0, recent[0] + self.window_s - self._clock())

    def failed(self, username: str, address: str) -> None:
        key = (username.lower(), address)
        with self._lock:
            self._recent(key)
            self._failures.setdefault(key, []).append(self._clock())

    def succeeded(self, username: str, address: str) -> None:
        with self._lock:
            self._failures.pop((username.lower(), address), None)
