"""``echo-agent bench pipeline``: one study's whole chain, from the last C-STORE to the report.

A node starts on the embedded defaults (SQLite, local worker thread, demo models, the embedded
language model, the default stable-age rule) in a temporary home with its own ports, and phantom
studies go to it with dcmtk ``storescu``, one study after the other, each once the previous
one's job has finished. For each study the clock starts when ``storescu`` has its last C-STORE
response and stops when the job is finished with every object written; the stages in between
come from the database timestamps (the study's ``last_received_at``, which the stable-age wait
is timed from, the job's ``created_at`` /
``started_at`` / ``finished_at``) and the job log (``stages_s`` of the "analysed" line, the
"drafted" and "reported" lines). Decoding overlaps the analysis (``inference.stream``), so the
decoding thread's time is shown beside the wall time of decoding and analysis together.
Each row also names the loop the job analysed (frames x rows x cols, from the log's "decoded"
line: writing the objects grows with the loop's pixels) and the 1-minute load average when
its job was done, since a wall-clock time on a shared 2-core machine means little without it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select

from echo_agent.bench.dcmtk import find_dcmtk_tool
from echo_agent.bench.ingest import SEND_TIMEOUT_S, STORESCU_PROPOSE, _free_port, _group_by_syntax
from echo_agent.bench.machine import MachineLoad
from pacs_agent.config import Config
from pacs_agent.db.models import Instance, Job, Series, Study
from pacs_agent.jobs import KIND_ANALYZE, TERMINAL_STATES
from pacs_agent.pipeline import job_output_dir, read_log

SPARE_STUDIES = 3
# issue #17: SEG, SR (TID 1500, TID 5200), overlay video, SC, PDF and FHIR of one loop
WRITE_TARGET_S = 1.5
MODELS_READY_TIMEOUT_S = 900.0
JOB_TIMEOUT_S = 900.0
POLL_S = 0.2
CALLING_AE = "BENCHPIPE"
# (column, key in StudyTiming.stages_s); "decode" is the decoding thread, beside the analysis
COLUMNS: tuple[tuple[str, str], ...] = (
    ("stable-age wait", "assembly_s"),
    ("queue wait", "queue_s"),
    ("decode (thread)", "decode_s"),
    ("decode waited", "decode_wait_s"),
    ("preprocess", "preprocess_s"),
    ("segmentation", "segmentation_s"),
    ("EF", "ef_s"),
    ("measurements", "measurements_s"),
    ("decode + analysis wall", "decode_and_analysis_wall_s"),
    ("LLM draft", "draft_s"),
    ("write SEG/SR/SC/PDF/FHIR", "write_outputs_s"),
    ("export", "export_s"),
)


@dataclass(frozen=True)
class StudyTiming:
    """One study: ``total_s`` from the last C-STORE response to the job's end; ``stages_s``
    keyed as in ``COLUMNS`` (a stage the job did not time is absent: "not run")."""

    study_uid: str
    job_id: int | None  # None: no loop of the study was eligible, so no job ran
    state: str
    instances: int
    total_s: float
    stages_s: dict[str, float]
    draft_verdict: str | None
    loop: str | None = None  # the analysed loop, "139 x 600x800" (frames x rows x cols)
    load_1min: float | None = None  # the 1-minute load average when the job was done


@dataclass(frozen=True)
class PipelineBenchResult:
    studies: list[StudyTiming]
    stable_age_s: float
    models_ready_s: float
    destinations: int
    machine: MachineLoad | None = None  # taken when the last study is done


def run_pipeline_bench(
    workdir: Path, *, studies: int = 3, seed: int = 5, config: Config | None = None
) -> PipelineBenchResult:
    """Starts a node in ``workdir/home`` (on ``config``'s settings but its own home and free
    ports; the embedded defaults when None), waits for its models, sends ``studies`` phantom
    studies one after another and times each. Needs dcmtk's ``storescu`` on PATH."""
    storescu = dcmtk_storescu()
    if studies < 1:
        raise ValueError(f"studies must be at least 1, got {studies}")
    from echo_agent.node import start_node
    from inference.phantom import generate_phantoms
    from pacs_agent.startup import prepare_home

    workdir = Path(workdir)
    base = config or Config()
    config = dataclasses.replace(
        base,
        home=str(workdir / "home"),
        dicom=dataclasses.replace(base.dicom, port=_free_port()),
        web=dataclasses.replace(base.web, host="127.0.0.1", port=_free_port()),
    )
    # a phantom study may hold no loop the A4C selection accepts: spares keep N analysed
    files = generate_phantoms(workdir / "studies", studies + SPARE_STUDIES, seed)
    by_study = _group_by_study(files)
    prepare_home(config)
    started = time.perf_counter()
    node = start_node(config)
    try:
        _wait_for_models(node)
        models_ready_s = time.perf_counter() - started
        timings: list[StudyTiming] = []
        for uid, study_files in by_study.items():
            timings.append(_time_study(node, config, storescu, uid, study_files))
            if sum(t.job_id is not None for t in timings) == studies:
                break
    finally:
        node.stop()
    return PipelineBenchResult(
        studies=timings,
        stable_age_s=config.dicom.stable_age_s,
        models_ready_s=models_ready_s,
        destinations=len(config.destinations),
        machine=MachineLoad.now(),
    )


def _group_by_study(files: Sequence[Path]) -> dict[str, list[Path]]:
    from pydicom import dcmread

    groups: dict[str, list[Path]] = {}
    for path in files:
        uid = str(dcmread(path, stop_before_pixels=True).StudyInstanceUID)
        groups.setdefault(uid, []).append(path)
    return groups


def _wait_for_models(node: object) -> None:
    status = getattr(node, "model_status", None)
    if status is None:
        return
    deadline = time.monotonic() + MODELS_READY_TIMEOUT_S
    while time.monotonic() < deadline:
        snapshot = status.snapshot()
        if snapshot["state"] == "ready":
            return
        if snapshot["state"] == "failed":
            raise RuntimeError(f"the node's models did not load: {snapshot['message']}")
        time.sleep(POLL_S)
    raise TimeoutError(f"the node's models were not ready within {MODELS_READY_TIMEOUT_S} s")


def dcmtk_storescu() -> str:
    return find_dcmtk_tool("storescu")


def _time_study(
    node: object, config: Config, storescu: str, study_uid: str, files: list[Path]
) -> StudyTiming:
    port = config.dicom.port
    for syntax, group in _group_by_syntax(files).items():
        command = [storescu, "-aet", CALLING_AE, "-aec", config.dicom.ae_title]
        command += [STORESCU_PROPOSE[syntax], "127.0.0.1", str(port), *(str(f) for f in group)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=SEND_TIMEOUT_S)
        if done.returncode != 0:
            raise RuntimeError(f"storescu failed: {done.stderr.strip()[-500:]}")
    last_response = dt.datetime.now(dt.UTC)
    sessions = node.session_factory  # type: ignore[attr-defined]
    job = _wait_for_job(sessions, study_uid)
    load_1min = MachineLoad.now().load_average_1min
    with sessions() as session:
        study = session.scalar(select(Study).where(Study.study_instance_uid == study_uid))
        instances = session.scalar(
            select(func.count(Instance.id)).join(Series).where(Series.study_fk == study.id)
        )
        status, completed_at = study.status, study.completed_at
        # the stable age counts from the node's own record of the last arrival, which comes
        # before storescu's exit: timing the wait from the client's clock would shave off the
        # response and process-exit time and read a 1.0 s stable age as 0.99 s
        last_arrival = study.last_received_at
    if job is None:
        stages = {}
        if completed_at is not None:
            stages["assembly_s"] = _seconds(last_arrival, completed_at)
        return StudyTiming(
            study_uid=study_uid,
            job_id=None,
            state=status.replace("_", " "),
            instances=int(instances or 0),
            total_s=stages.get("assembly_s", 0.0),
            stages_s=stages,
            draft_verdict=None,
            load_1min=load_1min,
        )
    log = read_log(job_output_dir(config, job.id))
    stages = _stages_from_log(log)
    stages["assembly_s"] = _seconds(last_arrival, job.created_at)
    if job.started_at is not None:
        stages["queue_s"] = _seconds(job.created_at, job.started_at)
    finished = job.finished_at or dt.datetime.now(dt.UTC)
    drafted = _last(log, "drafted")
    return StudyTiming(
        study_uid=study_uid,
        job_id=job.id,
        state=job.state,
        instances=int(instances or 0),
        total_s=_seconds(last_response, finished),
        stages_s=stages,
        draft_verdict=None if drafted is None else str(drafted.get("verdict")),
        loop=_loop_size(_last(log, "decoded")),
        load_1min=load_1min,
    )


def _loop_size(decoded: dict | None) -> str | None:
    """The loop as "frames x rows x cols", from the job log's "decoded" line (None without
    one): writing time grows with the loop's pixels, so the table says what each row wrote."""
    if decoded is None or not all(k in decoded for k in ("n_frames", "rows", "cols")):
        return None
    return f"{decoded['n_frames']} x {decoded['rows']}x{decoded['cols']}"


def _wait_for_job(sessions: object, study_uid: str) -> Job | None:
    """The study's analysis job once it is done or failed (the assembler creates it after the
    stable age, a worker runs it); None when the study was assembled with no eligible loop.
    Its delivery jobs (created later, so with higher ids) are not what is timed here."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        with sessions() as session:  # type: ignore[operator]
            study = session.scalar(select(Study).where(Study.study_instance_uid == study_uid))
            job = session.scalar(
                select(Job)
                .join(Study, Job.study_fk == Study.id)
                .where(Study.study_instance_uid == study_uid, Job.kind == KIND_ANALYZE)
                .order_by(Job.id.desc())
            )
            if job is not None and job.state in TERMINAL_STATES:
                session.expunge(job)
                return job
            if job is None and study is not None and study.status == "not_eligible":
                return None
        time.sleep(POLL_S)
    raise TimeoutError(f"study {study_uid}: no finished job within {JOB_TIMEOUT_S} s")


def _stages_from_log(log: list[dict]) -> dict[str, float]:
    """Per-stage seconds of the job's last attempt, from its "analysed" line (and the
    "drafted" / "reported" lines, for jobs whose "analysed" line lacks them)."""
    stages: dict[str, float] = {}
    analysed = _last(log, "analysed")
    if analysed is not None:
        for key, value in (analysed.get("stages_s") or {}).items():
            if isinstance(value, int | float):
                stages[key] = float(value)
    drafted = _last(log, "drafted")
    if "draft_s" not in stages and drafted is not None and "seconds" in drafted:
        stages["draft_s"] = float(drafted["seconds"])
    reported = _last(log, "reported")
    if "write_outputs_s" not in stages and reported is not None and "seconds" in reported:
        stages["write_outputs_s"] = float(reported["seconds"])
    return stages


def _write_verdict(seconds: float | None) -> str:
    """The verdict ("pass" / "FAIL") against ``WRITE_TARGET_S``; "not run": nothing written."""
    if seconds is None:
        return "not run"
    return "pass" if seconds <= WRITE_TARGET_S else "FAIL"


def _last(log: list[dict], event: str) -> dict | None:
    lines = [line for line in log if line.get("event") == event]
    return lines[-1] if lines else None


def _seconds(start: dt.datetime, end: dt.datetime) -> float:
    return (_aware(end) - _aware(start)).total_seconds()


def _aware(moment: dt.datetime) -> dt.datetime:
    """SQLite gives naive datetimes back; every timestamp the node writes is UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


def format_table(result: PipelineBenchResult, fmt: str = "markdown") -> str:
    """One row per study, one column per stage ("not run" where the job did not time it)."""
    names = ["study", "state", "instances", "loop (frames x rows x cols)"]
    names += [*(name for name, _ in COLUMNS), "total", f"write <= {WRITE_TARGET_S:g} s"]
    names.append("load (1 min)")
    rows = []
    for i, study in enumerate(result.studies, 1):
        cells = [str(i), study.state, str(study.instances), study.loop or "not run"]
        for _name, key in COLUMNS:
            cells.append(f"{study.stages_s[key]:.2f}" if key in study.stages_s else "not run")
        cells.append(f"{study.total_s:.2f}")
        cells.append(_write_verdict(study.stages_s.get("write_outputs_s")))
        load = study.load_1min
        cells.append("not available" if load is None else f"{load:.1f}")
        rows.append(cells)
    writes = [
        s.stages_s["write_outputs_s"] for s in result.studies if "write_outputs_s" in s.stages_s
    ]
    totals = [s.total_s for s in result.studies if s.job_id is not None] or [float("nan")]
    skipped = sum(s.job_id is None for s in result.studies)
    summary = (
        f"seconds per study from the last C-STORE response to the job's end, stable age "
        f"{result.stable_age_s:g} s included; mean {sum(totals) / len(totals):.1f} s, "
        f"max {max(totals):.1f} s (goal: under 60 s); models ready {result.models_ready_s:.1f} s"
        f" after start (not counted); {result.destinations} export destination(s)"
        + (f"; {skipped} study(ies) had no eligible A4C loop (no job)" if skipped else "")
    )
    if writes:
        summary += (
            f"\nwriting SEG/SR/SC/PDF/FHIR per loop: mean {sum(writes) / len(writes):.2f} s, max "
            f"{max(writes):.2f} s (target: at most {WRITE_TARGET_S:g} s): "
            + _write_verdict(max(writes))
        )
    if result.machine is not None:
        summary += "\n" + result.machine.note()
    if fmt == "csv":
        lines = [",".join(names), *(",".join(cells) for cells in rows)]
        return "\n".join(lines)
    lines = [
        "| " + " | ".join(names) + " |",
        "|" + "|".join(["---"] * 2 + ["---:"] * (len(names) - 2)) + "|",
        *("| " + " | ".join(cells) + " |" for cells in rows),
        "",
        summary,
    ]
    return "\n".join(lines)
