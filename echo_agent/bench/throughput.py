"""``echo-agent bench throughput``: studies per hour through the scale-out deployment.

The same phantom studies (one A4C loop each, demo models, no language-model draft so the time
goes to the networks and the reporting objects) go by dcmtk ``storescu`` to a listener
(``serve --role listener``) with one ``echo-agent worker``, then, on a fresh database and an
emptied queue, with two. The clock runs from the first C-STORE to the last job done, with the
workers' models already loaded. The ratio says how far a second worker helps on this machine:
two workers on two cores cannot reach 2, since each job's torch calls already use both cores
and the listener shares them too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from echo_agent.bench.dcmtk import find_dcmtk_tool
from echo_agent.bench.ingest import STORESCU_PROPOSE, _free_port, _group_by_syntax

SECONDS_PER_HOUR = 3600.0
START_TIMEOUT_S = 300.0
RUN_TIMEOUT_S = 3600.0


@dataclass(frozen=True)
class ThroughputRun:
    workers: int
    studies: int
    seconds: float

    @property
    def studies_per_hour(self) -> float:
        return self.studies / self.seconds * SECONDS_PER_HOUR


@dataclass(frozen=True)
class ThroughputResult:
    runs: tuple[ThroughputRun, ...]
    cpu_count: int

    @property
    def ratio(self) -> float:
        """Throughput with two workers over throughput with one."""
        one, two = self.runs
        return two.studies_per_hour / one.studies_per_hour


def run_throughput_bench(
    workdir: Path,
    studies: int,
    broker_url: str,
    postgres_admin_url: str,
    worker_counts: Sequence[int] = (1, 2),
) -> ThroughputResult:
    """Runs the deployment once per entry of ``worker_counts`` on the same studies. Needs
    dcmtk's ``storescu``, the broker and PostgreSQL (a database is created and dropped per
    run through ``postgres_admin_url``)."""
    from inference.phantom import generate_phantoms

    dcmtk_storescu()  # before minutes of rendering, not after
    files = generate_phantoms(workdir / "studies", n=studies, seed=7070, distractors=False)
    groups = _group_by_syntax(files)
    runs = []
    for workers in worker_counts:
        with _fresh_database(postgres_admin_url) as database_url:
            home = workdir / f"run-{workers}"
            seconds = _timed_run(home, database_url, broker_url, workers, groups, len(files))
        runs.append(ThroughputRun(workers=workers, studies=len(files), seconds=seconds))
    return ThroughputResult(runs=tuple(runs), cpu_count=os.cpu_count() or 1)


def format_table(result: ThroughputResult) -> str:
    lines = [
        "| workers | studies | seconds | studies/hour |",
        "|---:|---:|---:|---:|",
    ]
    for run in result.runs:
        lines.append(
            f"| {run.workers} | {run.studies} | {run.seconds:.1f} | {run.studies_per_hour:.0f} |"
        )
    lines.append("")
    if len(result.runs) == 2:
        lines.append(
            f"2 workers / 1 worker = {result.ratio:.2f} (on {result.cpu_count} CPU cores; demo "
            "models, no language-model draft; first C-STORE to last job done)"
        )
    return "\n".join(lines)


@contextlib.contextmanager
def _fresh_database(admin_url: str) -> Iterator[str]:
    """A new PostgreSQL database for one run, dropped afterwards."""
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"echo_agent_bench_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        yield admin.url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def _timed_run(
    home: Path,
    database_url: str,
    broker_url: str,
    workers: int,
    groups: dict[str, list[Path]],
    n_files: int,
) -> float:
    dicom_port, web_port = _free_port(), _free_port()
    home.mkdir(parents=True)
    config = home / "echo-agent.toml"
    config.write_text(
        "\n".join(
            [
                f'home = "{home / "shared"}"',
                "[dicom]",
                f"port = {dicom_port}",
                "stable_age_s = 1.0",
                "min_free_disk_mb = 0",
                "[web]",
                f"port = {web_port}",
                "[database]",
                f'url = "{database_url}"',
                "[selection]",
                'view_classifier = "phantom"',
                "[queue]",
                'backend = "celery"',
                f'broker_url = "{broker_url}"',
                "[llm]",
                "chat = false",
                "draft = false",
            ]
        )
        + "\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECHO_AGENT_")}
    env["ECHO_AGENT_CONFIG"] = str(config)
    command = [sys.executable, "-m", "echo_agent.cli"]
    subprocess.run([*command, "db", "upgrade"], env=env, check=True, capture_output=True)
    _purge_queue(config)
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []
    try:
        for name, args in [("listener", ["serve", "--role", "listener"])] + [
            (f"worker-{i}", ["worker"]) for i in range(workers)
        ]:
            log_path = home / f"{name}.log"
            with log_path.open("wb") as out:
                proc = subprocess.Popen(
                    [*command, *args], env=env, stdout=out, stderr=subprocess.STDOUT
                )
            procs.append((proc, log_path))
        for proc, log_path in procs:
            marker = "is running" if "listener" in log_path.name else " ready."
            _wait_for_log(proc, log_path, marker)
        engine = sa.create_engine(database_url)
        try:
            started = time.perf_counter()
            _send(dicom_port, groups)
            _wait_for_jobs(engine, n_files)
            return time.perf_counter() - started
        finally:
            engine.dispose()
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, _ in procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _purge_queue(config_path: Path) -> None:
    """Drops messages an earlier run left in the broker (they name jobs of another database)."""
    from pacs_agent.celery_queue import make_celery_app
    from pacs_agent.config import load_config

    app = make_celery_app(load_config(config_path, environ={}))
    try:
        app.control.purge()
    finally:
        app.close()


def _wait_for_log(proc: subprocess.Popen[bytes], log_path: Path, marker: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while marker not in log_path.read_text(errors="replace"):
        if proc.poll() is not None:
            raise RuntimeError(f"{log_path.stem} exited {proc.returncode}: see {log_path}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{log_path.stem} did not start in {START_TIMEOUT_S:.0f} s")
        time.sleep(0.2)


def dcmtk_storescu() -> str:
    return find_dcmtk_tool("storescu")


def _send(port: int, groups: dict[str, list[Path]]) -> None:
    storescu = dcmtk_storescu()
    for syntax, paths in groups.items():
        command = [storescu, "-aet", "BENCH", "-aec", "ECHOAGENT", STORESCU_PROPOSE[syntax]]
        done = subprocess.run(
            [*command, "127.0.0.1", str(port), *map(str, paths)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"storescu failed: {done.stderr.strip()[-500:]}")


def _wait_for_jobs(engine: sa.Engine, n_jobs: int) -> None:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while True:
        with engine.connect() as conn:
            states = [row[0] for row in conn.execute(sa.text("SELECT state FROM jobs"))]
        if len(states) >= n_jobs and all(s in ("done", "failed") for s in states):
            failed = states.count("failed")
            if failed:
                raise RuntimeError(f"{failed} of {n_jobs} jobs failed")
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"jobs not finished after {RUN_TIMEOUT_S:.0f} s: {states}")
        time.sleep(0.5)
