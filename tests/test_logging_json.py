"""Structured logs: JSON lines with the study, job and instance a line is about, and never a
patient's name, checked on a real node that receives a loop over DICOM and analyses it."""

from __future__ import annotations

import io
import json
import logging
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from running_node import (
    first_a4c_loop,
    node_config,
    running_node,
    send_as_patient,
    wait_for_jobs_done,
)
from sqlalchemy import select

from pacs_agent.config import ConfigError, load_config
from pacs_agent.db.models import Instance, Job
from pacs_agent.logcontext import (
    ContextFilter,
    JsonFormatter,
    TextFormatter,
    current_context,
    log_context,
)

PATIENT = "Doe^Jane"


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """Every record of every logger, as the node's JSON handler writes it."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield buffer
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)


def test_a_study_through_the_node_logs_ids_and_never_the_patient_name(
    tmp_path: Path, phantom_studies: list[Path], json_lines: io.StringIO
) -> None:
    config = node_config(tmp_path / "home", f"sqlite:///{tmp_path / 'node.db'}")
    with running_node(config) as node:
        sop_uid = send_as_patient(
            node, first_a4c_loop(phantom_studies), PATIENT, tmp_path / "to-send"
        )
        wait_for_jobs_done(node, 1)
        with node.session_factory() as session:
            job_id, study_id = session.execute(select(Job.id, Job.study_fk)).one()
            assert session.scalar(select(Instance.sop_instance_uid)) == sop_uid

    lines = [line for line in json_lines.getvalue().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert len(records) > 10
    for record in records:
        assert {"time", "level", "logger", "message"} <= set(record)
    for forbidden in ("Doe", "Jane"):
        leaked = [line for line in lines if forbidden in line]
        assert not leaked, leaked[:3]

    stored = [r for r in records if r["message"].startswith("stored ")]
    assert stored and all(r.get("instance_uid") == sop_uid for r in stored)
    job_lines = [r for r in records if r.get("job_id") == job_id]
    messages = " | ".join(r["message"] for r in job_lines)
    assert "analysed" in messages
    assert any(r["logger"] == "pacs_agent.pipeline" for r in job_lines), messages
    for record in job_lines:
        assert record["study_id"] == study_id
        assert record["instance_uid"] == sop_uid
    # lines about no job (start-up, the listener) carry no stale ids
    started = [r for r in records if "schema" in r["message"] and r["logger"] == "echo_agent.node"]
    assert started and all("job_id" not in r for r in started)


def _record(message: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("echo_agent.test", logging.INFO, __file__, 1, message, (), None)
    for key, value in extra.items():
        setattr(record, key, value)
    ContextFilter().filter(record)
    return record


def test_the_context_nests_resets_and_stays_in_its_thread() -> None:
    seen_in_thread: list[dict] = []
    with log_context(study_id=3):
        with log_context(job_id=7, instance_uid="1.2.3"):
            assert dict(current_context()) == {"study_id": 3, "job_id": 7, "instance_uid": "1.2.3"}
            thread = threading.Thread(target=lambda: seen_in_thread.append(dict(current_context())))
            thread.start()
            thread.join()
        assert dict(current_context()) == {"study_id": 3}
    assert dict(current_context()) == {}
    assert seen_in_thread == [{}]
    with pytest.raises(ValueError, match="patient_name"), log_context(patient_name="x"):
        pass


def test_json_and_text_lines_carry_the_ids_and_extra_wins() -> None:
    with log_context(study_id=4, job_id=9):
        record = _record("job %d: analysed", job_id=11)
        record.args = (11,)
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "job 11: analysed"
    assert (entry["study_id"], entry["job_id"]) == (4, 11)  # extra= beats the context
    assert entry["level"] == "INFO" and entry["logger"] == "echo_agent.test"
    assert entry["time"].endswith("+00:00")
    text = TextFormatter().format(record)
    assert text.endswith("job 11: analysed [study=4 job=11]")
    plain = TextFormatter().format(_record("no ids here"))
    assert plain.endswith("echo_agent.test: no ids here")


def test_an_exception_keeps_its_traceback_in_one_json_line() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.LogRecord(
            "echo_agent.test", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    line = JsonFormatter().format(record)
    assert "\n" not in line
    assert "RuntimeError: boom" in json.loads(line)["exception"]


def test_the_log_format_is_a_checked_setting(tmp_path: Path) -> None:
    assert load_config(environ={"ECHO_AGENT_LOGGING_FORMAT": "json"}).logging.format == "json"
    assert load_config(environ={}).logging.format == "text"
    with pytest.raises(ConfigError, match=r"logging\.format"):
        load_config(environ={"ECHO_AGENT_LOGGING_FORMAT": "xml"})
