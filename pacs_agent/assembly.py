"""Study assembly: decide when a study has arrived, then which of its loops to analyse.

DICOM has no "end of study" message: PACS sends instances over one or many associations, and a
late instance may follow minutes later. A study is therefore complete once no instance has
arrived for ``dicom.stable_age_s`` (Orthanc's StableAge idea). A late instance reopens it (the
store sets it back to ``receiving``); when it settles again, only loops without a job are
judged and queued, so nothing is analysed twice (jobs are unique per study, instance and kind).

Every step is a short transaction and the loops are judged outside any transaction, because on
SQLite a long write transaction would hold up the DICOM listener storing the next study.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from inference.view_classifier import ViewClassifier
from pacs_agent import jobs
from pacs_agent.config import Config
from pacs_agent.db.engine import retry_on_disconnect
from pacs_agent.db.models import Instance, Job, Series, Study
from pacs_agent.selection import Selection, SelectionError, not_eligible, select_loop
from pacs_agent.states import StudyState, study_transition

log = logging.getLogger(__name__)

Judge = Callable[[Path], Selection]


@dataclass(frozen=True)
class LoopToJudge:
    instance_id: int
    series_id: int
    instance_number: int | None
    path: Path


@dataclass(frozen=True)
class AssemblyResult:
    """Studies completed in this pass and the jobs queued for them."""

    completed_study_ids: tuple[int, ...]
    queued_job_ids: tuple[int, ...]


def complete_stable_studies(session: Session, now: dt.datetime, stable_age_s: float) -> list[Study]:
    """Marks ``receiving`` studies quiet for ``stable_age_s`` as ``complete``; returns them.

    The UPDATE repeats the stability condition, so an instance stored between the SELECT and
    the UPDATE keeps its study open.
    """
    cutoff = now - dt.timedelta(seconds=stable_age_s)
    candidates = session.scalars(
        select(Study)
        .where(Study.status == StudyState.RECEIVING, Study.last_received_at <= cutoff)
        .order_by(Study.id)
    ).all()
    completed = []
    for study in candidates:
        result = session.execute(
            update(Study)
            .where(
                Study.id == study.id,
                Study.status == StudyState.RECEIVING,
                Study.last_received_at <= cutoff,
            )
            .values(
                status=study_transition(StudyState.RECEIVING, StudyState.COMPLETE),
                completed_at=now,
                status_reason="",
            )
            .execution_options(synchronize_session=False)
        )
        if result.rowcount == 1:
            session.expire(study)
            completed.append(study)
    return completed


def loops_to_judge(session: Session, study_id: int, store_root: Path) -> list[LoopToJudge]:
    """The study's instances that have no analysis job yet."""
    has_job = select(Job.instance_fk).where(
        Job.study_fk == study_id, Job.kind == jobs.KIND_ANALYZE, Job.instance_fk.is_not(None)
    )
    rows = session.execute(
        select(Instance.id, Instance.series_fk, Instance.instance_number, Instance.file_path)
        .join(Series, Instance.series_fk == Series.id)
        .where(Series.study_fk == study_id, Instance.id.not_in(has_job))
        .order_by(Instance.series_fk, Instance.instance_number, Instance.id)
    ).all()
    return [LoopToJudge(i, s, n, store_root / p) for i, s, n, p in rows]


def judge_file(config: Config, classifier: ViewClassifier | None) -> Judge:
    """The selector as a plain function of a stored file; unreadable files are not analysed."""

    def judge(path: Path) -> Selection:
        try:
            return select_loop(path, config.selection, classifier)
        except SelectionError as exc:
            return not_eligible(str(exc))
        except Exception as exc:  # a header no rule foresaw must not stall the whole study
            log.exception("cannot judge %s", path.name)
            return not_eligible(f"cannot be judged: {type(exc).__name__}: {exc}")

    return judge


def record_verdicts(
    session: Session,
    study_id: int,
    verdicts: dict[LoopToJudge, Selection],
    now: dt.datetime,
    max_attempts: int,
) -> list[int]:
    """Writes each series' eligibility and reasons, creates and queues the eligible loops' jobs.

    A series is eligible when any of its loops is (one with a job from an earlier pass counts);
    the reason lists every loop of it that is not analysed, by instance number when the series
    holds several.
    """
    by_series: dict[int, list[tuple[LoopToJudge, Selection]]] = {}
    for loop, verdict in verdicts.items():
        by_series.setdefault(loop.series_id, []).append((loop, verdict))
    created = []
    for series_id, items in by_series.items():
        series = session.get(Series, series_id)
        if series is None:  # deleted meanwhile
            continue
        series_has_job = session.scalar(
            select(Job.id)
            .join(Instance, Job.instance_fk == Instance.id)
            .where(Instance.series_fk == series_id, Job.kind == jobs.KIND_ANALYZE)
            .limit(1)
        )
        for loop, verdict in items:
            if verdict.eligible:
                job_id = jobs.create_job(session, study_id, loop.instance_id, now, max_attempts)
                if job_id is not None:
                    created.append(job_id)
        rejected = [(loop, v) for loop, v in items if not v.eligible]
        eligible = series_has_job is not None or any(v.eligible for _, v in items)
        series.eligibility = "eligible" if eligible else "not_eligible"
        series.not_analysed_reason = _reasons(rejected, several=len(items) > 1)
    queued = jobs.enqueue(session, created, now)
    any_job = session.scalar(
        select(Job.id).where(Job.study_fk == study_id, Job.kind == jobs.KIND_ANALYZE).limit(1)
    )
    if any_job:
        status, reason = StudyState.ANALYSING, ""
    else:
        status, reason = StudyState.NOT_ELIGIBLE, _study_reason(verdicts)
    # only a study still 'complete': a late instance may have reopened it meanwhile
    session.execute(
        update(Study)
        .where(Study.id == study_id, Study.status == StudyState.COMPLETE)
        .values(status=study_transition(StudyState.COMPLETE, status), status_reason=reason)
        .execution_options(synchronize_session=False)
    )
    return queued


def _reasons(rejected: list[tuple[LoopToJudge, Selection]], several: bool) -> str:
    if not several:
        return rejected[0][1].reason if rejected else ""
    return "; ".join(
        f"instance {loop.instance_number if loop.instance_number is not None else '?'}: "
        f"{verdict.reason}"
        for loop, verdict in rejected
    )


def _study_reason(verdicts: dict[LoopToJudge, Selection]) -> str:
    if not verdicts:
        return "no loops received"
    return f"no loop eligible for analysis ({len(verdicts)} not analysed; see the series)"


@retry_on_disconnect("the study assembly pass")
def assemble(
    session_factory: sessionmaker[Session],
    config: Config,
    judge: Judge,
    now: dt.datetime,
) -> AssemblyResult:
    """One assembler pass: complete stable studies, judge their new loops, queue the jobs.

    Every study still ``complete`` is judged, not only those completed in this pass: one that
    a crash (or a database error) left between completion and its verdicts is picked up again;
    that is also why a pass cut short by a lost connection is simply run again.
    """
    with session_factory.begin() as session:
        completed = [s.id for s in complete_stable_studies(session, now, config.dicom.stable_age_s)]
    with session_factory() as session:
        to_judge = session.scalars(
            select(Study.id).where(Study.status == StudyState.COMPLETE).order_by(Study.id)
        ).all()
    queued: list[int] = []
    for study_id in to_judge:
        with session_factory() as session:
            loops = loops_to_judge(session, study_id, config.store_path)
        verdicts = {loop: judge(loop.path) for loop in loops}
        with session_factory.begin() as session:
            queued.extend(
                record_verdicts(session, study_id, verdicts, now, config.queue.max_attempts)
            )
        eligible = sum(v.eligible for v in verdicts.values())
        log.info("study %d complete: %d new loop(s), %d eligible", study_id, len(loops), eligible)
    return AssemblyResult(tuple(completed), tuple(queued))
