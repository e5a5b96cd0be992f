"""A job's folder under ``<home>/jobs/<id>``: where it is, its file names, and its JSON-lines
log, which keeps every attempt's events and which the metrics, the benches and the tests read
back. Written files go through a rename, so a reader or a re-run never sees half a file.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pacs_agent.config import Config
from pacs_agent.db.models import utcnow

log = logging.getLogger("pacs_agent.pipeline")  # the job's lines keep their logger name

JOBS_DIR_NAME = "jobs"
JOB_LOG_NAME = "log.jsonl"
DECODED_SUMMARY_NAME = "decoded.json"
MEASUREMENTS_NAME = "measurements.json"


@dataclass(frozen=True)
class JobContext:
    """What a stage needs to know about the job it serves."""

    job_id: int
    study_id: int
    instance_id: int
    attempt: int
    path: Path
    output_dir: Path


def job_output_dir(config: Config, job_id: int) -> Path:
    return config.home_path / JOBS_DIR_NAME / str(job_id)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write-then-rename: a reader (or a re-run) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(partial, path)


def write_log(context: JobContext, event: str, **fields: Any) -> None:
    """One JSON line per event in the job's log, which keeps every attempt's lines."""
    context.output_dir.mkdir(parents=True, exist_ok=True)
    line = {"at": utcnow().isoformat(), "job": context.job_id, "event": event, **fields}
    with (context.output_dir / JOB_LOG_NAME).open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(line) + "\n")
    log.info("job %d: %s %s", context.job_id, event, json.dumps(fields, default=str))


def read_log(output_dir: Path) -> list[dict[str, Any]]:
    path = output_dir / JOB_LOG_NAME
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
