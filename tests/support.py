"""Helpers shared by the tests (imported as ``from support import ...``)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
from pathlib import Path

import pytest


def _running_in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_or_skip(reason: str) -> None:
    """Skips locally, fails in CI: CI installs and starts every peer, so a missing one is a bug."""
    if _running_in_ci():
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


def need_tool(name: str, package: str) -> str:
    """The path of a command-line peer (dcmtk, dicom3tools, Orthanc, chromium).

    The virtual environment's ``bin`` is left out of the search: pynetdicom 3 installs its own
    ``storescp``/``storescu``/``echoscu`` there, which would silently replace dcmtk's."""
    venv_bin = Path(sys.prefix) / "bin"
    search = os.pathsep.join(
        d for d in os.environ.get("PATH", "").split(os.pathsep) if d and Path(d) != venv_bin
    )
    path = shutil.which(name, path=search) or (
        f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None
    )
    if path is None:
        require_or_skip(f"{name} is not installed (apt-get install {package})")
    return str(path)


def phantom_truth(path: Path) -> dict:
    return json.loads(path.with_suffix(".json").read_text())


def find_free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
