"""The node as an operator runs it (``echo-agent serve`` in a subprocess): killed with SIGKILL
while a job runs, restarted, and the job finishes exactly once; SIGTERM stops it cleanly."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import urllib.request
from pathlib import Path

import held_analysis
import pytest
from dicom_helpers import run_storescu
from orthanc_helpers import free_tcp_port, phantom_cache, phantom_studies, truth, wait_until

from pacs_agent.pipeline import (
    DECODED_SUMMARY_NAME,
    JOB_LOG_NAME,
    MEASUREMENTS_NAME,
    OUTPUTS_DIR_NAME,
    read_log,
)

SEED = 900002


@pytest.fixture(scope="module")
def a4c_loop(request, tmp_path_factory) -> Path:
    files = phantom_studies(phantom_cache(request.config, tmp_path_factory), 1, SEED)
    return next(p for p in files if truth(p)["view"] == "A4C")


class Node:
    """``echo-agent serve`` with its own home and ports; output goes to files in home."""

    def __init__(self, exe: str, home: Path) -> None:
        self.exe = exe
        self.home = home
        self.dicom_port = free_tcp_port()
        self.web_port = free_tcp_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    def start(self, held: bool = False) -> None:
        """``echo-agent serve``; ``held``: with every analysis held (``held_analysis``)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("ECHO_AGENT_")}
        env.update(
            ECHO_AGENT_HOME=str(self.home),
            ECHO_AGENT_DICOM_PORT=str(self.dicom_port),
            ECHO_AGENT_WEB_PORT=str(self.web_port),
            ECHO_AGENT_DICOM_STABLE_AGE_S="1",
            ECHO_AGENT_DICOM_MIN_FREE_DISK_MB="0",
            ECHO_AGENT_SELECTION_VIEW_CLASSIFIER="phantom",
            ECHO_AGENT_LLM_DRAFT="false",  # drafting has its own test (test_pipeline_drafting)
        )
        command = held_analysis.command("serve") if held else [self.exe, "serve"]
        self.runs += 1
        self.home.mkdir(parents=True, exist_ok=True)
        with (self.home / f"node-{self.runs}.log").open("wb") as out:
            self.proc = subprocess.Popen(
                command, cwd=self.home, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        wait_until(self.healthy, 60, "the node's health endpoint", step_s=0.2)

    def healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"node exited {self.proc.returncode}:\n{self.output()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/healthz") as resp:
                return json.load(resp)["status"] == "ok"
        except OSError:
            return False

    def output(self) -> str:
        return (self.home / f"node-{self.runs}.log").read_text(errors="replace")

    def jobs(self) -> list[dict]:
        with sqlite3.connect(self.home / "echo-agent.db", timeout=30) as db:
            db.row_factory = sqlite3.Row
            return [dict(r) for r in db.execute("SELECT * FROM jobs ORDER BY id")]

    def stop(self, sig: int) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=60)


@pytest.fixture
def node(echo_agent_exe: str, tmp_path: Path):
    running = Node(echo_agent_exe, tmp_path / "home")
    yield running
    if running.proc is not None and running.proc.poll() is None:
        running.proc.kill()
        running.proc.wait(timeout=30)


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_a_job_killed_mid_run_finishes_exactly_once_after_restart(node, a4c_loop) -> None:
    node.start(held=True)  # the job's segmentation never starts: it runs until killed
    sent = run_storescu("127.0.0.1", node.dicom_port, [a4c_loop])
    assert sent.returncode == 0, sent.stderr

    def running() -> dict | None:
        for job in node.jobs():
            log = read_log(node.home / "jobs" / str(job["id"]))
            if job["state"] == "running" and any(e["event"] == "attempt" for e in log):
                return job
        return None

    job = wait_until(running, 120, "the job to run (and be held)", 0.3)
    assert job["attempts"] == 1 and job["heartbeat_at"] is not None
    assert node.stop(signal.SIGKILL) == -signal.SIGKILL
    assert node.jobs()[0]["state"] == "running", "a killed node leaves its job running"

    node.start()  # not held this time
    finished = wait_until(
        lambda: next((j for j in node.jobs() if j["state"] in ("done", "failed")), None),
        120,
        "the recovered job to finish",
        0.3,
    )
    assert (finished["id"], finished["state"], finished["attempts"]) == (job["id"], "done", 2)
    assert len(node.jobs()) == 1, "the study was not assembled into a second job"
    job_dir = node.home / "jobs" / str(job["id"])
    events = read_log(job_dir)
    assert [e["attempt"] for e in events if e["event"] == "attempt"] == [1, 2]
    assert [e["event"] for e in events].count("finished") == 1
    assert [e["event"] for e in events].count("analysed") == 1, "measured once, not twice"
    assert sorted(p.name for p in job_dir.iterdir()) == sorted(
        [DECODED_SUMMARY_NAME, JOB_LOG_NAME, MEASUREMENTS_NAME, OUTPUTS_DIR_NAME]
    )
    summary = json.loads((job_dir / DECODED_SUMMARY_NAME).read_text())
    assert summary["n_frames"] == truth(a4c_loop)["n_frames"]
    assert "recovered jobs: 1 queued again" in node.output()

    assert node.stop(signal.SIGTERM) == 0, node.output()
    assert "echo-agent stopped" in node.output()
    assert port_is_free(node.dicom_port) and port_is_free(node.web_port)
