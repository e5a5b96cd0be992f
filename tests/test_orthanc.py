"""Orthanc as the PACS: it routes a phantom study to the node, the node assembles it, selects the
A4C loop and runs its job; the node's export sends an artifact back to Orthanc, and
``echo-agent destinations check`` C-ECHOes Orthanc and a closed port."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from orthanc_helpers import (
    free_tcp_port,
    node_config_text,
    phantom_cache,
    phantom_studies,
    run_orthanc,
    truth,
    wait_until,
)
from sqlalchemy import select

from echo_agent.node import start_node
from pacs_agent.config import load_config
from pacs_agent.db.models import Artifact, Instance, Job, Series, Study
from pacs_agent.export import export_artifact, export_status
from pacs_agent.jobs import KIND_ANALYZE, KIND_DELIVER_DICOM, TERMINAL_STATES
from pacs_agent.pipeline import read_log

SEED = 900002  # one study: an A4C loop (JPEG) and a parasternal distractor (RLE)
NODE_AET = "ECHOAGENT"


@pytest.fixture(scope="module")
def study_files(request, tmp_path_factory) -> list[Path]:
    return phantom_studies(phantom_cache(request.config, tmp_path_factory), 1, SEED)


@pytest.fixture
def setup(tmp_path: Path):
    node_port, web_port = free_tcp_port(), free_tcp_port()
    with run_orthanc(
        tmp_path / "orthanc", {"echoagent": (NODE_AET, "127.0.0.1", node_port)}
    ) as orthanc:
        toml = tmp_path / "echo-agent.toml"
        toml.write_text(
            node_config_text(
                tmp_path / "home",
                node_port,
                web_port,
                destinations=(("orthanc", orthanc.aet, "127.0.0.1", orthanc.dicom_port),),
            )
        )
        config = load_config(toml, environ={})
        node = start_node(config)
        try:
            yield orthanc, node, toml
        finally:
            node.stop()


def test_orthanc_routes_a_study_in_and_receives_an_artifact_back(setup, study_files, tmp_path):
    orthanc, node, _toml = setup
    sessions, config = node.session_factory, node.config
    uploaded = [orthanc.upload(path) for path in study_files]
    (orthanc_study,) = {item["ParentStudy"] for item in uploaded}
    orthanc.post("/modalities/echoagent/store", {"Resources": [orthanc_study], "Synchronous": True})

    def job_finished() -> Job | None:
        with sessions() as s:
            return s.scalars(
                select(Job).where(Job.kind == KIND_ANALYZE, Job.state.in_(TERMINAL_STATES))
            ).first()

    job = wait_until(job_finished, 180, "the A4C loop's job to finish", step_s=0.5)
    assert (job.state, job.attempts, job.last_error) == ("done", 1, "")
    a4c = next(p for p in study_files if truth(p)["view"] == "A4C")
    plax = next(p for p in study_files if truth(p)["view"] == "PLAX")
    with sessions() as s:
        instance = s.get(Instance, job.instance_fk)
        assert instance.sop_instance_uid == truth(a4c)["sop_instance_uid"]
        series = {r.series_instance_uid: r for r in s.scalars(select(Series))}
        study = s.scalars(select(Study)).one()
        analyses = s.scalars(select(Job).where(Job.kind == KIND_ANALYZE)).all()
        assert len(analyses) == 1, "one analysis job: the PLAX loop gets none"
    assert study.status == "drafted"
    assert series[truth(a4c)["series_instance_uid"]].eligibility == "eligible"
    rejected = series[truth(plax)["series_instance_uid"]]
    assert rejected.eligibility == "not_eligible"
    assert rejected.not_analysed_reason.startswith("view is not A4C")
    log = read_log(config.home_path / "jobs" / str(job.id))
    decoded = [e for e in log if e["event"] == "decoded"]
    assert [e["n_frames"] for e in decoded] == [truth(a4c)["n_frames"]]

    # the pipeline sent its DICOM objects back through delivery jobs: SEG, TID 1500 SR,
    # TID 5200 SR, secondary capture and PDF arrive in Orthanc in the source study, each
    # exported once
    def delivered() -> list[Job] | None:
        with sessions() as s:
            sends = s.scalars(select(Job).where(Job.kind == KIND_DELIVER_DICOM)).all()
        return sends if sends and all(j.state in TERMINAL_STATES for j in sends) else None

    sends = wait_until(delivered, 60, "the delivery jobs to end", step_s=0.2)
    assert [(j.state, j.destination, j.attempts) for j in sends] == [("done", "orthanc", 1)] * 5
    with sessions() as s:
        sent = {
            a.kind: a.sop_instance_uid
            for a in s.scalars(select(Artifact).where(Artifact.job_fk == job.id))
            if a.kind in ("seg", "sr", "echo_sr", "secondary_capture", "pdf")
        }
        for artifact in s.scalars(select(Artifact).where(Artifact.job_fk == job.id)):
            (status,) = export_status(s, artifact.id, config)
            expected = "sent" if artifact.kind in sent else "not_sent"
            assert (status.state, status.attempts) == (expected, int(expected == "sent")), status
    assert set(sent) == {"seg", "sr", "echo_sr", "secondary_capture", "pdf"}
    modalities = {}
    for kind, uid in sent.items():
        orthanc_id = orthanc.find_instance(uid)
        assert orthanc_id is not None, f"{kind} did not reach Orthanc"
        tags = orthanc.get(f"/instances/{orthanc_id}/simplified-tags")
        assert tags["StudyInstanceUID"] == study.study_instance_uid
        modalities[kind] = tags["Modality"]
    assert modalities["seg"] == "SEG" and modalities["sr"] == modalities["echo_sr"] == "SR"
    assert orthanc.get("/studies") == [orthanc_study]
    assert len(orthanc.get(f"/studies/{orthanc_study}/instances")) == len(study_files) + 5

    # a re-sent artifact is not sent twice: export_artifact resumes and finds it sent
    status = export_artifact(
        sessions, next(iter(_ids(sessions, job.id))), config.destinations[0], config
    )
    assert status.state == "sent"
    assert len(orthanc.get(f"/studies/{orthanc_study}/instances")) == len(study_files) + 5


def _ids(sessions, job_id: int) -> list[int]:
    with sessions() as s:
        return list(
            s.scalars(select(Artifact.id).where(Artifact.job_fk == job_id, Artifact.kind == "seg"))
        )


def test_destinations_check_against_orthanc_and_a_closed_port(setup, echo_agent_exe, tmp_path):
    orthanc, _node, toml = setup
    closed = free_tcp_port()
    with toml.open("a") as fh:
        fh.write(
            f'[[destinations]]\nname = "gone"\nae_title = "GONE"\nhost = "127.0.0.1"\n'
            f"port = {closed}\n"
        )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECHO_AGENT_")}
    result = subprocess.run(
        [echo_agent_exe, "--config", str(toml), "destinations", "check", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 1, result
    answers = {r["destination"]: r for r in map(json.loads, result.stdout.splitlines())}
    assert answers["orthanc"]["ok"] is True
    assert answers["orthanc"]["port"] == orthanc.dicom_port
    assert answers["gone"]["ok"] is False
    assert answers["gone"]["detail"] == (
        f"cannot connect to GONE@127.0.0.1:{closed} (connection refused or timed out)"
    )
    plain = subprocess.run(
        [echo_agent_exe, "--config", str(toml), "destinations", "check"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    lines = plain.stdout.splitlines()
    assert lines[0].startswith(f"orthanc: ORTHANC@127.0.0.1:{orthanc.dicom_port} ok")
    assert lines[1].startswith(f"gone: GONE@127.0.0.1:{closed} FAILED (cannot connect")
