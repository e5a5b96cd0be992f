"""The node under fuzz: its DICOM listener in a process of its own (``FuzzNode``), so a crash
shows as an exit, not as a failure of the process that sends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

NODE_START_TIMEOUT_S = 60.0
NODE_STOP_TIMEOUT_S = 15.0
READY_MARKER = "FUZZ-LISTENER-READY"
BYTES_PER_MB = 1_000_000


class FuzzNode:
    """The node's DICOM listener (``start_storage_scp``, as ``echo-agent serve`` runs it) in a
    process of its own, with its own home, SQLite database and store: a crash shows as an exit,
    not as a failure of the process that sends."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.log_path = home / "listener.log"
        self._process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.restarts = 0
        self.peak_rss_mb = 0.0

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "echo_agent.bench.fuzz", "--listen", str(self.home)],
                stdout=subprocess.PIPE,
                stderr=log,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self.port = self._read_port(self._process)

    def _read_port(self, process: subprocess.Popen[bytes]) -> int:
        assert process.stdout is not None
        deadline = time.monotonic() + NODE_START_TIMEOUT_S
        line = b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([process.stdout], [], [], 0.2)
            if ready:
                line = process.stdout.readline()
                if line.startswith(READY_MARKER.encode()):
                    return int(line.split()[1])
            if process.poll() is not None:
                break
        self.stop()
        raise RuntimeError(f"the fuzz listener did not start: see {self.log_path}")

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _note_peak_rss(self) -> None:
        """The listener's peak resident memory so far (VmHWM, Linux), kept over restarts."""
        if self._process is None:
            return
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{self._process.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    kib = int(line.split()[1])
                    self.peak_rss_mb = max(self.peak_rss_mb, kib * 1024 / BYTES_PER_MB)

    def restart(self) -> None:
        self.stop()
        self.restarts += 1
        self.start()

    def stop(self) -> None:
        self._note_peak_rss()
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=NODE_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()

    @property
    def store(self) -> Path:
        return self.home / "store"

    def database_url(self) -> str:
        return f"sqlite:///{self.home / 'echo-agent.db'}"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> FuzzNode:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def listen(home: Path) -> int:
    """The child: the listener on a free loopback port until SIGTERM."""
    from pacs_agent.config import Config, DatabaseConfig, DicomConfig
    from pacs_agent.db import make_engine, upgrade
    from pacs_agent.dicom.scp import start_storage_scp
    from pacs_agent.logs import configure_logging

    configure_logging("INFO")
    config = Config(
        home=str(home),
        dicom=dataclasses.replace(DicomConfig(), host="127.0.0.1", port=0, min_free_disk_mb=0),
        database=DatabaseConfig(),
    )
    upgrade(config.database_url)
    engine = make_engine(config.database_url)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    parent = os.getppid()
    scp = start_storage_scp(config, engine)
    print(f"{READY_MARKER} {scp.port}", flush=True)
    try:
        # until SIGTERM, or until the sender is gone (killed), so no listener is left behind
        while not stop.wait(0.5) and os.getppid() == parent:
            continue
    finally:
        scp.shutdown(timeout_s=5)
        engine.dispose()
    return 0
