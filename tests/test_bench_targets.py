"""The speed targets of issue #17 as the benches report them: decoding against dcmtk's
``dcmdjpeg`` side by side (``echo-agent bench inference``) and the per-loop writing time
against 1.5 s (``echo-agent bench pipeline``), each with its pass/fail verdict."""

from __future__ import annotations

from pathlib import Path

from pydicom import examples
from support import require_or_skip

from echo_agent.bench.dcmtk import find_dcmtk_tool
from echo_agent.bench.decode import (
    DCMDJPEG,
    DECODE_TARGET_RATIO,
    JOB_PATH,
    READ_CINE,
    DecodeTiming,
    format_decode_table,
    run_decode_bench,
)
from echo_agent.bench.machine import MachineLoad
from echo_agent.bench.pipeline import WRITE_TARGET_S, PipelineBenchResult, StudyTiming, format_table


def test_decoding_is_timed_beside_dcmdjpeg_on_the_same_file() -> None:
    try:
        find_dcmtk_tool("dcmdjpeg")
    except FileNotFoundError as exc:
        require_or_skip(str(exc))
    timings = run_decode_bench(Path(examples.get_path("ybr_color")), repeats=1)
    by_name = {t.decoder: t for t in timings}
    assert set(by_name) == {DCMDJPEG, JOB_PATH, READ_CINE}
    assert all(t.n_frames == 30 and t.best_s > 0 for t in timings)
    reference = by_name[DCMDJPEG]
    assert reference.ratio is None and reference.passed is None
    ours = by_name[JOB_PATH]
    assert ours.ratio == ours.best_s / reference.best_s
    table = format_decode_table(timings)
    assert "1.00x (reference)" in table and f"<= {DECODE_TARGET_RATIO:.1f}x" in table


def test_the_decode_verdict_follows_the_ratio() -> None:
    fast = DecodeTiming(JOB_PATH, 100, 1.0, DECODE_TARGET_RATIO)
    slow = DecodeTiming(JOB_PATH, 100, 1.3, DECODE_TARGET_RATIO + 0.01)
    assert fast.passed is True and slow.passed is False
    table = format_decode_table([DecodeTiming(DCMDJPEG, 100, 1.0, None), fast, slow])
    lines = table.splitlines()
    assert lines[3].endswith("| pass |") and lines[4].endswith("| FAIL |")


def _study(job_id: int | None, write_s: float | None) -> StudyTiming:
    stages = {} if write_s is None else {"write_outputs_s": write_s}
    state = "done" if job_id is not None else "not eligible"
    return StudyTiming(f"1.2.{job_id}", job_id, state, 1, 20.0, stages, None)


def test_the_pipeline_table_gives_each_loop_a_write_verdict() -> None:
    result = PipelineBenchResult(
        studies=[_study(1, 0.4), _study(2, WRITE_TARGET_S + 0.2), _study(None, None)],
        stable_age_s=10.0,
        models_ready_s=5.0,
        destinations=0,
        machine=MachineLoad(load_average_1min=9.5, cpus=2),
    )
    table = format_table(result)
    header, *rows = [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in table.splitlines()
        if line.startswith("| ")
    ]
    verdict = header.index(f"write <= {WRITE_TARGET_S:g} s")
    assert [row[verdict] for row in rows] == ["pass", "FAIL", "not run"]
    load = header.index("load (1 min)")
    assert [row[load] for row in rows] == ["not available"] * 3  # not measured per study here
    assert f"max {WRITE_TARGET_S + 0.2:.2f} s (target: at most {WRITE_TARGET_S:g} s): FAIL" in table
    csv = [line.split(",") for line in format_table(result, "csv").splitlines()]
    assert csv[1][csv[0].index(f"write <= {WRITE_TARGET_S:g} s")] == "pass"
    assert "2 CPU(s), 1-minute load average 9.5 when the run ended (busy" in table


def test_the_machine_note_says_when_the_load_is_unknown() -> None:
    assert "not available" in MachineLoad(None, 2).note()
    assert "busy" not in MachineLoad(0.5, 2).note()
