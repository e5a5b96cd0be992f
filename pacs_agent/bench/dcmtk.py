"""Finding dcmtk's command-line tools, the peers the benchmarks measure against.

pynetdicom 3 installs Python scripts named ``storescu``, ``storescp`` and ``echoscu`` into the
virtual environment's ``bin``; with the environment activated they come first on PATH and take
none of dcmtk's options. A benchmark that silently ran them would measure the wrong peer.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


def find_dcmtk_tool(name: str) -> str:
    """The path of dcmtk's ``name``; FileNotFoundError when dcmtk is not installed."""
    folders = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d]
    folders += ["/usr/bin", "/usr/local/bin"]
    for folder in dict.fromkeys(folders):
        candidate = shutil.which(name, path=folder)
        if candidate is not None and _is_dcmtk(candidate):
            return candidate
    raise FileNotFoundError(f"{name} (Debian package dcmtk) is needed here")


def _is_dcmtk(path: str) -> bool:
    with Path(path).open("rb") as fh:
        if fh.read(2) == b"#!":  # a script: pynetdicom's, not dcmtk's compiled tool
            return False
    try:
        done = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "dcmtk" in (done.stdout + done.stderr).lower()
