"""A PACS that never answers holds up no analysis: deliveries are jobs of their own.

Two real nodes analyse the same phantom loop (copies under new UIDs) with the shipped demo
networks. The first has no destination and gives the baseline: how long a study takes from its
C-STORE to its finished analysis. The second sends to a "PACS" that completes the TCP handshake
(the kernel's listen backlog) and then never says a word, so every C-STORE try waits out its
network timeout. Study 1 is analysed there and its first try to the dead peer starts; study 2
is then sent, and must be analysed within a small margin of the baseline, while study 1's
deliveries are still unsent and their jobs wait, queued for a later try, in the table. When
each analysis sent its own objects (the old design), study 2 waited behind study 1's tries and
back-off sleeps.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import pydicom
import pytest
from dicom_helpers import send_files
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from running_node import node_config, running_node
from sqlalchemy import select
from support import phantom_truth

from echo_agent.node import RunningNode
from pacs_agent.config import Config, DestinationConfig, ExportConfig
from pacs_agent.db.models import Artifact, ExportAttempt, Job, Study
from pacs_agent.jobs import utc

T = TypeVar("T")
# study 2 may take this much longer than the baseline (scheduling noise on a shared machine)
RATIO = 1.5
MARGIN_S = 4.0
# long enough that a failed try is still waiting when the test looks: the job is not retried
# within the test, and the old design slept this long inside the analysis
BACKOFF_S = 60.0
SHORT_FRAMES = 40  # 1.24 s at the phantom's 31 ms per frame


@contextmanager
def dead_pacs() -> Iterator[socket.socket]:
    """A listening socket whose peer connections complete (the kernel's backlog) and then
    hear nothing, ever; closing it resets them."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield sock


def wait_for(probe: Callable[[], T | None], timeout_s: float, what: str) -> T:
    """Polls ``probe`` until it returns something other than None or False; returns it."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = probe()
        if found is not None and found is not False:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(0.05)


def short_a4c_loop(phantoms: list[Path], folder: Path, n_frames: int = SHORT_FRAMES) -> Path:
    """The uncompressed phantom A4C loop cut to its first ``n_frames`` (still longer than the
    selection's minimum duration), so that each analysis takes seconds."""
    source = next(
        p for p in phantoms
        if phantom_truth(p)["view"] == "A4C"
        and pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID
        == ExplicitVRLittleEndian
    )  # fmt: skip
    ds = pydicom.dcmread(source)
    frames = ds.pixel_array[:n_frames]
    ds.PixelData = frames.tobytes()
    ds.NumberOfFrames = n_frames
    ds.SeriesDescription = "A4C"  # this phantom keeps its view to itself; the node needs it
    if "EffectiveDuration" in ds:
        ds.EffectiveDuration = f"{n_frames * float(ds.FrameTime) / 1000.0:.4f}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "short_a4c.dcm"
    ds.save_as(path)
    return path


def send_new_study(node: RunningNode, source: Path, folder: Path) -> str:
    """C-STOREs the loop as a study of its own (new UIDs); returns its Study Instance UID."""
    ds = pydicom.dcmread(source)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path)
    assert send_files("127.0.0.1", node.dicom_port, [path], calling_ae="TESTPACS") == [0]
    return str(ds.StudyInstanceUID)


def study_id_of(node: RunningNode, study_uid: str) -> int | None:
    with node.session_factory() as session:
        return session.scalar(select(Study.id).where(Study.study_instance_uid == study_uid))


def analysis_done(node: RunningNode, study_uid: str) -> bool:
    """The study's analysis job is done; a failed one fails the test with its error."""
    with node.session_factory() as session:
        job = session.scalar(
            select(Job)
            .join(Study, Job.study_fk == Study.id)
            .where(Study.study_instance_uid == study_uid, Job.kind == "analyze")
        )
        if job is not None and job.state == "failed":
            raise AssertionError(f"analysis failed: {job.last_error}")
        return job is not None and job.state == "done"


def try_under_way(node: RunningNode, study_uid: str) -> bool:
    """A try at sending one of the study's objects has started and not ended."""
    with node.session_factory() as session:
        found = session.scalar(
            select(ExportAttempt.id)
            .join(Artifact, ExportAttempt.artifact_fk == Artifact.id)
            .join(Study, Artifact.study_fk == Study.id)
            .where(Study.study_instance_uid == study_uid, ExportAttempt.state == "pending")
            .limit(1)
        )
        return found is not None


def analysis_seconds(
    node: RunningNode, source: Path, folder: Path, timeout_s: float, what: str = "the analysis"
) -> float:
    """From the study's C-STORE to its finished analysis, as a PACS user would wait."""
    started = time.monotonic()
    study_uid = send_new_study(node, source, folder)
    wait_for(lambda: analysis_done(node, study_uid), timeout_s, what)
    return time.monotonic() - started


@contextmanager
def warm_node(config: Config) -> Iterator[RunningNode]:
    """A running node whose networks are loaded, so no measured study pays for the loading."""
    with running_node(config) as node:
        wait_for(lambda: node.model_status.required_ready()[0], 120, "the models to load")
        yield node


@pytest.mark.slow
def test_a_destination_that_never_answers_does_not_delay_another_studys_analysis(
    tmp_path: Path, phantom_studies: list[Path]
) -> None:
    loop = short_a4c_loop(phantom_studies, tmp_path / "loop")

    plain = node_config(tmp_path / "plain", f"sqlite:///{tmp_path / 'plain.db'}")
    assert plain.destinations == []
    with warm_node(plain) as node:
        baseline_s = analysis_seconds(node, loop, tmp_path / "send-plain", timeout_s=180)
    bound_s = RATIO * baseline_s + MARGIN_S

    with dead_pacs() as pacs:
        port = int(pacs.getsockname()[1])
        config = dataclasses.replace(
            node_config(tmp_path / "dead", f"sqlite:///{tmp_path / 'dead.db'}"),
            destinations=[
                DestinationConfig(name="dead-pacs", ae_title="DEADPACS", host="127.0.0.1",
                                  port=port)
            ],
            export=ExportConfig(max_attempts=3, backoff_initial_s=BACKOFF_S,
                                backoff_max_s=BACKOFF_S),
        )  # fmt: skip
        with warm_node(config) as node:
            first_uid = send_new_study(node, loop, tmp_path / "send-1")
            wait_for(lambda: try_under_way(node, first_uid), 180, "a try to the dead PACS")

            second_s = analysis_seconds(
                node, loop, tmp_path / "send-2", timeout_s=bound_s + 5,
                what=f"study 2's analysis (baseline {baseline_s:.1f} s, bound {bound_s:.1f} s)",
            )  # fmt: skip
            assert second_s <= bound_s, (
                f"study 2 took {second_s:.1f} s with a dead destination, {baseline_s:.1f} s without"
            )

            first_id = study_id_of(node, first_uid)
            assert analysis_done(node, first_uid)
            with node.session_factory() as session:
                sends = session.scalars(
                    select(Job).where(Job.study_fk == first_id, Job.kind == "deliver_dicom")
                ).all()
                # SEG, TID 1500 SR, TID 5200 SR, secondary capture and PDF, each a job of its
                # own, none sent
                assert len(sends) == 5
                assert {j.destination for j in sends} == {"dead-pacs"}
                assert {j.state for j in sends} <= {"queued", "running"}
                sent = session.scalars(
                    select(ExportAttempt.id)
                    .join(Artifact, ExportAttempt.artifact_fk == Artifact.id)
                    .where(Artifact.study_fk == first_id, ExportAttempt.state == "sent")
                ).all()
                assert sent == []

            def retry_waiting() -> Job | None:
                """A delivery of study 1 whose one try failed, queued again for later: the
                back-off is spent in the table, not by a sleeping worker."""
                now = dt.datetime.now(dt.UTC)
                with node.session_factory() as session:
                    for job in session.scalars(
                        select(Job).where(Job.study_fk == first_id, Job.kind == "deliver_dicom")
                    ):
                        due = job.next_attempt_at
                        later = due is not None and utc(due) > now + dt.timedelta(seconds=30)
                        if job.state == "queued" and job.attempts == 1 and later:
                            return job
                return None

            waiting = wait_for(retry_waiting, 60, "a failed try queued again for later")
            with node.session_factory() as session:
                tries = session.scalars(
                    select(ExportAttempt).where(ExportAttempt.artifact_fk == waiting.artifact_fk)
                ).all()
            assert [(t.attempt, t.state, t.destination) for t in tries] == [
                (1, "failed", "dead-pacs")
            ]
            assert "DEADPACS" in tries[0].error and waiting.last_error
            pacs.close()  # resets the try in flight, so that the node stops at once
