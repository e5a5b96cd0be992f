"""``echo-agent evaluate gate --write-reference`` builds the out-of-distribution reference from
every training data set it is given (``--reference-data`` repeated): models trained on B-mode
and classic loops together need loops of both, or one kind reads as out of distribution. One
small B-mode loop per folder keeps the command quick; ``--limit`` caps each folder."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from inference.phantom.bmode import generate_bmode

FAST = "export_small"


@pytest.mark.slow
def test_reference_is_built_from_every_folder_given(echo_agent_exe, tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    generate_bmode(first, 2, 31, families=[FAST], progress=False)
    generate_bmode(second, 1, 32, families=[FAST], progress=False)
    target = tmp_path / "reference.json"
    result = subprocess.run(
        [echo_agent_exe, "evaluate", "gate", "--write-reference", str(target),
         "--reference-data", str(first), "--reference-data", str(second), "--limit", "1",
         "--data", str(second), "--out", str(tmp_path / "out")],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    reference = json.loads(target.read_text())
    assert reference["n_loops"] == 2  # one of each folder: --limit applies per folder
    assert "first, second" in reference["source"]
    assert "OOD reference from 2 loops" in result.stdout
