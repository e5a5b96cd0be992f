"""dcmtk's command-line tools, the peers the benchmarks (and tests) measure against, by their
absolute path.

pynetdicom 3 installs Python scripts named ``storescu``, ``storescp``, ``echoscu``, ``findscu``,
``movescu`` (and a few more) into the virtual environment's ``bin``; with the environment
activated they come first on PATH and take none of dcmtk's options. A benchmark that ran
whatever PATH finds first would measure the wrong peer, so every command the project builds for
dcmtk names ``DCMTK_BIN/<tool>`` (``/usr/bin/storescu``: where Debian's ``dcmtk`` package puts
them), never a bare name.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

# The one place that says where dcmtk lives (Debian/Ubuntu package ``dcmtk``).
DCMTK_BIN = Path("/usr/bin")
# dcmtk tools that pynetdicom's console scripts of the same name shadow on PATH
SHADOWED_BY_PYNETDICOM = frozenset(
    {"echoscp", "echoscu", "findscu", "getscu", "movescu", "qrscp", "storescp", "storescu"}
)


def dcmtk_path(name: str) -> str:
    """``DCMTK_BIN/name`` as a string, checked for nothing (see ``find_dcmtk_tool``)."""
    if "/" in name or not name:
        raise ValueError(f"a dcmtk tool name, not a path: {name!r}")
    return str(DCMTK_BIN / name)


def find_dcmtk_tool(name: str) -> str:
    """dcmtk's ``name`` at ``/usr/bin``; FileNotFoundError when that is missing or is not
    dcmtk's compiled tool (a script: pynetdicom's). PATH is never consulted."""
    path = dcmtk_path(name)
    if not Path(path).is_file() or not _is_dcmtk(path):
        raise FileNotFoundError(f"{path} (Debian package dcmtk) is needed here")
    return path


def _is_dcmtk(path: str) -> bool:
    with Path(path).open("rb") as fh:
        if fh.read(2) == b"#!":  # a script: pynetdicom's, not dcmtk's compiled tool
            return False
    try:
        done = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "dcmtk" in (done.stdout + done.stderr).lower()
