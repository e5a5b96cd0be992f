"""What a job does: the stages between a stored loop and its results.

Today the stages are the ones that exist: load the instance from the store, decode its pixel
data, and record what was decoded (frames, timing) in the job's log. Segmentation, EF,
measurements, the language-model draft and the reporting objects plug in at
``analyse_and_report`` once the ``inference`` and ``reporting`` packages provide them; until
then a job ends "done" with no measurements, and none are invented.

A job may run more than once (a retry, or a crash and recovery after the outputs were written
but before the job was marked done), so every output is written so that a second run replaces
the first instead of adding to it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from inference.decode import DecodeError, read_cine
from inference.types import Cine
from pacs_agent.config import Config
from pacs_agent.db.models import Instance, Job, utcnow
from pacs_agent.jobs import KIND_ANALYZE, PermanentJobError

log = logging.getLogger(__name__)

# Test-only: seconds to wait after decoding, so a test can catch a job while it runs.
TEST_DELAY_ENV = "ECHO_AGENT_TEST_JOB_DELAY_S"
JOBS_DIR_NAME = "jobs"
JOB_LOG_NAME = "log.jsonl"
DECODED_SUMMARY_NAME = "decoded.json"


class PixelDataError(PermanentJobError):
    """The pixel data is corrupt, truncated or in an encoding no installed decoder reads."""


class StoredInstanceError(PermanentJobError):
    """The job's instance is missing from the database or the store."""


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


def run_job(job_id: int, session_factory: sessionmaker[Session], config: Config) -> None:
    """Runs one job's stages. Raises PermanentJobError subclasses for what a retry cannot fix;
    any other exception is a failed attempt that the queue retries with back-off."""
    context = load_context(job_id, session_factory, config)
    write_log(context, "attempt", attempt=context.attempt)
    loop = decode_loop(context.path)
    summary = loop_summary(loop)
    write_json_atomic(context.output_dir / DECODED_SUMMARY_NAME, summary)
    write_log(context, "decoded", **summary)
    _test_delay()
    analyse_and_report(context, loop, session_factory, config)
    write_log(context, "finished", attempt=context.attempt)


def load_context(job_id: int, session_factory: sessionmaker[Session], config: Config) -> JobContext:
    with session_factory() as session:
        job = session.get(Job, job_id)
        if job is None:
            raise StoredInstanceError(f"job {job_id} does not exist")
        if job.kind != KIND_ANALYZE:
            raise PermanentJobError(f"job {job_id} has kind {job.kind!r}, which nothing runs")
        instance = session.get(Instance, job.instance_fk) if job.instance_fk else None
        if instance is None:
            raise StoredInstanceError(f"job {job_id}: its instance is no longer in the database")
        path = config.store_path / instance.file_path
        if not path.is_file():
            raise StoredInstanceError(
                f"job {job_id}: {instance.file_path} is missing from the store"
            )
        return JobContext(
            job_id=job.id,
            study_id=job.study_fk,
            instance_id=instance.id,
            attempt=job.attempts,
            path=path,
            output_dir=job_output_dir(config, job.id),
        )


def decode_loop(path: Path) -> Cine:
    """Decodes every frame with the inference package's decoder; any failure is a
    PixelDataError, which fails the job at once (a retry cannot mend corrupt pixels)."""
    try:
        return read_cine(path)
    except DecodeError as exc:
        raise PixelDataError(str(exc)) from exc


def loop_summary(cine: Cine) -> dict[str, Any]:
    """What the job log and ``decoded.json`` record of a decoded loop (no patient data)."""
    return {
        "sop_instance_uid": cine.sop_instance_uid,
        "n_frames": cine.n_frames,
        "rows": int(cine.frames.shape[1]),
        "cols": int(cine.frames.shape[2]),
        "frame_time_ms": None if cine.frame_time_ms is None else round(cine.frame_time_ms, 4),
        "frame_time_source": cine.frame_time_source,
        "duration_s": None if cine.duration_s is None else round(cine.duration_s, 4),
        "heart_rate_bpm": cine.heart_rate_bpm,
        "spacing_cm": None if cine.spacing_cm is None else list(cine.spacing_cm),
        "notes": list(cine.notes),
    }


def analyse_and_report(
    context: JobContext,
    loop: Cine,
    session_factory: sessionmaker[Session],
    config: Config,
) -> None:
    """PLUG-IN POINT for the analysis and its outputs, in this order:

    1. ``inference``: preprocess ``loop`` -> segment the LV per frame -> EF (per clip and per
       beat) -> measurements; store one ``Analysis`` row per job (``job_fk`` is unique: update
       it on a re-run, never add a second).
    2. the language-model draft, checked against the measurements (grounding rule).
    3. ``reporting``: DICOM SEG, SR, overlay cine, FHIR; one ``Artifact`` row each, keyed by
       ``sop_instance_uid`` (unique) or by (job, kind), written to ``context.output_dir`` with
       write-then-rename so a re-run replaces files instead of adding copies.

    Until those packages exist nothing is measured, and the log says so.
    """
    write_log(context, "analysis", status="skipped", why="no inference package installed yet")


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


def _test_delay() -> None:
    value = os.environ.get(TEST_DELAY_ENV, "")
    if value:
        time.sleep(float(value))


__all__ = [
    "JobContext",
    "PixelDataError",
    "StoredInstanceError",
    "analyse_and_report",
    "decode_loop",
    "job_output_dir",
    "loop_summary",
    "read_log",
    "run_job",
]
