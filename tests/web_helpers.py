"""Shared by the web tests: a database with users, studies seeded through the real pipeline
(decode -> segment -> EF -> measurements -> SEG/SR/overlay/PDF/FHIR), and logging in.

A study is analysed by ``pacs_agent.pipeline.analyse_and_report`` with either the shipped demo
networks or a truth oracle (the phantom's own masks and EF in place of the networks), so the
web app reads exactly the rows and files a node writes.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from flask.testing import FlaskClient
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker
from support import phantom_truth, require_or_skip

from inference.decode import read_cine
from inference.model_cache import Models, TorchEFModel, TorchSegmenter
from inference.preprocess import PreprocessParams, preprocess_cine
from inference.presets import DEMO_DIR, DEMO_EF_FILE, DEMO_SEG_FILE, load_preset
from pacs_agent.config import Config, DatabaseConfig, LlmConfig
from pacs_agent.db import make_engine, make_session_factory, upgrade
from pacs_agent.db.models import Instance, Job, Patient, Series, Study
from pacs_agent.deliveries import see_through
from pacs_agent.pipeline import JobContext, analyse_and_report, job_output_dir
from pacs_agent.users import add_user

PASSWORD = "correct-horse-battery"
USERS = {"cardio": "cardiologist", "sono": "sonographer", "admin": "admin"}
DISPLAY_NAMES = {"cardio": "Ada Okafor", "sono": "Sam Sonographer", "admin": "Alex Admin"}
# other demo weights (retrained ones, say) for the browser test; default: the shipped ones
DEMO_DIR_ENV = "ECHO_AGENT_TEST_DEMO_DIR"
ORACLE_PARAMS = PreprocessParams(mean=(30.0, 30.0, 30.0), std=(45.0, 45.0, 45.0))


@dataclass
class Node:
    """What a web test needs: configuration, engine and session factory on one database."""

    config: Config
    engine: Engine
    session_factory: sessionmaker[Session]


def make_node(home: Path, database_url: str) -> Node:
    # no language-model draft: these tests look at the review app (drafting has its own test)
    config = Config(
        home=str(home), database=DatabaseConfig(url=database_url), llm=LlmConfig(draft=False)
    )
    upgrade(database_url)
    engine = make_engine(database_url)
    factory = make_session_factory(engine)
    with factory.begin() as session:
        for name, role in USERS.items():
            add_user(session, name, PASSWORD, role, DISPLAY_NAMES[name])
    return Node(config, engine, factory)


class TruthOracle:
    """Both networks replaced by the phantom's truth: its masks on the grid, its EF per clip."""

    def __init__(self, grid: np.ndarray, ef_percent: float) -> None:
        self.grid = grid
        self.ef_percent = ef_percent

    def segment(self, batch_112: np.ndarray) -> np.ndarray:
        return self.grid

    def predict_ef(self, clips: np.ndarray) -> np.ndarray:
        return np.full(len(clips), self.ef_percent, dtype=np.float32)


class FixedModels:
    """Stands in for ``inference.model_cache.ModelCache``: ``get`` returns the given models."""

    def __init__(self, models: Models) -> None:
        self.models = models

    def get(self) -> Models:
        return self.models


def oracle_models(path: Path) -> FixedModels:
    truth = phantom_truth(path)
    masks = np.load(path.parent / truth["masks_file"])["masks"]
    transform = preprocess_cine(read_cine(path), ORACLE_PARAMS).transform
    grid = np.stack([transform.mask_to_grid(m) for m in masks]).astype(np.float32)
    oracle = TruthOracle(grid, float(truth["ef_percent"]))
    return FixedModels(
        Models(
            segmenter=oracle,  # type: ignore[arg-type]
            ef_model=oracle,  # type: ignore[arg-type]
            params=ORACLE_PARAMS,
            demo=True,
            description="truth oracle (test)",
            preset="demo",
            load_time_s=0.0,
        )
    )


def demo_models_or_skip() -> FixedModels:
    """The shipped demo networks on the CPU, as the node loads them; skipped (failed in CI)
    while the weights are not in the repository yet."""
    folder = Path(os.environ.get(DEMO_DIR_ENV) or DEMO_DIR)
    missing = [n for n in (DEMO_SEG_FILE, DEMO_EF_FILE) if not (folder / n).is_file()]
    if missing:
        require_or_skip(f"demo weights {', '.join(missing)} not found in {folder}")
    loaded = load_preset("demo", demo_dir=folder, device="cpu")
    return FixedModels(
        Models(
            segmenter=TorchSegmenter(loaded.segmenter, device="cpu"),
            ef_model=TorchEFModel(loaded.ef_model, device="cpu") if loaded.ef_model else None,
            params=PreprocessParams(mean=loaded.mean, std=loaded.std),
            demo=loaded.demo,
            description=loaded.description,
            preset=loaded.preset,
            load_time_s=0.0,
        )
    )


def a4c_loops(paths: list[Path]) -> list[Path]:
    return [p for p in paths if phantom_truth(p)["view"] == "A4C"]


def seed_study(
    node: Node,
    source: Path,
    *,
    patient_name: str | None = None,
    models: object | None = None,
    status: str = "complete",
    accession: str | None = None,
) -> int:
    """Copies a loop into the store, records its rows as ingestion would, and (with
    ``models``) runs the pipeline's analysis stage on it, then the delivery jobs it queued
    (to the configured PACS and EHR) as a node's delivery worker would. Returns the study
    id."""
    ds = pydicom.dcmread(source, stop_before_pixels=True)
    if patient_name is not None:
        ds = pydicom.dcmread(source)
        ds.PatientName = patient_name
    if accession is not None:
        if patient_name is None:
            ds = pydicom.dcmread(source)
        ds.AccessionNumber = accession
    relative = f"{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"
    target = node.config.store_path / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    if patient_name is None and accession is None:
        shutil.copyfile(source, target)
    else:
        ds.save_as(target)
    date = str(ds.get("StudyDate", "") or "")
    with node.session_factory.begin() as session:
        patient = Patient(patient_id=str(ds.PatientID), issuer="", name=str(ds.PatientName),
                          sex=str(ds.get("PatientSex", "") or ""))
        session.add(patient)
        session.flush()
        study = Study(
            study_instance_uid=str(ds.StudyInstanceUID),
            patient_fk=patient.id,
            accession_number=str(ds.get("AccessionNumber", "") or ""),
            study_date=dt.datetime.strptime(date, "%Y%m%d").date() if len(date) == 8 else None,
            description=str(ds.get("StudyDescription", "") or ""),
            status=status,
        )
        session.add(study)
        session.flush()
        series = Series(series_instance_uid=str(ds.SeriesInstanceUID), study_fk=study.id,
                        modality="US", description=str(ds.get("SeriesDescription", "") or ""),
                        eligibility="eligible")
        session.add(series)
        session.flush()
        instance = Instance(
            sop_instance_uid=str(ds.SOPInstanceUID), sop_class_uid=str(ds.SOPClassUID),
            series_fk=series.id, transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
            number_of_frames=int(ds.get("NumberOfFrames", 1) or 1), file_path=relative,
            file_size_bytes=target.stat().st_size, sha256="0" * 64,
        )
        session.add(instance)
        session.flush()
        job = Job(study_fk=study.id, instance_fk=instance.id, state="done", attempts=1)
        session.add(job)
        session.flush()
        study_id, instance_id, job_id = study.id, instance.id, job.id
    if models is not None:
        context = JobContext(job_id, study_id, instance_id, 1, target,
                             job_output_dir(node.config, job_id))
        queued: list[int] = []
        analyse_and_report(context, read_cine(target), node.session_factory, node.config,
                           models, submit=queued.append)  # type: ignore[arg-type]
        see_through(node.session_factory, node.config, queued)
    return study_id


def add_not_eligible_series(node: Node, study_id: int, reason: str) -> None:
    with node.session_factory.begin() as session:
        session.add(Series(series_instance_uid=f"2.25.{study_id}999{len(reason)}",
                           study_fk=study_id, modality="US", description="colour Doppler",
                           eligibility="not_eligible", not_analysed_reason=reason))


_CSRF = re.compile(r'name="csrf-token" content="([^"]+)"')


def csrf_from(html: str) -> str:
    found = _CSRF.search(html)
    assert found, "no CSRF token in the page"
    return found.group(1)


def login(client: FlaskClient, username: str, password: str = PASSWORD) -> str:
    """Logs in through the form; returns the session's CSRF token for later requests."""
    token = csrf_from(client.get("/login").get_data(as_text=True))
    response = client.post(
        "/login", data={"username": username, "password": password, "csrf_token": token}
    )
    assert response.status_code == 302, response.get_data(as_text=True)
    return csrf_from(client.get("/").get_data(as_text=True))
