"""A whole node in the test process (listener, assembler, workers, web on free ports) and a
phantom loop sent to it over DICOM under a chosen patient name, for end-to-end tests."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
from dicom_helpers import send_files
from sqlalchemy import select
from support import find_free_port, phantom_truth

from echo_agent.node import RunningNode, start_node
from pacs_agent.config import Config, DatabaseConfig, DicomConfig, LlmConfig, WebConfig
from pacs_agent.db import upgrade
from pacs_agent.db.models import Job
from pacs_agent.jobs import DELIVERY_KINDS, KIND_ANALYZE, TERMINAL_STATES
from pacs_agent.startup import prepare_home


def node_config(home: Path, database_url: str, **sections: object) -> Config:
    """Free ports, a short stable age, no disk guard, no language model (its conversion takes
    a minute and has its own tests); ``sections`` replace whole sections (``web=WebConfig(..)``).
    """
    config = Config(
        home=str(home),
        database=DatabaseConfig(url=database_url),
        dicom=DicomConfig(port=find_free_port(), stable_age_s=0.5, min_free_disk_mb=0),
        web=WebConfig(port=find_free_port()),
        llm=dataclasses.replace(LlmConfig(), draft=False, chat=False),
    )
    return dataclasses.replace(config, **sections)


@contextmanager
def running_node(config: Config) -> Iterator[RunningNode]:
    prepare_home(config)
    upgrade(config.database_url)  # PostgreSQL is never migrated by the node itself
    node = start_node(config)
    try:
        yield node
    finally:
        node.stop()


def first_a4c_loop(phantoms: list[Path]) -> Path:
    return next(p for p in phantoms if phantom_truth(p)["view"] == "A4C")


def send_as_patient(node: RunningNode, source: Path, patient_name: str, folder: Path) -> str:
    """C-STOREs a copy of ``source`` renamed to ``patient_name``; returns its SOP Instance UID."""
    ds = pydicom.dcmread(source)
    ds.PatientName = patient_name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / source.name
    ds.save_as(path)
    statuses = send_files("127.0.0.1", node.dicom_port, [path], calling_ae="TESTPACS")
    assert statuses == [0], statuses
    return str(ds.SOPInstanceUID)


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout_s} s")
        time.sleep(0.2)


def job_states(node: RunningNode) -> list[str]:
    with node.session_factory() as session:
        return list(session.scalars(select(Job.state).order_by(Job.id)))


def wait_for_jobs_done(node: RunningNode, count: int, timeout_s: float = 240.0) -> None:
    """Until ``count`` analysis jobs are done and the deliveries they queued have ended; a
    failed job ends the wait at once with its error."""

    def done() -> bool:
        with node.session_factory() as session:
            rows = session.execute(select(Job.kind, Job.state, Job.last_error)).all()
        failed = [error for _, state, error in rows if state == "failed"]
        if failed:
            raise AssertionError(f"job failed: {failed[0]}")
        analysed = sum(kind == KIND_ANALYZE and state == "done" for kind, state, _ in rows)
        delivering = any(state not in TERMINAL_STATES for kind, state, _ in rows
                         if kind in DELIVERY_KINDS)  # fmt: skip
        return analysed >= count and not delivering

    wait_for(done, timeout_s, f"{count} job(s) done")
