"""dcmtk's tools are named by their absolute path, whatever PATH says.

pip installs pynetdicom's own ``storescu``, ``storescp`` and ``echoscu`` scripts into the
virtual environment's ``bin``; with the environment activated (its ``bin`` first on PATH) a bare
``storescu`` is pynetdicom's. Every command the project builds for dcmtk (the benches' and the
tests' helpers) must name ``/usr/bin/storescu`` all the same.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
from dicom_helpers import require_tool, storescu_args
from pydicom.uid import ExplicitVRLittleEndian

from echo_agent.bench import pipeline, throughput
from echo_agent.bench.dcmtk import DCMTK_BIN, dcmtk_path, find_dcmtk_tool

VENV_BIN = Path(sys.prefix) / "bin"


@pytest.fixture
def venv_first(monkeypatch: pytest.MonkeyPatch) -> Path:
    """PATH as an activated virtual environment has it: its bin first."""
    monkeypatch.setenv("PATH", os.pathsep.join([str(VENV_BIN), os.environ.get("PATH", "")]))
    return VENV_BIN


def test_the_venv_shadows_dcmtk_on_path(venv_first: Path) -> None:
    """The premise: pynetdicom's script is what a bare name finds (else nothing is tested)."""
    found = shutil.which("storescu")
    if found is None or Path(found).parent != venv_first:
        pytest.skip("pynetdicom's storescu is not in this environment's bin")
    assert Path(found).read_bytes()[:2] == b"#!"  # a Python script, not dcmtk's binary


@pytest.mark.usefixtures("venv_first")
@pytest.mark.parametrize("tool", ["storescu", "storescp", "echoscu"])
def test_the_dcmtk_tool_is_named_by_its_absolute_path(tool: str) -> None:
    assert str(DCMTK_BIN) == "/usr/bin"
    assert dcmtk_path(tool) == f"/usr/bin/{tool}"
    assert find_dcmtk_tool(tool) == f"/usr/bin/{tool}"
    assert require_tool(tool) == f"/usr/bin/{tool}"


@pytest.mark.usefixtures("venv_first")
def test_every_command_built_for_storescu_names_usr_bin() -> None:
    command = storescu_args("127.0.0.1", 11112, [Path("x.dcm")], syntax=ExplicitVRLittleEndian)
    assert command[0] == "/usr/bin/storescu"
    assert pipeline.dcmtk_storescu() == "/usr/bin/storescu"
    assert throughput.dcmtk_storescu() == "/usr/bin/storescu"


def test_a_path_is_not_a_tool_name() -> None:
    with pytest.raises(ValueError):
        dcmtk_path("../storescu")
