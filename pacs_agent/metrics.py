"""Prometheus metrics, computed when scraped.

Counts and latencies come from the shared database (and the job logs under the shared home) at
scrape time, not from counters in memory, so they are right whichever process scrapes them:
the web role, the all-in-one node, or a restarted one. What only one process knows (how long
its models took to load, its GPU memory) comes from that process: ``process_registry`` is what
a worker process serves on its own port (``serve_metrics``), ``node_registry`` what the web app
serves (both parts when the node runs everything in one process).

Each registry is created here per caller; the ``prometheus_client`` default global registry is
never used, so two nodes in one test process do not mix their numbers.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from sqlalchemy import Select, case, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from inference.gpu_memory import gpu_memory_bytes
from pacs_agent.db.models import (
    JOB_STATES,
    STUDY_STATES,
    Artifact,
    ExportAttempt,
    Instance,
    Job,
    Study,
)
from pacs_agent.jobs import DELIVERY_KINDS, KIND_ANALYZE, utc
from pacs_agent.readiness import ModelStatus
from pacs_agent.states import AttemptState, JobState

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
EXPORT_KINDS = ("dicom", "fhir", "hl7")
# Per stage: decoding and preprocessing take well under a second on a GPU, EF on every clip of
# a long loop can take minutes on a CPU.
STAGE_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# Whole jobs: from seconds (GPU, short loop) to an hour (a queue backed up behind retries).
JOB_BUCKETS_S = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
# where pacs_agent.pipeline writes each job's log: <home>/jobs/<job id>/log.jsonl (not imported
# from there: the pipeline pulls in torch, which a web-only process need not load)
JOBS_DIR_NAME = "jobs"
JOB_LOG_NAME = "log.jsonl"


def histogram_buckets(
    values: Iterable[float], bounds: Sequence[float]
) -> tuple[list[tuple[str, float]], float]:
    """Cumulative Prometheus buckets (``le`` label, count) including +Inf, and the sum."""
    data = sorted(values)
    buckets: list[tuple[str, float]] = []
    index = 0
    for bound in bounds:
        while index < len(data) and data[index] <= bound:
            index += 1
        buckets.append((_le(bound), float(index)))
    buckets.append(("+Inf", float(len(data))))
    return buckets, float(sum(data))


def _le(bound: float) -> str:
    return repr(float(bound))


@dataclass(frozen=True)
class _LogEntry:
    mtime_ns: int
    size: int
    stages_s: dict[str, float]


class JobLogStages:
    """Stage durations of finished jobs, read from their job logs and cached per file version.

    The pipeline records the analysis stages (``stages_s`` in the "analysed" line); decoding
    and the export to PACS are the time between the log's own lines. Only the last attempt of
    a job counts. A log is read again only when its size or mtime changed.
    """

    def __init__(self, jobs_dir: Path) -> None:
        self.jobs_dir = jobs_dir
        self._cache: dict[int, _LogEntry] = {}
        self._lock = threading.Lock()

    def stages_for(self, job_ids: Iterable[int]) -> dict[str, list[float]]:
        by_stage: dict[str, list[float]] = {}
        for job_id in job_ids:
            for stage, seconds in self._job_stages(job_id).items():
                by_stage.setdefault(stage, []).append(seconds)
        return by_stage

    def _job_stages(self, job_id: int) -> dict[str, float]:
        path = self.jobs_dir / str(job_id) / JOB_LOG_NAME
        try:
            stat = path.stat()
        except OSError:
            return {}
        with self._lock:
            cached = self._cache.get(job_id)
        if cached and (cached.mtime_ns, cached.size) == (stat.st_mtime_ns, stat.st_size):
            return cached.stages_s
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError:
            return {}
        stages = stages_from_log(lines)
        with self._lock:
            self._cache[job_id] = _LogEntry(stat.st_mtime_ns, stat.st_size, stages)
        return stages


def stages_from_log(lines: Sequence[str]) -> dict[str, float]:
    """Seconds per stage of the last attempt in a job log (JSON lines); {} without a finished
    analysis. Unreadable lines are skipped: a log cut short by a crash must not break a scrape.
    """
    events: list[dict[str, Any]] = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            events.append(entry)
    starts = [i for i, e in enumerate(events) if e.get("event") == "attempt"]
    last = events[starts[-1]:] if starts else events
    by_event = {e.get("event"): e for e in last}
    analysed = by_event.get("analysed")
    if analysed is None:
        return {}
    stages: dict[str, float] = {}
    for name, seconds in (analysed.get("stages_s") or {}).items():
        if isinstance(seconds, int | float):
            stages[str(name).removesuffix("_s")] = float(seconds)
    # older logs timed these only by the gap between their lines; a stage the job timed
    # itself wins (with decoding overlapped, "decoded" is written after the analysis)
    for stage, first, second in (
        ("decode", "attempt", "decoded"),
        ("export", "reported", "analysed"),
    ):
        if stage in stages:
            continue
        a, b = _at(by_event.get(first)), _at(by_event.get(second))
        if a is not None and b is not None and b >= a:
            stages[stage] = (b - a).total_seconds()
    return stages


def _at(event: dict[str, Any] | None) -> dt.datetime | None:
    if not event or not isinstance(event.get("at"), str):
        return None
    try:
        return utc(dt.datetime.fromisoformat(event["at"]))
    except ValueError:
        return None


class DatabaseCollector:
    """The node's work as the shared database (and job logs) record it, read at each scrape.

    A database that does not answer gives ``echo_agent_database_up 0`` and no other series,
    rather than a failed scrape: the scrape then says what is wrong.
    """

    def __init__(self, session_factory: sessionmaker[Session], jobs_dir: Path) -> None:
        self._session_factory = session_factory
        self._stages = JobLogStages(jobs_dir)

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "echo_agent_database_up", "1 when the database answered this scrape, else 0"
        )
        try:
            with self._session_factory() as session:
                families = list(self._families(session))
        except SQLAlchemyError as exc:
            log.warning("metrics: database not readable: %s", type(exc).__name__)
            up.add_metric([], 0.0)
            yield up
            return
        up.add_metric([], 1.0)
        yield up
        yield from families

    def _families(self, session: Session) -> Iterator[Metric]:
        instances = CounterMetricFamily(
            "echo_agent_instances_received",
            "DICOM instances received and stored (a repeated SOP Instance UID counts once)",
        )
        instances.add_metric([], float(session.scalar(select(func.count(Instance.id))) or 0))
        yield instances

        studies = GaugeMetricFamily("echo_agent_studies", "Studies by state", labels=["state"])
        counts = _counts(session, select(Study.status, func.count()).group_by(Study.status))
        for state in STUDY_STATES:
            studies.add_metric([state], float(counts.get(state, 0)))
        yield studies

        # analysis only: a delivery job per artifact and destination would swamp the count
        jobs = GaugeMetricFamily("echo_agent_jobs", "Analysis jobs by state", labels=["state"])
        counts = _counts(
            session,
            select(Job.state, func.count()).where(Job.kind == KIND_ANALYZE).group_by(Job.state),
        )
        for state in JOB_STATES:
            jobs.add_metric([state], float(counts.get(state, 0)))
        yield jobs

        deliveries = GaugeMetricFamily(
            "echo_agent_delivery_jobs",
            "Delivery jobs (one artifact to one destination) by kind and state",
            labels=["kind", "state"],
        )
        rows = session.execute(
            select(Job.kind, Job.state, func.count())
            .where(Job.kind.in_(DELIVERY_KINDS))
            .group_by(Job.kind, Job.state)
        ).all()
        by_kind_state = {(str(k), str(st)): int(n) for k, st, n in rows}
        for kind_name in DELIVERY_KINDS:
            for state in JOB_STATES:
                value = float(by_kind_state.get((kind_name, state), 0))
                deliveries.add_metric([kind_name, state], value)
        yield deliveries

        failures = CounterMetricFamily(
            "echo_agent_export_failures",
            "Export tries that failed: C-STORE to PACS (dicom), delivery to the EHR (fhir) or "
            "ORU^R01 over MLLP (hl7)",
            labels=["kind"],
        )
        kind = case(
            (Artifact.kind == "fhir", "fhir"), (Artifact.kind == "hl7_oru", "hl7"), else_="dicom"
        )
        counts = _counts(
            session,
            select(kind, func.count())
            .select_from(ExportAttempt)
            .join(Artifact, ExportAttempt.artifact_fk == Artifact.id)
            .where(ExportAttempt.state == AttemptState.FAILED)
            .group_by(kind),
        )
        for name in EXPORT_KINDS:
            failures.add_metric([name], float(counts.get(name, 0)))
        yield failures

        done = session.execute(
            select(Job.id, Job.created_at, Job.started_at, Job.finished_at).where(
                Job.kind == KIND_ANALYZE, Job.state == JobState.DONE, Job.finished_at.is_not(None)
            )
        ).all()
        latency = [
            (utc(finished) - utc(created)).total_seconds()
            for _, created, _, finished in done
            if created is not None
        ]
        run = [
            (utc(finished) - utc(started)).total_seconds()
            for _, _, started, finished in done
            if started is not None
        ]
        yield _histogram(
            "echo_agent_job_latency_seconds",
            "Finished analysis jobs: from the job's creation (study complete) to its results",
            latency,
            JOB_BUCKETS_S,
        )
        yield _histogram(
            "echo_agent_job_run_seconds",
            "Finished analysis jobs: wall time of the attempt that succeeded",
            run,
            JOB_BUCKETS_S,
        )
        stage_family = HistogramMetricFamily(
            "echo_agent_job_stage_seconds",
            "Finished analysis jobs: wall time per pipeline stage (from the job logs)",
            labels=["stage"],
        )
        for stage, values in sorted(self._stages.stages_for(row[0] for row in done).items()):
            buckets, total = histogram_buckets(values, STAGE_BUCKETS_S)
            stage_family.add_metric([stage], buckets, total)
        yield stage_family


def _counts(session: Session, statement: Select[Any]) -> dict[str, int]:
    """A two-column (name, count) query as a dict."""
    return {str(name): int(n) for name, n in session.execute(statement).all()}


def _histogram(
    name: str, documentation: str, values: list[float], bounds: Sequence[float]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation)
    buckets, total = histogram_buckets(values, bounds)
    family.add_metric([], buckets, total)
    return family


class ProcessCollector:
    """What this process alone knows: its models' load times and readiness, its GPU memory.

    GPU memory is read only where torch is already imported and CUDA already initialised, so a
    scrape never loads torch into the web process nor creates a CUDA context.
    """

    def __init__(self, models: ModelStatus | None) -> None:
        self._models = models

    def collect(self) -> Iterator[Metric]:
        if self._models is not None:
            load = GaugeMetricFamily(
                "echo_agent_model_load_seconds",
                "Seconds this process took to load each model (conversion included)",
                labels=["model"],
            )
            for name, seconds in sorted(self._models.load_times_s().items()):
                load.add_metric([name], seconds)
            yield load
            ready = GaugeMetricFamily(
                "echo_agent_model_ready", "1 when the model is loaded in this process",
                labels=["model"],
            )
            for name, info in sorted(self._models.snapshot()["models"].items()):
                ready.add_metric([name], 1.0 if info["state"] == "ready" else 0.0)
            yield ready
        gpu = gpu_memory_bytes()
        if gpu:
            family = GaugeMetricFamily(
                "echo_agent_gpu_memory_bytes",
                "GPU memory held by this process's tensors (allocated) and its caching "
                "allocator (reserved)",
                labels=["device", "kind"],
            )
            for (device, kind), value in sorted(gpu.items()):
                family.add_metric([device, kind], value)
            yield family


def node_registry(
    session_factory: sessionmaker[Session], home: Path, models: ModelStatus | None = None
) -> CollectorRegistry:
    """What the web app serves: the database's view (job logs under ``home``), plus this
    process's own when it runs models (``models`` given)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(session_factory, home / JOBS_DIR_NAME))
    registry.register(ProcessCollector(models))
    return registry


def process_registry(models: ModelStatus | None) -> CollectorRegistry:
    """What a worker process serves: its own metrics only (the web role serves the database's,
    so nothing is counted twice when Prometheus sums over processes)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ProcessCollector(models))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The registry in the Prometheus text format (``CONTENT_TYPE``)."""
    return generate_latest(registry)


def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> Any:
    """Serves ``registry`` at ``http://host:port/metrics`` from a daemon thread (for worker
    processes, which have no web app); returns the server, whose ``shutdown()`` stops it."""
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server
