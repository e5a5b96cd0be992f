"""``echo-agent bench pipeline`` end to end on one phantom study: a real node, real dcmtk
``storescu`` associations, and a table whose stages come from the job's own log and rows."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from support import require_or_skip

from echo_agent.bench.pipeline import (
    COLUMNS,
    dcmtk_storescu,
    format_table,
    run_pipeline_bench,
)
from pacs_agent.config import Config, LlmConfig


@pytest.mark.slow
def test_one_study_is_timed_from_the_last_store_to_the_report(tmp_path: Path) -> None:
    try:
        dcmtk_storescu()
    except FileNotFoundError as exc:
        require_or_skip(str(exc))
    # a short stable age and no language model keep the smoke test short; the real run uses
    # the embedded defaults (stable age 10 s, the embedded model's draft)
    base = Config()
    config = dataclasses.replace(
        base, dicom=dataclasses.replace(base.dicom, stable_age_s=1.0), llm=LlmConfig(draft=False)
    )
    result = run_pipeline_bench(tmp_path, studies=1, config=config)

    assert len(result.studies) == 1
    study = result.studies[0]
    assert study.state == "done"
    assert study.instances >= 1
    stages = study.stages_s
    for key in ("decode_s", "segmentation_s", "ef_s", "measurements_s", "write_outputs_s"):
        assert stages[key] > 0, key
    assert stages["assembly_s"] >= 1.0  # the stable age is waited for
    assert stages["queue_s"] >= 0
    # the stages fit inside the end-to-end time
    inside = ("assembly_s", "queue_s", "decode_and_analysis_wall_s", "write_outputs_s")
    assert sum(stages[k] for k in inside) <= study.total_s + 0.5
    # the row names the loop it wrote (frames x rows x cols) and the load it ran under
    frames, rows_cols = study.loop.split(" x ")
    assert int(frames) > 1 and all(int(n) > 0 for n in rows_cols.split("x"))
    assert study.load_1min is not None and study.load_1min >= 0
    table = format_table(result)
    assert "0 export destination(s)" in table
    assert study.loop in table and "load (1 min)" in table
    assert all(name in table for name, _ in COLUMNS)
    csv = format_table(result, "csv").splitlines()
    assert len(csv) == 2 and csv[0].startswith("study,state,instances")
