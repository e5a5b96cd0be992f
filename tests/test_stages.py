"""The declared-stage runner (``inference.stages``): stages run in order on frozen values, each
is timed and logged once, and a failing stage is named in the log while its error travels on."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pytest

from inference.stages import Stage, StageTiming, StageTimings, run_stages


@dataclass(frozen=True)
class Count:
    n: int


def test_stages_run_in_order_and_each_is_timed_and_logged(caplog) -> None:
    seen: list[tuple[str, int]] = []
    stages = (
        Stage("double", lambda c: Count(c.n * 2)),
        Stage("add_one", lambda c: Count(c.n + 1)),
    )
    with caplog.at_level(logging.INFO, logger="test.stages"):
        run = run_stages(
            stages,
            Count(5),
            log=logging.getLogger("test.stages"),
            label="job 7",
            level=logging.INFO,
            on_stage=lambda timing, value: seen.append((timing.name, value.n)),
        )
    assert run.value == Count(11)
    assert run.timings.names() == ("double", "add_one")
    assert all(t.elapsed_ms >= 0 for t in run.timings.stages)
    assert run.timings.total_ms == pytest.approx(sum(t.elapsed_ms for t in run.timings.stages))
    assert seen == [("double", 10), ("add_one", 11)]
    lines = [r.getMessage() for r in caplog.records if r.name == "test.stages"]
    assert len(lines) == 2 and lines[0].startswith("job 7: double ") and lines[0].endswith(" ms")


def test_a_failing_stage_is_logged_and_its_error_propagates(caplog) -> None:
    def broken(_: Count) -> Count:
        raise KeyError("no such thing")

    ran_after: list[int] = []
    stages = (Stage("broken", broken), Stage("after", lambda c: ran_after.append(1) or c))
    with caplog.at_level(logging.DEBUG, logger="inference.stages"), pytest.raises(KeyError):
        run_stages(stages, Count(1))
    assert ran_after == []
    assert any("broken failed after" in r.getMessage() for r in caplog.records)


def test_stage_names_are_unique_and_timings_add_up() -> None:
    with pytest.raises(ValueError, match="unique"):
        run_stages((Stage("a", lambda c: c), Stage("a", lambda c: c)), Count(0))
    joined = StageTimings((StageTiming("a", 2.0),)) + StageTimings((StageTiming("a", 3.0),))
    assert joined.ms("a") == 5.0 and joined.ms("missing") == 0.0
