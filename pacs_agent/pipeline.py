"""What a job does: the stages between a stored loop and its results, run by
``inference.stages``.

``analyse``: decode the loop on a background thread while the frames already decoded are
preprocessed and segmented, then EF, measurements and the validity gate (``inference.analyze``);
the decoded summary and the measurements are recorded. ``draft``: the language-model draft,
checked by the grounding guard (``pacs_agent.drafting``). ``write``: the reporting objects (SEG,
TID 1500 and TID 5200 SRs, overlay, secondary capture, PDF, FHIR, HL7 ORU^R01) recorded as
artifacts (``pacs_agent.outputs``). ``record``: the deliveries (C-STORE to the PACS
destinations, the FHIR bundle to the EHR, ORU^R01 over MLLP) queued as jobs of their own
(``pacs_agent.deliveries``), so a destination that never answers holds up no analysis. Each
stage's seconds go to the job log (``stages_s`` of the "analysed" line, under the keys of
``JOB_STAGE_KEYS`` beside the analysis's own parts).

A job may run more than once (a retry, a redelivered Celery task, or a crash and recovery after
the outputs were written but before the job was marked done), so every output is written so that
a second run replaces the first instead of adding to it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from inference.analyze import AnalysisResult, analyse
from inference.decode import DecodeError, read_cine
from inference.model_cache import ModelCache, Models, measurements_document
from inference.preprocess import PreprocessError
from inference.stages import Stage, StageTiming, run_stages
from inference.stream import LoopSource
from inference.types import Cine
from pacs_agent.config import Config
from pacs_agent.db.models import Analysis, Instance, Job, utcnow
from pacs_agent.deliveries import queue_outputs
from pacs_agent.drafting import TextModelCache, TimedDraft, draft_for_job, header_sex
from pacs_agent.job_files import (
    DECODED_SUMMARY_NAME,
    JOB_LOG_NAME,
    JOBS_DIR_NAME,
    MEASUREMENTS_NAME,
    JobContext,
    job_output_dir,
    read_log,
    write_json_atomic,
    write_log,
)
from pacs_agent.jobs import KIND_ANALYZE, PermanentJobError
from pacs_agent.outputs import OUTPUTS_DIR_NAME, RecordedOutputs, algorithms_for, write_and_record
from reporting.body_size import body_size_from_dataset

log = logging.getLogger(__name__)

# each job stage's time in the "analysed" line's ``stages_s`` (the keys benches read)
JOB_STAGE_KEYS = {
    "analyse": "decode_and_analysis_wall_s",
    "draft": "draft_s",
    "write": "write_outputs_s",
    "record": "export_s",
}


class PixelDataError(PermanentJobError):
    """The pixel data is corrupt, truncated or in an encoding no installed decoder reads."""


class AnalysisError(PermanentJobError):
    """The models cannot be loaded or the loop cannot be analysed (no sector, no LV)."""


class StoredInstanceError(PermanentJobError):
    """The job's instance is missing from the database or the store."""


@dataclass(frozen=True)
class AnalysedJob:
    context: JobContext
    result: AnalysisResult
    models: Models


@dataclass(frozen=True)
class DraftedJob:
    analysed: AnalysedJob
    timed: TimedDraft


@dataclass(frozen=True)
class WrittenJob:
    drafted: DraftedJob
    outputs: RecordedOutputs


@dataclass(frozen=True)
class RecordedJob:
    written: WrittenJob
    delivery_jobs: tuple[int, ...]


def run_job(
    job_id: int,
    session_factory: sessionmaker[Session],
    config: Config,
    models: ModelCache | None = None,
    text_models: TextModelCache | None = None,
    submit: Callable[[int], None] | None = None,
) -> None:
    """Runs one job's stages. Raises PermanentJobError subclasses for what a retry cannot fix;
    any other exception is a failed attempt that the queue retries with back-off.

    ``models`` None decodes and records the loop only (no network runs);
    ``text_models`` is the process's language model for the draft (see ``analyse_and_report``);
    ``submit`` hands the queued delivery jobs to the queue (None: they wait in the table for a
    worker that polls it)."""
    context = load_context(job_id, session_factory, config)
    write_log(context, "attempt", attempt=context.attempt)
    if models is not None:
        analyse_and_report(
            context, context.path, session_factory, config, models, text_models, submit=submit
        )
    else:
        record_decoded(context, decode_loop(context.path))
        write_log(context, "analysis", status="skipped", why="no models given to this run")
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


def record_decoded(context: JobContext, loop: Cine) -> None:
    """``decoded.json`` and the "decoded" line of the job log."""
    summary = loop_summary(loop)
    write_json_atomic(context.output_dir / DECODED_SUMMARY_NAME, summary)
    write_log(context, "decoded", **summary)


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
    loop: LoopSource,
    session_factory: sessionmaker[Session],
    config: Config,
    models: ModelCache,
    text_models: TextModelCache | None = None,
    *,
    submit: Callable[[int], None] | None = None,
) -> None:
    """The job's stages on ``loop`` (the stored file, or a loop decoded before): analyse,
    draft (``llm.draft``; the model from ``text_models``, loaded for this job alone when None),
    write the reporting objects (SEG, SR, overlay, PDF, FHIR) and record the queueing of their
    deliveries (handed to ``submit`` when given; they run after this job, never inside it).

    A re-run replaces instead of adding: ``measurements.json`` is written then renamed, and the
    one ``Analysis`` row per job (``job_fk`` is unique) is updated in place.
    """

    def stage_done(timing: StageTiming, value: Any) -> None:
        seconds = round(timing.elapsed_ms / 1000.0, 3)
        if isinstance(value, DraftedJob):
            draft = value.timed.draft
            write_log(context, "drafted", seconds=seconds, verdict=draft.verdict,
                      attempts=draft.attempts, model=value.timed.model_name or None,
                      reasons=list(draft.reasons))  # fmt: skip
        elif isinstance(value, WrittenJob):
            write_log(context, "reported", artifacts=sorted(value.outputs.artifact_ids),
                      seconds=seconds)  # fmt: skip

    stages = (
        Stage("analyse", lambda ctx: _analyse(ctx, loop, session_factory, config, models)),
        Stage("draft", lambda analysed: _draft(analysed, config, text_models)),
        Stage("write", lambda drafted: _write(drafted, session_factory, config)),
        Stage("record", lambda written: _record(written, session_factory, config, submit)),
    )
    run = run_stages(
        stages, context, log=log, label=f"job {context.job_id}", level=logging.INFO,
        on_stage=stage_done,
    )  # fmt: skip
    recorded: RecordedJob = run.value
    analysed = recorded.written.drafted.analysed
    measurements = analysed.result.analysis.measurements
    stages_s = dict(analysed.result.timings_s())
    stages_s.update({JOB_STAGE_KEYS[t.name]: t.elapsed_ms / 1000.0 for t in run.timings.stages})
    write_log(
        context,
        "analysed",
        stages_s={stage: round(seconds, 3) for stage, seconds in stages_s.items()},
        ef_percent=measurements.ef_percent,
        ef_disks_percent=measurements.ef_disks_percent,
        flags=[flag.code for flag in measurements.flags],
        demo_models=analysed.models.demo,
        delivery_jobs=list(recorded.delivery_jobs),
    )


def analyse_for_job(
    loop: LoopSource, config: Config, models: ModelCache
) -> tuple[AnalysisResult, Models]:
    """The loop decoded (on a background thread, for a file) and analysed with the process's
    models, errors as a job sees them: corrupt pixels are a PixelDataError, unusable weights or
    a loop without a fan an AnalysisError (neither is retried)."""
    try:
        loaded = models.get()
    except ValueError as exc:  # unusable weights: a retry cannot fix configuration
        raise AnalysisError(f"cannot load the {config.models.preset} models: {exc}") from exc
    try:
        return analyse(loop, loaded, all_clip_stride=config.models.all_clip_stride), loaded
    except DecodeError as exc:
        raise PixelDataError(str(exc)) from exc
    except PreprocessError as exc:
        raise AnalysisError(f"cannot analyse the loop: {exc}") from exc


def _analyse(
    context: JobContext,
    loop: LoopSource,
    session_factory: sessionmaker[Session],
    config: Config,
    models: ModelCache,
) -> AnalysedJob:
    """Analyses the loop (``analyse_for_job``), then records it: the decoded summary,
    ``measurements.json`` and the ``Analysis`` row, with the loop header's height and weight
    where they are plausible (``reporting.body_size``: the chat indexes the volumes by them)."""
    result, loaded = analyse_for_job(loop, config, models)
    record_decoded(context, result.cine)
    document = measurements_document(result, loaded)
    write_json_atomic(context.output_dir / MEASUREMENTS_NAME, document)
    measurements = result.analysis.measurements
    body = body_size_from_dataset(dcmread(context.path, stop_before_pixels=True))
    with session_factory.begin() as session:
        row = session.scalar(select(Analysis).where(Analysis.job_fk == context.job_id))
        if row is None:
            row = Analysis(job_fk=context.job_id, instance_fk=context.instance_id)
            session.add(row)
        row.model_preset = loaded.preset
        row.demo_models = loaded.demo
        row.ef_percent = measurements.ef_percent
        row.measurements = document
        row.patient_height_cm = body.height_cm
        row.patient_weight_kg = body.weight_kg
    return AnalysedJob(context, result, loaded)


def _draft(analysed: AnalysedJob, config: Config, text_models: TextModelCache | None) -> DraftedJob:
    """The report's words from the measurements; the patient's sex (M/F), height and weight
    (checked numbers, indexing the volumes) are the only header values the draft uses: no
    header text is prompt."""
    header = dcmread(analysed.context.path, stop_before_pixels=True)
    timed = draft_for_job(
        analysed.result.analysis.measurements,
        sex=header_sex(header.get("PatientSex")),
        body=body_size_from_dataset(header),
        algorithms=algorithms_for(analysed.models),
        config=config,
        text_models=text_models,
    )
    return DraftedJob(analysed, timed)


def _write(
    drafted: DraftedJob, session_factory: sessionmaker[Session], config: Config
) -> WrittenJob:
    """Every reporting object, written and recorded as an artifact."""
    analysed = drafted.analysed
    context, analysis = analysed.context, analysed.result.analysis
    outputs = write_and_record(
        job_id=context.job_id,
        study_id=context.study_id,
        source_path=context.path,
        output_dir=context.output_dir / OUTPUTS_DIR_NAME,
        cine=analysed.result.cine,
        masks=analysis.lv_masks_source(),
        measurements=analysis.measurements,
        models=analysed.models,
        draft=drafted.timed.draft,
        session_factory=session_factory,
        config=config,
    )
    return WrittenJob(drafted, outputs)


def _record(
    written: WrittenJob,
    session_factory: sessionmaker[Session],
    config: Config,
    submit: Callable[[int], None] | None,
) -> RecordedJob:
    """Queues the deliveries (the sends are the delivery jobs', their tries ExportAttempt
    rows) and hands each to the queue."""
    context = written.drafted.analysed.context
    queued = queue_outputs(
        session_factory,
        config,
        context.study_id,
        written.outputs.artifact_ids,
        utcnow(),
        hl7_messages=written.outputs.hl7_messages,
    )
    for delivery_job_id in queued:
        _submit(submit, delivery_job_id)
    return RecordedJob(written, tuple(queued))


def _submit(submit: Callable[[int], None] | None, job_id: int) -> None:
    """A queue that cannot take the job now (a broker down) costs nothing: the job is queued in
    the table, where polling workers and the Celery sweeper find it."""
    if submit is None:
        return
    try:
        submit(job_id)
    except Exception as exc:
        log.warning("delivery job %d queued, but not handed to the queue: %s", job_id, exc)


__all__ = [
    "DECODED_SUMMARY_NAME",
    "JOBS_DIR_NAME",
    "JOB_LOG_NAME",
    "MEASUREMENTS_NAME",
    "AnalysisError",
    "JobContext",
    "PixelDataError",
    "StoredInstanceError",
    "analyse_and_report",
    "analyse_for_job",
    "decode_loop",
    "job_output_dir",
    "loop_summary",
    "read_log",
    "run_job",
    "write_log",
]
