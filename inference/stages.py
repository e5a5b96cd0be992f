"""A runner for declared stages: named functions from one frozen dataclass to the next.

Work that happens in steps (one loop's analysis, one job) is declared as a tuple of ``Stage``s
and run by ``run_stages``, which calls them in order, times each with ``perf_counter`` and
logs one line per stage. So there is one stage timer for every caller, every stage's time is
measured the same way, and a stage that fails is named in the log before its error travels on.

Nothing here knows about echocardiography: ``pacs_agent`` declares its job with the same runner.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    """One named step. ``run`` takes the previous stage's value (a frozen dataclass) and
    returns the next one; its name is what the timings and the log call it."""

    name: str
    run: Callable[[Any], Any]


@dataclass(frozen=True)
class StageTiming:
    name: str
    elapsed_ms: float


@dataclass(frozen=True)
class StageTimings:
    """Each stage's wall time in the order the stages ran (a stage that ran more than once, in
    separate runs joined with ``+``, keeps each of its times)."""

    stages: tuple[StageTiming, ...] = ()

    def ms(self, name: str) -> float:
        """Milliseconds spent in the stages called ``name`` (0.0 when none ran)."""
        return sum(t.elapsed_ms for t in self.stages if t.name == name)

    @property
    def total_ms(self) -> float:
        return sum(t.elapsed_ms for t in self.stages)

    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.stages)

    def __add__(self, other: StageTimings) -> StageTimings:
        return StageTimings((*self.stages, *other.stages))


@dataclass(frozen=True)
class StageRun(Generic[T]):
    """The last stage's value and every stage's time."""

    value: T
    timings: StageTimings


def run_stages(
    stages: Sequence[Stage],
    value: Any,
    *,
    log: logging.Logger | None = None,
    label: str = "",
    level: int = logging.DEBUG,
    on_stage: Callable[[StageTiming, Any], None] | None = None,
) -> StageRun[Any]:
    """Runs ``stages`` in order on ``value``. Logs ``"<label>: <stage> <ms> ms"`` at ``level``
    on ``log`` after each stage, then calls ``on_stage(timing, value)`` when given (for a
    caller that records a stage's time with its result). A stage that raises is logged as
    failed, with its time, and the exception propagates unchanged."""
    logger = log if log is not None else _log
    prefix = f"{label}: " if label else ""
    names = [stage.name for stage in stages]
    if len(set(names)) != len(names):
        raise ValueError(f"stage names must be unique, got {names}")
    done: list[StageTiming] = []
    for stage in stages:
        started = time.perf_counter()
        try:
            value = stage.run(value)
        except BaseException:
            elapsed_ms = (time.perf_counter() - started) * 1000.0
            logger.log(level, "%s%s failed after %.1f ms", prefix, stage.name, elapsed_ms)
            raise
        timing = StageTiming(stage.name, (time.perf_counter() - started) * 1000.0)
        done.append(timing)
        logger.log(level, "%s%s %.1f ms", prefix, stage.name, timing.elapsed_ms)
        if on_stage is not None:
            on_stage(timing, value)
    return StageRun(value=value, timings=StageTimings(tuple(done)))
