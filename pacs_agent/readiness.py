"""Is this process ready to work? The database, its schema, the store, and the models it runs.

``ModelStatus`` is the one record of the models a process loads (the CNNs, the language model):
``start_node`` creates it, the loaders report into it, and the web app shows it as a banner and
``/readyz`` reads it. It is an object handed around, not a module global, so two nodes in one
test process keep their own.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, text

from pacs_agent.db.migrate import current_revision, head_revision
from pacs_agent.disk_guard import disk_guard_shortfall

T = TypeVar("T")

# The models a node loads, in the order it loads them, and the banner text while each loads.
CNN = "cnn"
LANGUAGE_MODEL = "language_model"
_LOADING_TEXT = {
    CNN: "Loading the segmentation and EF models...",
    LANGUAGE_MODEL: "Loading the language model...",
}
_LABELS = {CNN: "segmentation and EF models", LANGUAGE_MODEL: "language model"}
CONVERTING_TEXT = "Converting the embedded language model (first run only)..."
STATES = ("pending", "loading", "converting", "ready", "failed")


@dataclass
class _Component:
    state: str = "pending"
    detail: str = ""
    load_s: float | None = None
    required: bool = True
    _started: float | None = field(default=None, repr=False)


class ModelStatus:
    """Thread-safe state of each model a process loads: pending -> loading (or converting) ->
    ready | failed, with the load time. ``required`` models gate readiness; an optional one
    (the chat's language model, loaded on first use) only shows in the banner."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._components: dict[str, _Component] = {}

    def expect(self, name: str, required: bool = True) -> None:
        """Declares a model this process will load (shown as pending until it starts)."""
        with self._lock:
            self._components.setdefault(name, _Component(required=required))

    def set_state(self, name: str, state: str, detail: str = "") -> None:
        if state not in STATES:
            raise ValueError(f"unknown model state {state!r}")
        now = time.perf_counter()
        with self._lock:
            comp = self._components.setdefault(name, _Component())
            if state in ("loading", "converting") and comp._started is None:
                comp._started = now
            if state == "ready" and comp._started is not None:
                comp.load_s = now - comp._started
            comp.state = state
            comp.detail = detail

    def track(self, name: str, load: Callable[[], T], state: str = "loading") -> T:
        """Runs ``load`` with the model marked ``state`` (loading or converting), then ready;
        an exception marks it failed (with the error's text) and propagates."""
        self.set_state(name, state)
        try:
            result = load()
        except BaseException as exc:
            self.set_state(name, "failed", f"{type(exc).__name__}: {exc}")
            raise
        self.set_state(name, "ready")
        return result

    def load_times_s(self) -> dict[str, float]:
        """Seconds each model took to load, for the models that finished."""
        with self._lock:
            return {n: c.load_s for n, c in self._components.items() if c.load_s is not None}

    def required_ready(self) -> tuple[bool, str]:
        """(True, "") when every required model is ready, else (False, why)."""
        with self._lock:
            for name, comp in self._components.items():
                if comp.required and comp.state != "ready":
                    detail = f": {comp.detail}" if comp.detail else ""
                    return False, f"model {name} {comp.state}{detail}"
        return True, ""

    def snapshot(self) -> dict[str, Any]:
        """What the banner shows: one overall state and message, and each model's state."""
        with self._lock:
            comps = {n: (c.state, c.detail, c.load_s) for n, c in self._components.items()}
        models = {
            name: {"state": state, "detail": detail, "load_s": load_s}
            for name, (state, detail, load_s) in comps.items()
        }
        failed = [n for n, (state, _, _) in comps.items() if state == "failed"]
        busy = [(n, s) for n, (s, _, _) in comps.items() if s in ("loading", "converting")]
        pending = [n for n, (state, _, _) in comps.items() if state == "pending"]
        if failed:
            name = failed[0]
            label = _LABELS.get(name, name)
            overall = "failed"
            message = f"The {label} could not be loaded: {comps[name][1] or 'see the log'}"
        elif busy:
            name, state = busy[0]
            overall = "loading"
            message = CONVERTING_TEXT if state == "converting" else _LOADING_TEXT.get(
                name, f"Loading {name}..."
            )
        elif pending:
            overall, message = "loading", _LOADING_TEXT.get(pending[0], f"Loading {pending[0]}...")
        else:
            overall, message = "ready", "Ready"
        return {"state": overall, "message": message, "models": models}


@dataclass(frozen=True)
class Readiness:
    ready: bool
    reason: str  # short, for the 503 body; "" when ready
    checks: dict[str, str]


def check_ready(
    engine: Engine,
    store_path: Path,
    models: ModelStatus | None = None,
    min_free_disk_mb: int = 0,
) -> Readiness:
    """The database answers with the newest schema, the store takes a file and has more free
    disk than ``dicom.min_free_disk_mb`` (below it the listener refuses every C-STORE with
    0xA700), and (in a process that runs models) the required models are loaded. Stops at the
    first failing check."""
    checks: dict[str, str] = {}
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        revision = current_revision(engine)
    except Exception as exc:  # any driver error means "not ready"; the type says which
        checks["database"] = "unreachable"
        return Readiness(False, f"database unreachable ({type(exc).__name__})", checks)
    checks["database"] = "ok"
    if revision != head_revision():
        checks["schema"] = "outdated"
        return Readiness(
            False, f"schema {revision or 'empty'} is not {head_revision()} (echo-agent db upgrade)",
            checks,
        )
    checks["schema"] = "ok"
    problem = _store_problem(store_path)
    if problem:
        checks["store"] = "not writable"
        return Readiness(False, f"store not writable ({problem})", checks)
    checks["store"] = "ok"
    shortfall = disk_guard_shortfall(store_path, min_free_disk_mb)
    if shortfall:
        checks["disk"] = "below guard"
        return Readiness(False, f"disk space low ({shortfall})", checks)
    checks["disk"] = "ok"
    if models is not None:
        ok, why = models.required_ready()
        checks["models"] = "ok" if ok else "not ready"
        if not ok:
            return Readiness(False, why, checks)
    return Readiness(True, "", checks)


def _store_problem(store_path: Path) -> str:
    """Writes and removes a small file in the store; returns what went wrong, or ""."""
    probe = store_path / f".readyz-{uuid.uuid4().hex}"
    try:
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return ""
