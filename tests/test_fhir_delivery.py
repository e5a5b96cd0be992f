"""Delivery to the EHR: the node POSTs its transaction Bundle to a FHIR server (the loopback
receiver of ``fhir_receiver``, which implements conditional update as the specification
words it) and records every try. A retry after a failure, whether the server failed before
applying the Bundle or applied it and the answer was lost, leaves one report on the receiver;
the final bundle after sign-off updates that same report; a refusal fails at once with the
receiver's reason; what is posted validates against the official FHIR R4 JSON schema."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fhir_receiver import FhirReceiver
from reporting_helpers import fhir_schema_errors
from sqlalchemy import select
from support import find_free_port
from web_helpers import Node, a4c_loops, login, make_node, oracle_models, seed_study

from pacs_agent.config import ConfigError, EhrConfig, load_config
from pacs_agent.db.models import Artifact, AuditEvent, ExportAttempt, Job
from pacs_agent.fhir_delivery import (
    current_bundle,
    deliver_artifact,
    deliver_if_current,
    destination_name,
    retryable,
    study_delivery,
    transaction_response_problem,
)
from web.app import create_app

FAST = {"backoff_initial_s": 0.01, "backoff_max_s": 0.05, "timeout_s": 5.0}


def _with_ehr(node: Node, base_url: str, **ehr: object) -> Node:
    settings = {**FAST, **ehr}
    config = dataclasses.replace(node.config, ehr=EhrConfig(fhir_base_url=base_url, **settings))
    return Node(config, node.engine, node.session_factory)


def _bundle_of(node: Node, study_id: int) -> tuple[int, dict]:
    with node.session_factory() as session:
        artifact = current_bundle(session, study_id)
        assert artifact is not None
        path = node.config.home_path / artifact.file_path
        return artifact.id, json.loads(path.read_text())


def _attempts(node: Node, artifact_id: int) -> list[ExportAttempt]:
    with node.session_factory() as session:
        return list(session.scalars(
            select(ExportAttempt).where(ExportAttempt.artifact_fk == artifact_id)
            .order_by(ExportAttempt.attempt)))


@pytest.fixture(scope="module")
def ehr() -> Iterator[FhirReceiver]:
    with FhirReceiver().serve() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def analysed(tmp_path_factory, phantom_studies, ehr) -> Iterator[tuple[Node, int]]:
    """A study the real pipeline analysed (a truth oracle plays the networks), with an EHR
    configured: the pipeline delivered its preliminary bundle."""
    tmp = tmp_path_factory.mktemp("fhir_delivery")
    node = make_node(tmp / "home", f"sqlite:///{tmp / 'echo-agent.db'}")
    node = _with_ehr(node, ehr.base_url)
    loop = a4c_loops(phantom_studies)[0]
    study_id = seed_study(node, loop, models=oracle_models(loop))
    yield node, study_id
    node.engine.dispose()


def test_the_pipeline_delivers_one_report_with_its_observations(analysed, ehr, tmp_path):
    node, study_id = analysed
    artifact_id, bundle = _bundle_of(node, study_id)
    n_observations = sum(e["resource"]["resourceType"] == "Observation" for e in bundle["entry"])
    assert n_observations >= 4
    (report,) = ehr.all("DiagnosticReport")
    observations = ehr.all("Observation")
    assert len(observations) == n_observations
    assert report["status"] == "preliminary" and report["meta"]["versionId"] == "1"
    # the urn:uuid: references now name the receiver's Observations
    assert sorted(r["reference"] for r in report["result"]) == sorted(
        f"Observation/{o['id']}" for o in observations)

    (posted,) = ehr.transactions()
    assert posted.headers["Content-Type"] == "application/fhir+json"
    assert "Authorization" not in posted.headers
    assert json.loads(posted.body) == bundle  # the stored artifact, byte for byte in meaning
    body_path = tmp_path / "posted.json"
    body_path.write_bytes(posted.body)
    assert fhir_schema_errors(body_path) == {str(body_path): []}

    (attempt,) = _attempts(node, artifact_id)
    assert (attempt.destination, attempt.state, attempt.status_code, attempt.error) == (
        destination_name(node.config.ehr), "sent", "200", "")
    with node.session_factory() as session:
        delivery = study_delivery(session, study_id, node.config)
    assert delivery.state == "delivered" and delivery.attempts == 1
    assert delivery.label.startswith("preliminary - delivered to EHR 20")


@pytest.mark.parametrize("failure", ["500", "drop"])
def test_a_resend_after_a_failure_leaves_one_report(analysed, database_url, tmp_path, failure):
    """The same stored bundle, on both databases, to a fresh receiver that fails the first
    POST: with a 500 before applying it, or ("drop") after applying it, losing the answer."""
    source, study_id = analysed
    artifact_id, bundle = _bundle_of(source, study_id)
    node = make_node(tmp_path / "home", database_url)
    loop_study = _copy_bundle_into(node, source, artifact_id)
    with FhirReceiver().serve() as receiver:
        receiver.fail_next(1, failure)
        node = _with_ehr(node, receiver.base_url, max_attempts=3)
        status = deliver_artifact(node.session_factory, loop_study, node.config)
        assert (status.state, status.attempts) == ("sent", 2)
        first, second = _attempts(node, loop_study)
        assert first.state == "failed" and second.state == "sent"
        if failure == "500":
            assert first.status_code == "500" and "simulated server failure" in first.error
        else:
            assert first.status_code == "" and "closed connection without response" in first.error
        assert len(receiver.transactions()) == 2
        (report,) = receiver.all("DiagnosticReport")  # exactly one, whatever happened
        n_observations = sum(e["resource"]["resourceType"] == "Observation"
                             for e in bundle["entry"])
        assert len(receiver.all("Observation")) == n_observations
        # applied twice after a lost answer (an update, version 2), once after a 500
        assert report["meta"]["versionId"] == ("2" if failure == "drop" else "1")
        again = deliver_artifact(node.session_factory, loop_study, node.config)
        assert again.state == "sent" and len(receiver.transactions()) == 2  # never resent
    node.engine.dispose()


def _copy_bundle_into(node: Node, source: Node, artifact_id: int) -> int:
    """A study in ``node`` whose FHIR artifact is a copy of ``source``'s bundle (the real
    pipeline's output, without analysing the loop again)."""
    with source.session_factory() as session:
        artifact = session.get(Artifact, artifact_id)
        assert artifact is not None
        bundle_path = source.config.home_path / artifact.file_path
        sha256 = artifact.sha256
    store = next(source.config.store_path.rglob("*.dcm"))
    study_id = seed_study(node, store)
    target = node.config.home_path / "bundle.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(bundle_path, target)
    with node.session_factory.begin() as session:
        job = session.scalars(select(Job).where(Job.study_fk == study_id)).one()
        copy = Artifact(study_fk=study_id, job_fk=job.id, kind="fhir", file_path="bundle.json",
                        media_type="application/fhir+json", sha256=sha256)
        session.add(copy)
        session.flush()
        return copy.id


def test_sign_off_delivers_the_final_report_over_the_same_one(analysed, ehr):
    node, study_id = analysed
    (before,) = ehr.all("DiagnosticReport")
    observation_ids = sorted(o["id"] for o in ehr.all("Observation"))
    preliminary_id, _ = _bundle_of(node, study_id)
    app = create_app(node.engine, node.config)  # no PACS destination: only the EHR
    client = app.test_client()
    token = login(client, "cardio")
    version = client.get(f"/api/studies/{study_id}").get_json()["report"]
    signed = client.post(
        f"/api/studies/{study_id}/report/sign", headers={"X-CSRF-Token": token},
        json={"base_version": version["version"], "structured_text": version["structured_text"],
              "narrative_text": "Normal LV size and systolic function."})
    assert signed.status_code == 201, signed.get_json()
    assert signed.get_json()["export_started"] is True
    export = _wait_delivered(client, study_id)
    assert export["fhir_status"] == "final"
    assert export["fhir_delivery"]["label"].startswith("final - delivered to EHR")
    fhir_rows = [a for a in export["artifacts"] if a["kind"] == "fhir"]
    assert fhir_rows[-1]["destinations"] == [{
        "destination": destination_name(node.config.ehr), "state": "sent", "attempts": 1,
        "last_error": ""}]

    (after,) = ehr.all("DiagnosticReport")  # the same report, updated
    assert after["id"] == before["id"] and after["meta"]["versionId"] == "2"
    assert after["status"] == "final"
    assert "Okafor" in after["resultsInterpreter"][0]["display"]  # who signed
    assert sorted(o["id"] for o in ehr.all("Observation")) == observation_ids
    assert {o["status"] for o in ehr.all("Observation")} == {"final"}
    with node.session_factory() as session:
        events = session.scalars(select(AuditEvent).where(AuditEvent.action == "export")).all()
    results = [e.detail.get("results", {}) for e in events]
    assert {destination_name(node.config.ehr): "sent"} in results
    # the preliminary bundle is superseded: the pipeline no longer sends it
    transactions = len(ehr.transactions())
    assert deliver_if_current(node.session_factory, preliminary_id, node.config) is None
    assert len(ehr.transactions()) == transactions


def _wait_delivered(client, study_id: int, timeout_s: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        export = client.get(f"/api/studies/{study_id}/export").get_json()
        done = export["fhir_delivery"]["state"] in ("delivered", "failed")
        if (done and not export["running"]) or time.monotonic() > deadline:
            return export
        time.sleep(0.1)


def test_a_refusal_fails_at_once_with_the_reason(analysed, tmp_path):
    source, study_id = analysed
    artifact_id, _ = _bundle_of(source, study_id)
    node = make_node(tmp_path / "home", f"sqlite:///{tmp_path / 'echo-agent.db'}")
    copy_id = _copy_bundle_into(node, source, artifact_id)
    copied_study = _study_of(node, copy_id)
    with FhirReceiver(known_patients={"SOMEONE-ELSE"}).serve() as receiver:
        node = _with_ehr(node, receiver.base_url, max_attempts=5)
        status = deliver_artifact(node.session_factory, copy_id, node.config)
        assert (status.state, status.attempts, status.last_status_code) == ("failed", 1, "400")
        assert "no Patient with identifier" in status.last_error
        assert status.last_error.startswith("HTTP 400 from the EHR: error: entry 0")
        assert receiver.all("DiagnosticReport") == [] and len(receiver.transactions()) == 1
        with node.session_factory() as session:
            delivery = study_delivery(session, copied_study, node.config)
        assert delivery.state == "failed"
        assert delivery.label.endswith(" - failed: " + status.last_error)
    node.engine.dispose()


def _study_of(node: Node, artifact_id: int) -> int:
    with node.session_factory() as session:
        artifact = session.get(Artifact, artifact_id)
        assert artifact is not None
        return artifact.study_fk


def test_server_errors_are_retried_with_back_off_then_fail(analysed, tmp_path):
    source, study_id = analysed
    artifact_id, _ = _bundle_of(source, study_id)
    node = make_node(tmp_path / "home", f"sqlite:///{tmp_path / 'echo-agent.db'}")
    copy_id = _copy_bundle_into(node, source, artifact_id)
    waits: list[float] = []

    def wait(seconds: float) -> bool:
        waits.append(seconds)
        time.sleep(seconds)
        return False

    with FhirReceiver().serve() as receiver:
        receiver.fail_next(10, "500")
        node = _with_ehr(node, receiver.base_url, max_attempts=3, backoff_initial_s=0.05,
                         backoff_max_s=1.0)
        # stopped during the first back-off (a shutdown): the page says a retry is due
        stopped = deliver_artifact(node.session_factory, copy_id, node.config,
                                   wait=lambda _s: True)
        assert (stopped.state, stopped.attempts) == ("pending", 1)
        with node.session_factory() as session:
            delivery = study_delivery(session, _study_of(node, copy_id), node.config)
        assert delivery.state == "retrying"
        assert " - retrying (attempt 1 of 3 failed: HTTP 500 from the EHR" in delivery.label
        # resumed: two more tries after growing waits, then out of attempts
        status = deliver_artifact(node.session_factory, copy_id, node.config, wait=wait)
        assert (status.state, status.attempts, status.last_status_code) == ("failed", 3, "500")
        assert len(receiver.transactions()) == 3 and receiver.all("DiagnosticReport") == []
    assert len(waits) == 2 and 0 < waits[0] <= 0.05 and 0.05 < waits[1] <= 0.1


@pytest.mark.parametrize("answer, problem", [
    (b"<html>proxy error</html>", "the answer is not JSON"),
    (b'{"resourceType": "OperationOutcome"}', "the answer is not a Bundle"),
    (b'{"resourceType": "Bundle", "type": "batch-response", "entry": []}', "not a transaction"),
    (b'{"resourceType": "Bundle", "type": "transaction-response", "entry": []}',
     "0 entries for 2 sent"),
    (b'{"resourceType": "Bundle", "type": "transaction-response", "entry": ['
     b'{"response": {"status": "201 Created"}}, {"response": {"status": "409 Conflict"}}]}',
     "entry 1 has status '409 Conflict'"),
    (b'{"resourceType": "Bundle", "type": "transaction-response", "entry": ['
     b'{"response": {"status": "201 Created"}}, {"response": {"status": "200"}}]}', ""),
])
def test_only_an_all_2xx_transaction_response_counts_as_delivered(answer, problem):
    found = transaction_response_problem(answer, 2)
    assert (problem in found) if problem else found == ""


def test_which_failures_are_retried():
    assert [retryable(code) for code in ("", "429", "500", "503")] == [True] * 4
    assert [retryable(code) for code in ("400", "401", "404", "412", "422", "302", "200",
                                         "local")] == [False] * 8


def test_an_unreachable_ehr_is_retried_and_a_missing_token_fails_at_once(
    analysed, tmp_path, monkeypatch
):
    source, study_id = analysed
    artifact_id, _ = _bundle_of(source, study_id)
    node = make_node(tmp_path / "home", f"sqlite:///{tmp_path / 'echo-agent.db'}")
    copy_id = _copy_bundle_into(node, source, artifact_id)
    closed = _with_ehr(node, f"http://127.0.0.1:{find_free_port()}/fhir", max_attempts=2)
    status = deliver_artifact(closed.session_factory, copy_id, closed.config)
    assert (status.state, status.attempts, status.last_status_code) == ("failed", 2, "")
    assert status.last_error.startswith("cannot reach http://127.0.0.1:")

    monkeypatch.delenv("ECHO_AGENT_TEST_EHR_TOKEN", raising=False)
    with FhirReceiver().serve() as receiver:
        tokened = _with_ehr(node, receiver.base_url, bearer_token_env="ECHO_AGENT_TEST_EHR_TOKEN")
        status = deliver_artifact(tokened.session_factory, copy_id, tokened.config)
        assert (status.state, status.attempts, status.last_status_code) == ("failed", 1, "local")
        assert "ECHO_AGENT_TEST_EHR_TOKEN" in status.last_error and receiver.requests == []


def test_the_bearer_token_comes_from_the_named_environment_variable(
    analysed, tmp_path, monkeypatch
):
    source, study_id = analysed
    artifact_id, _ = _bundle_of(source, study_id)
    node = make_node(tmp_path / "home", f"sqlite:///{tmp_path / 'echo-agent.db'}")
    copy_id = _copy_bundle_into(node, source, artifact_id)
    monkeypatch.setenv("ECHO_AGENT_TEST_EHR_TOKEN", "s3cret-token")
    with FhirReceiver().serve() as receiver:
        node = _with_ehr(node, receiver.base_url, bearer_token_env="ECHO_AGENT_TEST_EHR_TOKEN")
        assert deliver_artifact(node.session_factory, copy_id, node.config).state == "sent"
        (posted,) = receiver.transactions()
        assert posted.headers["Authorization"] == "Bearer s3cret-token"
    assert "s3cret" not in repr(node.config)


@pytest.mark.parametrize("url, message", [
    ("ftp://ehr.example/fhir", "must be an http:// or https:// URL"),
    ("https://", "must be an http:// or https:// URL"),
    ("https://user:pw@ehr.example/fhir", "must not carry credentials"),
    ("https://ehr.example/fhir?tenant=1", "must not carry credentials, a query"),
])
def test_the_ehr_url_is_checked_at_start_up(url, message):
    with pytest.raises(ConfigError, match=message):
        load_config(environ={"ECHO_AGENT_EHR_FHIR_BASE_URL": url})
    assert load_config(environ={}).ehr.fhir_base_url == ""  # the default: delivery off
    loaded = load_config(environ={"ECHO_AGENT_EHR_FHIR_BASE_URL": "https://ehr.example/fhir/R4",
                                  "ECHO_AGENT_EHR_MAX_ATTEMPTS": "7"})
    assert (loaded.ehr.fhir_base_url, loaded.ehr.max_attempts) == (
        "https://ehr.example/fhir/R4", 7)


def test_the_ehr_section_reads_from_the_toml_file(tmp_path: Path):
    path = tmp_path / "echo-agent.toml"
    path.write_text('[ehr]\nfhir_base_url = "http://127.0.0.1:8090/fhir"\ntimeout_s = 5\n'
                    'bearer_token_env = "EHR_TOKEN"\n')
    ehr = load_config(path, environ={}).ehr
    assert (ehr.fhir_base_url, ehr.timeout_s, ehr.bearer_token_env) == (
        "http://127.0.0.1:8090/fhir", 5.0, "EHR_TOKEN")
    path.write_text('[ehr]\nbearer_token = "x"\n')
    with pytest.raises(ConfigError, match=r"unknown key 'ehr\.bearer_token'"):
        load_config(path, environ={})
