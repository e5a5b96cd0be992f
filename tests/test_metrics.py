"""``/metrics``: Prometheus text computed from the database (and job logs) at scrape time, the
process's own model and GPU numbers, and who may scrape."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from running_node import (
    first_a4c_loop,
    node_config,
    running_node,
    send_as_patient,
    wait_for_jobs_done,
)
from support import find_free_port

from pacs_agent.config import Config, DatabaseConfig, WebConfig
from pacs_agent.db import make_engine, make_session_factory, upgrade
from pacs_agent.db.models import Artifact, ExportAttempt, Instance, Job, Patient, Series, Study
from pacs_agent.metrics import (
    STAGE_BUCKETS_S,
    exposition,
    gpu_memory_bytes,
    histogram_buckets,
    process_registry,
    serve_metrics,
    stages_from_log,
)
from pacs_agent.pipeline import JOBS_DIR_NAME, JobContext, write_log
from pacs_agent.readiness import CNN, ModelStatus
from web.app import create_app

T0 = dt.datetime(2026, 11, 22, 8, 0, tzinfo=dt.UTC)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value, parsed by prometheus_client's own parser."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(parsed: dict, name: str, **labels: str) -> float:
    return parsed[(name, tuple(sorted(labels.items())))]


def test_histogram_buckets_are_cumulative_with_inf_and_sum() -> None:
    buckets, total = histogram_buckets([0.2, 1.0, 3.0, 400.0], (0.5, 1.0, 5.0))
    assert buckets == [("0.5", 1.0), ("1.0", 2.0), ("5.0", 3.0), ("+Inf", 4.0)]
    assert total == pytest.approx(404.2)
    assert histogram_buckets([], (1.0,)) == ([("1.0", 0.0), ("+Inf", 0.0)], 0.0)


def test_stages_come_from_the_last_attempt_of_a_real_job_log(tmp_path: Path) -> None:
    context = JobContext(5, 1, 1, 1, tmp_path / "x.dcm", tmp_path / "jobs" / "5")
    write_log(context, "attempt", attempt=1)
    write_log(context, "decoded", n_frames=3)  # attempt 1 died after decoding
    write_log(context, "attempt", attempt=2)
    write_log(context, "decoded", n_frames=3)
    write_log(context, "reported", artifacts=[1, 2])
    write_log(context, "analysed", stages_s={"preprocess_s": 0.5, "segmentation_s": 2.25})
    lines = (context.output_dir / "log.jsonl").read_text().splitlines()
    stages = stages_from_log([*lines, '{"cut short'])
    assert stages["preprocess"] == 0.5 and stages["segmentation"] == 2.25
    assert 0 <= stages["decode"] < 5 and 0 <= stages["export"] < 5
    assert stages_from_log(lines[:4]) == {}  # no finished analysis: nothing to count


def _seed(database_url: str) -> None:
    """Two studies, four jobs in three states, and export tries to PACS and to the EHR."""
    upgrade(database_url)
    engine = make_engine(database_url)
    with make_session_factory(engine).begin() as session:
        patient = Patient(patient_id="P1", name="Doe^Jane")
        session.add(patient)
        session.flush()
        studies = []
        for index, status in enumerate(("analysing", "drafted")):
            study = Study(
                study_instance_uid=f"2.25.10{index}", patient_fk=patient.id, status=status
            )
            session.add(study)
            session.flush()
            studies.append(study)
        series = Series(series_instance_uid="2.25.200", study_fk=studies[0].id)
        session.add(series)
        session.flush()
        instances = []
        for index in range(3):
            instance = Instance(
                sop_instance_uid=f"2.25.30{index}", sop_class_uid="1.2.840.10008.5.1.4.1.1.3.1",
                series_fk=series.id, transfer_syntax_uid="1.2.840.10008.1.2.1",
                file_path=f"x/{index}.dcm", file_size_bytes=10, sha256="0" * 64,
            )
            session.add(instance)
            session.flush()
            instances.append(instance)
        # done: latency 4 s / 40 s, run 2 s / 35 s; one queued, one failed
        timings = [(4, 2), (40, 35)]
        for instance, (latency_s, run_s) in zip(instances[:2], timings, strict=True):
            finished = T0 + dt.timedelta(seconds=latency_s)
            session.add(Job(
                study_fk=studies[0].id, instance_fk=instance.id, state="done", attempts=1,
                created_at=T0, started_at=finished - dt.timedelta(seconds=run_s),
                finished_at=finished,
            ))
        session.add(Job(study_fk=studies[1].id, instance_fk=instances[2].id, state="queued"))
        session.add(Job(study_fk=studies[1].id, instance_fk=instances[0].id, state="failed"))
        seg = Artifact(study_fk=studies[0].id, kind="seg", file_path="a", media_type="x",
                       sha256="0" * 64)
        fhir = Artifact(study_fk=studies[0].id, kind="fhir", file_path="b", media_type="x",
                        sha256="0" * 64)
        oru = Artifact(study_fk=studies[0].id, kind="hl7_oru", file_path="c", media_type="x",
                       sha256="0" * 64)
        session.add_all([seg, fhir, oru])
        session.flush()
        for artifact, state in ((seg, "failed"), (seg, "failed"), (seg, "sent"), (fhir, "failed"),
                                (oru, "failed")):  # fmt: skip
            session.add(ExportAttempt(artifact_fk=artifact.id, destination="d", state=state))
        # delivery jobs: neither "analysis jobs" nor analysis latency (a slow send is not one)
        session.add(Job(
            study_fk=studies[0].id, artifact_fk=seg.id, destination="d", kind="deliver_dicom",
            state="done", attempts=3, created_at=T0, started_at=T0,
            finished_at=T0 + dt.timedelta(seconds=5000),
        ))
        session.add(Job(study_fk=studies[0].id, artifact_fk=oru.id, destination="hl7:ris",
                        kind="deliver_hl7", state="queued"))
    engine.dispose()


def test_database_counts_and_latencies_on_both_backends(tmp_path: Path, database_url: str) -> None:
    _seed(database_url)
    config = Config(home=str(tmp_path / "home"), database=DatabaseConfig(url=database_url))
    engine = make_engine(database_url)
    try:
        app = create_app(engine, config, secret_key=b"k" * 32)
        response = app.test_client().get("/metrics")
    finally:
        engine.dispose()
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain; version=0.0.4")
    parsed = samples(response.get_data(as_text=True))
    assert value(parsed, "echo_agent_database_up") == 1
    assert value(parsed, "echo_agent_instances_received_total") == 3
    assert value(parsed, "echo_agent_studies", state="analysing") == 1
    assert value(parsed, "echo_agent_studies", state="drafted") == 1
    assert value(parsed, "echo_agent_studies", state="signed") == 0
    assert [value(parsed, "echo_agent_jobs", state=s) for s in ("done", "queued", "failed")] == [
        2, 1, 1
    ]
    assert value(parsed, "echo_agent_export_failures_total", kind="dicom") == 2
    assert value(parsed, "echo_agent_export_failures_total", kind="fhir") == 1
    assert value(parsed, "echo_agent_export_failures_total", kind="hl7") == 1
    assert value(parsed, "echo_agent_delivery_jobs", kind="deliver_dicom", state="done") == 1
    assert value(parsed, "echo_agent_delivery_jobs", kind="deliver_hl7", state="queued") == 1
    assert value(parsed, "echo_agent_delivery_jobs", kind="deliver_fhir", state="queued") == 0
    assert value(parsed, "echo_agent_job_latency_seconds_count") == 2
    assert value(parsed, "echo_agent_job_latency_seconds_sum") == pytest.approx(44)
    assert value(parsed, "echo_agent_job_latency_seconds_bucket", le="5.0") == 1
    assert value(parsed, "echo_agent_job_latency_seconds_bucket", le="60.0") == 2
    assert value(parsed, "echo_agent_job_run_seconds_sum") == pytest.approx(37)
    assert value(parsed, "echo_agent_job_run_seconds_bucket", le="2.5") == 1
    # a web app without a node's models says nothing about models, and no patient data leaks
    assert not any(name.startswith("echo_agent_model") for name, _ in parsed)
    assert "Doe" not in response.get_data(as_text=True)


def test_a_database_that_does_not_answer_is_a_metric_not_a_failed_scrape(tmp_path: Path) -> None:
    url = f"postgresql+psycopg://nobody@127.0.0.1:{find_free_port()}/none"  # nothing listens
    engine = make_engine(url)
    config = Config(home=str(tmp_path / "home"), database=DatabaseConfig(url=url))
    try:
        response = create_app(engine, config, secret_key=b"k" * 32).test_client().get("/metrics")
    finally:
        engine.dispose()
    assert response.status_code == 200
    assert value(samples(response.get_data(as_text=True)), "echo_agent_database_up") == 0


def test_scraping_needs_loopback_or_the_bearer_token(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    upgrade(url)
    engine = make_engine(url)
    base = Config(home=str(tmp_path / "home"), database=DatabaseConfig(url=url))
    try:
        open_app = create_app(engine, base, secret_key=b"k" * 32).test_client()
        assert open_app.get("/metrics").status_code == 200  # the test client is 127.0.0.1
        remote = open_app.get("/metrics", environ_base={"REMOTE_ADDR": "10.1.2.3"})
        assert remote.status_code == 403 and b"metrics_token" in remote.data
        assert open_app.get("/metrics", environ_base={"REMOTE_ADDR": "::1"}).status_code == 200

        with_token = dataclasses.replace(base, web=WebConfig(metrics_token="s3cret"))
        client = create_app(engine, with_token, secret_key=b"k" * 32).test_client()
        assert client.get("/metrics").status_code == 401  # loopback is not enough then
        wrong = client.get("/metrics", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.headers["WWW-Authenticate"].startswith("Bearer")
        right = client.get(
            "/metrics",
            headers={"Authorization": "Bearer s3cret"},
            environ_base={"REMOTE_ADDR": "10.1.2.3"},
        )
        assert right.status_code == 200 and b"echo_agent_jobs" in right.data
    finally:
        engine.dispose()


def test_a_worker_process_serves_its_own_metrics_only(tmp_path: Path) -> None:
    status = ModelStatus()
    status.expect(CNN)
    status.track(CNN, lambda: None)
    port = find_free_port()
    server = serve_metrics(process_registry(status), "127.0.0.1", port)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            parsed = samples(resp.read().decode())
    finally:
        server.shutdown()
    assert value(parsed, "echo_agent_model_ready", model="cnn") == 1
    assert value(parsed, "echo_agent_model_load_seconds", model="cnn") >= 0
    assert not any(name.startswith("echo_agent_jobs") for name, _ in parsed)


def test_a_running_node_reports_its_work_and_its_models(
    tmp_path: Path, phantom_studies: list[Path]
) -> None:
    config = node_config(tmp_path / "home", f"sqlite:///{tmp_path / 'node.db'}")
    assert (config.home_path / JOBS_DIR_NAME).parent == config.home_path
    with running_node(config) as node:
        send_as_patient(node, first_a4c_loop(phantom_studies), "Roe^Richard", tmp_path / "send")
        wait_for_jobs_done(node, 1)
        base = f"http://127.0.0.1:{node.web_port}"
        with urllib.request.urlopen(f"{base}/metrics", timeout=30) as resp:
            text = resp.read().decode()
        with urllib.request.urlopen(f"{base}/readyz", timeout=30) as resp:
            ready = json.load(resp)
    parsed = samples(text)
    assert value(parsed, "echo_agent_instances_received_total") == 1
    assert sum(v for (name, _), v in parsed.items() if name == "echo_agent_studies") == 1
    assert value(parsed, "echo_agent_jobs", state="done") == 1
    assert value(parsed, "echo_agent_job_latency_seconds_count") == 1
    for stage in ("decode", "preprocess", "segmentation", "ef", "measurements", "export"):
        assert value(parsed, "echo_agent_job_stage_seconds_count", stage=stage) == 1, stage
        assert value(parsed, "echo_agent_job_stage_seconds_bucket", stage=stage, le="+Inf") == 1
    top = _le(STAGE_BUCKETS_S[-1])
    assert value(parsed, "echo_agent_job_stage_seconds_bucket", stage="segmentation", le=top) == 1
    assert value(parsed, "echo_agent_model_load_seconds", model="cnn") > 0
    assert value(parsed, "echo_agent_model_ready", model="cnn") == 1
    assert ready == {"status": "ready", "checks": {
        "database": "ok", "schema": "ok", "store": "ok", "disk": "ok", "models": "ok"}}
    assert "Roe" not in text


def _le(bound: float) -> str:
    return repr(float(bound))


def test_gpu_memory_is_reported_only_where_cuda_is_in_use() -> None:
    import torch

    if not torch.cuda.is_available():
        assert gpu_memory_bytes() == {}
        assert "gpu" not in exposition_of(ModelStatus())
        return
    block = torch.empty(64 * 1024 * 1024, dtype=torch.uint8, device="cuda")
    memory = gpu_memory_bytes()
    assert memory[("0", "allocated")] >= block.numel()
    assert memory[("0", "reserved")] >= memory[("0", "allocated")]
    assert "echo_agent_gpu_memory_bytes" in exposition_of(ModelStatus())


def exposition_of(status: ModelStatus) -> str:
    return exposition(process_registry(status)).decode()
