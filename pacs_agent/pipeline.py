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

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from sqlalchemy.orm import Session, sessionmaker

from pacs_agent.config import Config
from pacs_agent.db.models import Instance, Job, utcnow
from pacs_agent.jobs import KIND_ANALYZE, PermanentJobError
from pacs_agent.selection import heart_rate_bpm, loop_timing

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


@dataclass(frozen=True)
class DecodedLoop:
    """A decoded cine loop. ``frames``: (n, rows, cols) grey or (n, rows, cols, 3) RGB."""

    frames: np.ndarray
    sop_instance_uid: str
    transfer_syntax_uid: str
    photometric_interpretation: str
    frame_time_ms: float | None
    duration_s: float | None
    heart_rate_bpm: float | None

    @property
    def n_frames(self) -> int:
        return int(self.frames.shape[0])

    def summary(self) -> dict[str, Any]:
        return {
            "sop_instance_uid": self.sop_instance_uid,
            "transfer_syntax_uid": self.transfer_syntax_uid,
            "photometric_interpretation": self.photometric_interpretation,
            "n_frames": self.n_frames,
            "rows": int(self.frames.shape[1]),
            "cols": int(self.frames.shape[2]),
            "samples_per_pixel": 1 if self.frames.ndim == 3 else int(self.frames.shape[3]),
            "frame_time_ms": self.frame_time_ms,
            "duration_s": self.duration_s,
            "heart_rate_bpm": self.heart_rate_bpm,
        }


def job_output_dir(config: Config, job_id: int) -> Path:
    return config.home_path / JOBS_DIR_NAME / str(job_id)


def run_job(job_id: int, session_factory: sessionmaker[Session], config: Config) -> None:
    """Runs one job's stages. Raises PermanentJobError subclasses for what a retry cannot fix;
    any other exception is a failed attempt that the queue retries with back-off."""
    context = load_context(job_id, session_factory, config)
    write_log(context, "attempt", attempt=context.attempt)
    loop = decode_loop(context.path)
    write_json_atomic(context.output_dir / DECODED_SUMMARY_NAME, loop.summary())
    write_log(context, "decoded", **loop.summary())
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


def decode_loop(path: Path) -> DecodedLoop:
    """Reads and decodes every frame; every decoding failure becomes one PixelDataError.

    Stands in for ``inference``'s decoder (DICOM to ``Cine``) until that exists.
    """
    try:
        ds = dcmread(path)
    except (InvalidDicomError, OSError, EOFError, ValueError) as exc:
        raise PixelDataError(f"{path.name} is not readable DICOM: {exc}") from exc
    if "PixelData" not in ds:
        raise PixelDataError(f"{path.name} has no pixel data")
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # decoders raise many types (ValueError, RuntimeError, ...)
        raise PixelDataError(
            f"cannot decode pixel data ({_syntax_name(ds)}): {type(exc).__name__}: {exc}"
        ) from exc
    frames = _as_frames(ds, pixels)
    timing = loop_timing(ds)
    return DecodedLoop(
        frames=frames,
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
        transfer_syntax_uid=str(ds.file_meta.get("TransferSyntaxUID", "")),
        photometric_interpretation=str(ds.get("PhotometricInterpretation", "")),
        frame_time_ms=None if timing is None else round(timing.frame_time_ms, 4),
        duration_s=None if timing is None else round(timing.duration_s, 4),
        heart_rate_bpm=heart_rate_bpm(ds),
    )


def _syntax_name(ds: Dataset) -> str:
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    return getattr(syntax, "name", None) or str(syntax or "unknown transfer syntax")


def _as_frames(ds: Dataset, pixels: np.ndarray) -> np.ndarray:
    n = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    frame_ndim = 2 if samples == 1 else 3
    if pixels.ndim == frame_ndim:
        pixels = pixels[None]
    if pixels.ndim != frame_ndim + 1 or pixels.shape[0] != n:
        raise PixelDataError(
            f"pixel data holds shape {pixels.shape}, header says {n} frame(s) of "
            f"{samples} sample(s)"
        )
    return pixels


def analyse_and_report(
    context: JobContext,
    loop: DecodedLoop,
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
    "DecodedLoop",
    "JobContext",
    "PixelDataError",
    "StoredInstanceError",
    "analyse_and_report",
    "decode_loop",
    "job_output_dir",
    "read_log",
    "run_job",
]
