"""The job pipeline with the shipped demo models: a stored phantom loop becomes measurements,
reporting objects, artifact rows and a preliminary report, and a second run adds nothing."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess

import pydicom
import pytest
from sqlalchemy import func, select
from support import need_tool, phantom_truth

from inference.model_cache import ModelCache
from pacs_agent.analysis import model_settings
from pacs_agent.config import Config, LlmConfig
from pacs_agent.db import make_engine, make_session_factory, upgrade
from pacs_agent.db.models import (
    Analysis,
    Artifact,
    Instance,
    Job,
    Patient,
    ReportVersion,
    Series,
    Study,
)
from pacs_agent.pipeline import MEASUREMENTS_NAME, job_output_dir, read_log, run_job

EXPECTED_KINDS = {
    "seg", "sr", "echo_sr", "overlay_video", "secondary_capture", "rendering", "pdf", "fhir"
}


@pytest.fixture(scope="module")
def a4c_loop(phantom_studies):
    return next(p for p in phantom_studies if phantom_truth(p)["view"] == "A4C")


@pytest.fixture
def stored_job(database_url, tmp_path, a4c_loop):
    """A study with the phantom loop copied into the store and one queued job for it."""
    # the language-model draft has its own test (test_pipeline_drafting.py)
    config = Config(home=str(tmp_path / "home"), llm=LlmConfig(draft=False))
    upgrade(database_url)
    engine = make_engine(database_url)
    sessions = make_session_factory(engine)
    ds = pydicom.dcmread(a4c_loop, stop_before_pixels=True)
    relative = f"{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"
    target = config.store_path / relative
    target.parent.mkdir(parents=True)
    shutil.copyfile(a4c_loop, target)
    with sessions.begin() as s:
        patient = Patient(patient_id=str(ds.PatientID), name=str(ds.PatientName))
        study = Study(study_instance_uid=ds.StudyInstanceUID, patient=patient, status="analysing")
        series = Series(series_instance_uid=ds.SeriesInstanceUID, study=study, modality="US")
        instance = Instance(
            sop_instance_uid=ds.SOPInstanceUID, sop_class_uid=ds.SOPClassUID, series=series,
            transfer_syntax_uid=ds.file_meta.TransferSyntaxUID, file_path=relative,
            file_size_bytes=target.stat().st_size, sha256=hashlib.sha256(b"").hexdigest(),
            number_of_frames=int(ds.NumberOfFrames),
        )
        s.add_all([patient, study, series, instance])
        s.flush()
        job = Job(study=study, instance_fk=instance.id, state="running", attempts=1)
        s.add(job)
        s.flush()
        job_id = job.id
    yield config, sessions, job_id
    engine.dispose()


@pytest.mark.slow
def test_a_job_measures_reports_and_records_once(stored_job, a4c_loop) -> None:
    config, sessions, job_id = stored_job
    models = ModelCache(model_settings(config))
    run_job(job_id, sessions, config, models)
    out = job_output_dir(config, job_id)
    document = json.loads((out / MEASUREMENTS_NAME).read_text())
    truth = phantom_truth(a4c_loop)
    assert document["models"]["demo"] is True
    assert document["ef_disks_percent"] == pytest.approx(truth["ef_percent"], abs=10)
    assert document["ef_percent"] is not None

    def snapshot():
        with sessions() as s:
            analyses = s.scalars(select(Analysis)).all()
            artifacts = s.scalars(select(Artifact).order_by(Artifact.kind)).all()
            reports = s.scalars(select(ReportVersion)).all()
            study = s.scalars(select(Study)).one()
            return (
                [(a.job_fk, a.demo_models, a.ef_percent) for a in analyses],
                [(a.kind, a.sop_instance_uid) for a in artifacts],
                [(r.version, r.status, r.demo_models) for r in reports],
                study.status,
                reports[0].structured_text if reports else "",
            )

    first = snapshot()
    analyses, artifacts, reports, status, text = first
    assert analyses == [(job_id, True, pytest.approx(document["ef_percent"]))]
    assert {kind for kind, _ in artifacts} == EXPECTED_KINDS
    assert reports == [(1, "preliminary", True)]
    assert status == "drafted"
    assert "DEMO MODELS" in text and "LVEF" in text
    for kind, _ in artifacts:
        with sessions() as s:
            row = s.scalars(select(Artifact).where(Artifact.kind == kind)).one()
            assert (config.home_path / row.file_path).is_file()

    run_job(job_id, sessions, config, models)  # a retry or a recovery after a crash
    assert snapshot() == first, "a second run replaces, never adds (same rows, same UIDs)"
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Artifact)) == len(EXPECTED_KINDS)
    events = [e["event"] for e in read_log(out)]
    assert events.count("analysed") == 2 and events.count("reported") == 2


@pytest.mark.slow
def test_analyze_command_writes_every_object_and_prints_measurements(
    echo_agent_exe, tmp_path, a4c_loop
) -> None:
    result = subprocess.run(
        [echo_agent_exe, "analyze", str(a4c_loop), "--out", str(tmp_path / "out")],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    for key in ("ef_percent", "ef_disks_percent", "edv_ml", "esv_ml", "heart_rate_bpm", "beats",
                "flags"):
        assert key in document
    truth = phantom_truth(a4c_loop)
    assert document["edv_ml"] == pytest.approx(truth["edv_ml"], rel=0.25)
    written = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"measurements.json", "seg.dcm", "sr.dcm", "echo_sr.dcm", "overlay.webm",
            "overlay_sc.dcm", "report.pdf", "report_pdf.dcm", "fhir_bundle.json"} <= written
    # the TID 5200 Echocardiography Procedure Report beside the TID 1500 Measurement Report
    templates = {name: str(pydicom.dcmread(tmp_path / "out" / name)
                           .ContentTemplateSequence[0].TemplateIdentifier)
                 for name in ("sr.dcm", "echo_sr.dcm")}  # fmt: skip
    assert templates == {"sr.dcm": "1500", "echo_sr.dcm": "5200"}
    dciodvfy = need_tool("dciodvfy", "dicom3tools")
    for name in ("seg.dcm", "sr.dcm", "echo_sr.dcm", "overlay_sc.dcm", "report_pdf.dcm"):
        check = subprocess.run([dciodvfy, str(tmp_path / "out" / name)], capture_output=True,
                               text=True, timeout=120)
        errors = [line for line in check.stderr.splitlines() if line.startswith("Error")]
        assert errors == [], (name, errors)


def test_analyze_command_refuses_a_corrupt_file_in_one_line(echo_agent_exe, tmp_path) -> None:
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"DICM" * 100)
    result = subprocess.run(
        [echo_agent_exe, "analyze", str(bad), "--out", str(tmp_path / "out")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("echo-agent: error: bad.dcm:")
