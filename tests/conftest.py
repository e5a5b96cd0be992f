"""Shared fixtures: databases on both backends, the console script, free ports."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from support import require_or_skip

REPO_ROOT = Path(__file__).resolve().parents[1]
POSTGRES_ADMIN_URL = os.environ.get(
    "ECHO_AGENT_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


@pytest.fixture(scope="session")
def echo_agent_exe() -> str:
    beside = Path(sys.executable).with_name("echo-agent")
    found = str(beside) if beside.exists() else shutil.which("echo-agent")
    if not found:
        pytest.fail("the echo-agent console script is not installed (pip install -e .)")
    return found


@pytest.fixture
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database on loopback, dropped afterwards."""
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"echo_agent_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except sa.exc.OperationalError as exc:
        admin.dispose()
        require_or_skip(f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}: {exc.orig}")
    url = admin.url.set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test once on SQLite (the embedded default) and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'echo-agent.db'}"
    return request.getfixturevalue("postgres_url")


def reference_dir() -> Path:
    """``shared/`` sits beside the checkout, as in CI, or beside the local repository this one
    was cloned from (a scratch clone in /tmp); ``ECHO_AGENT_REFERENCE_DIR`` overrides both."""
    override = os.environ.get("ECHO_AGENT_REFERENCE_DIR")
    if override:
        return Path(override)
    beside = REPO_ROOT.parent / "shared" / "reference"
    origin = _local_origin()
    if not beside.is_dir() and origin is not None:
        return origin.parent / "shared" / "reference"
    return beside


def _local_origin() -> Path | None:
    """The directory of the ``origin`` remote when it is a local path, else None."""
    import subprocess

    url = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "config", "--get", "remote.origin.url"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    url = url.removeprefix("file://")
    return Path(url).resolve() if url and Path(url).is_dir() else None


@pytest.fixture(scope="session")
def torchvision_reference() -> dict:
    """The torchvision layout and conformance vectors of the EchoNet-Dynamic networks."""
    path = reference_dir() / "torchvision_layout.json"
    if not path.is_file():
        require_or_skip(f"reference layout not found at {path} (set ECHO_AGENT_REFERENCE_DIR)")
    return json.loads(path.read_text())


@pytest.fixture(scope="session")
def phantom_studies(tmp_path_factory) -> list[Path]:
    """Four phantom studies (every transfer syntax the generator writes, with distractors),
    generated once per test run and shared, read-only, by every test that needs real loops."""
    from inference.phantom import generate_phantoms

    out = tmp_path_factory.mktemp("phantom_studies")
    return generate_phantoms(out, n=4, seed=1234)
