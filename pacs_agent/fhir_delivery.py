"""Delivery to the EHR: POST a stored transaction Bundle to the configured FHIR base URL.

The Bundle's entries are conditional updates on the report's stable identifiers (see
``reporting.fhir``), so sending it again is always safe: a retry after a timeout or a lost
response, or a later final/amended version, updates the same resources on the receiver instead
of adding a second report. That is what makes blind retries correct here.

Every try is one ``ExportAttempt`` row whose destination is ``fhir:<base url>`` (pending while
it runs, then sent or failed), like the C-STORE export. Server errors (5xx), 429, timeouts and
connection failures are retried with exponential back-off up to ``ehr.max_attempts``; any other
answer (a 4xx, a redirect, a 200 that is not a successful transaction-response) fails at once,
with the receiver's OperationOutcome diagnostics recorded, because resending the same Bundle
cannot change the answer.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Collection
from dataclasses import dataclass
from email.message import Message
from http.client import HTTPException
from typing import IO

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from pacs_agent.attempts import (
    DestinationStatus,
    Outcome,
    RetryPolicy,
    Wait,
    attempt_rows,
    send_once,
    send_with_retries,
    sleep_wait,
    standing,
)
from pacs_agent.config import Config, EhrConfig
from pacs_agent.db.models import Artifact, utcnow
from pacs_agent.export import artifact_path
from pacs_agent.jobs import Backoff, utc

log = logging.getLogger("echo_agent.fhir_delivery")

FHIR_JSON = "application/fhir+json"
DESTINATION_PREFIX = "fhir:"
# a transaction-response for one report is a few kB; a runaway answer is cut here
MAX_RESPONSE_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class PostOutcome:
    """One POST: ``status_code`` is the HTTP status as text ("" when no answer came)."""

    ok: bool
    status_code: str
    error: str


@dataclass(frozen=True)
class FhirDelivery:
    """Where a study's FHIR stands: its current bundle and that bundle's delivery.

    state: "not_configured" (no EHR), "no_bundle", "not_sent", "sending" (a try is running),
    "retrying" (a try failed, another is due), "delivered", or "failed" (out of attempts, or
    an answer that a retry cannot change). ``label`` says it in words for the page.
    """

    state: str
    label: str
    report_status: str | None
    artifact_id: int | None
    destination: str
    attempts: int
    last_error: str
    last_status_code: str
    delivered_at: dt.datetime | None


def destination_name(ehr: EhrConfig) -> str:
    return f"{DESTINATION_PREFIX}{ehr.fhir_base_url}"


def retryable(status_code: str) -> bool:
    """Whether a failed try with this stored status may succeed when repeated: no answer at
    all (timeout, refused, connection lost), 429 Too Many Requests, or a 5xx."""
    return status_code in ("", "429") or (len(status_code) == 3 and status_code.startswith("5"))


class NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is reported, never followed: urllib would turn the POST into a bodiless
    GET, and an EHR that moved should be reconfigured, not guessed at."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: Message,
        newurl: str,
    ) -> None:
        return None


def post_transaction(
    base_url: str, body: bytes, n_entries: int, *, timeout_s: float, bearer_token: str = ""
) -> PostOutcome:
    """POSTs a transaction Bundle to ``base_url``; never raises for network trouble, the
    outcome says what happened."""
    headers = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON}
    if bearer_token:
        headers["Authorization"] = f"Bearer {bearer_token}"
    request = urllib.request.Request(base_url, data=body, headers=headers, method="POST")
    opener = urllib.request.build_opener(NoRedirects())
    try:
        with opener.open(request, timeout=timeout_s) as response:
            status = int(response.status)
            payload = response.read(MAX_RESPONSE_BYTES)
    except urllib.error.HTTPError as exc:
        detail = _outcome_text(exc.read(MAX_RESPONSE_BYTES) if exc.fp else b"")
        if 300 <= exc.code < 400:
            detail = f"redirected to {exc.headers.get('Location', '?')}; configure the final URL"
        return PostOutcome(False, str(exc.code), f"HTTP {exc.code} from the EHR: {detail}")
    except urllib.error.URLError as exc:
        return PostOutcome(False, "", f"cannot reach {base_url}: {_reason(exc.reason)}")
    except (OSError, HTTPException) as exc:  # timeouts and resets while reading the answer
        return PostOutcome(False, "", f"no answer from {base_url}: {_reason(exc)}")
    if status != 200:
        return PostOutcome(False, str(status), f"HTTP {status} from the EHR (expected 200)")
    problem = transaction_response_problem(payload, n_entries)
    if problem:
        return PostOutcome(False, str(status), f"HTTP 200 from the EHR, but {problem}")
    return PostOutcome(True, str(status), "")


def transaction_response_problem(payload: bytes, n_entries: int) -> str:
    """"" when ``payload`` is a transaction-response Bundle with one 2xx entry per request
    entry; otherwise what is wrong with it."""
    try:
        bundle = json.loads(payload)
    except ValueError:
        return "the answer is not JSON"
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        return "the answer is not a Bundle"
    if bundle.get("type") != "transaction-response":
        return f"the answer is a {bundle.get('type')!r} Bundle, not a transaction-response"
    entries = bundle.get("entry") or []
    if len(entries) != n_entries:
        return f"the answer has {len(entries)} entries for {n_entries} sent"
    for index, entry in enumerate(entries):
        status = str(((entry or {}).get("response") or {}).get("status", ""))
        if status[:1] != "2":
            return f"entry {index} has status {status or 'none'!r}"
    return ""


def _reason(exc: object) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _outcome_text(payload: bytes) -> str:
    """The OperationOutcome's diagnostics (or details), else the start of the answer."""
    try:
        outcome = json.loads(payload)
    except ValueError:
        outcome = None
    if isinstance(outcome, dict) and outcome.get("resourceType") == "OperationOutcome":
        parts = []
        for issue in outcome.get("issue") or []:
            text = issue.get("diagnostics") or (issue.get("details") or {}).get("text")
            if text:
                parts.append(f"{issue.get('severity', 'error')}: {text}")
        if parts:
            return "; ".join(parts)
    text = payload.decode("utf-8", "replace").strip()
    return text[:300] or "no details"


def delivery_status(
    session: Session, artifact_id: int, destination: str, max_attempts: int
) -> DestinationStatus:
    """Like ``export.destination_status``, and also "failed" after one try whose answer a
    retry cannot change."""
    return standing(session, artifact_id, destination, max_attempts, _permanent)


def _permanent(status_code: str) -> bool:
    return not retryable(status_code)


def _bundle_body(config: Config, artifact: Artifact) -> tuple[bytes, int]:
    """The stored Bundle's bytes and its number of entries; ValueError if it is not a
    transaction Bundle."""
    body = artifact_path(config, artifact).read_bytes()
    bundle = json.loads(body)
    if bundle.get("resourceType") != "Bundle" or bundle.get("type") != "transaction":
        raise ValueError("the stored file is not a transaction Bundle")
    return body, len(bundle.get("entry") or [])


def _bearer_token(ehr: EhrConfig) -> str:
    if not ehr.bearer_token_env:
        return ""
    token = os.environ.get(ehr.bearer_token_env, "").strip()
    if not token:
        raise ValueError(f"the EHR token variable {ehr.bearer_token_env} is empty or unset")
    return token


def delivery_policy(config: Config) -> RetryPolicy:
    """``[ehr]``: tries per bundle, the back-off between, and which answers end it at once."""
    ehr = config.ehr
    backoff = Backoff(ehr.backoff_initial_s, ehr.backoff_max_s)
    return RetryPolicy(ehr.max_attempts, backoff, _permanent)


def deliver_artifact(
    session_factory: sessionmaker[Session],
    artifact_id: int,
    config: Config,
    wait: Wait = sleep_wait,
    clock: Callable[[], dt.datetime] = utcnow,
) -> DestinationStatus:
    """Sends the FHIR artifact to the EHR, retrying with back-off; blocks until delivered,
    failed, or ``wait`` says stop. Safe to call again: resumes, never resends a delivered one."""
    destination, send = _sender(session_factory, artifact_id, config)
    policy = delivery_policy(config)
    return send_with_retries(session_factory, artifact_id, destination, send, policy, wait, clock)


def deliver_once(
    session_factory: sessionmaker[Session],
    artifact_id: int,
    config: Config,
    clock: Callable[[], dt.datetime] = utcnow,
) -> DestinationStatus:
    """One POST of the bundle (none when it is already delivered or failed for good), for a
    delivery job; ``ehr.timeout_s`` bounds it against an EHR that never answers."""
    destination, send = _sender(session_factory, artifact_id, config)
    policy = delivery_policy(config)
    return send_once(session_factory, artifact_id, destination, send, policy, clock)


def _sender(
    session_factory: sessionmaker[Session], artifact_id: int, config: Config
) -> tuple[str, Callable[[], Outcome]]:
    """The EHR's destination name and one try's POST of the stored bundle; ValueError when
    no EHR is configured or the artifact is no FHIR bundle."""
    ehr = config.ehr
    if not ehr.fhir_base_url:
        raise ValueError("no EHR is configured (ehr.fhir_base_url is empty)")
    destination = destination_name(ehr)
    with session_factory.begin() as session:
        artifact = session.get(Artifact, artifact_id)
        if artifact is None:
            raise ValueError(f"artifact {artifact_id} does not exist")
        if artifact.kind != "fhir":
            raise ValueError(f"artifact {artifact_id} is a {artifact.kind}, not a FHIR bundle")
        try:
            body, n_entries = _bundle_body(config, artifact)
            token = _bearer_token(ehr)
            local_problem = ""
        except (OSError, ValueError) as exc:
            body, n_entries, token = b"", 0, ""
            local_problem = f"cannot send: {exc}"

    def send() -> PostOutcome:
        if local_problem:  # recorded as a try that no retry can fix ("local" status)
            return PostOutcome(False, "local", local_problem)
        return post_transaction(
            ehr.fhir_base_url, body, n_entries, timeout_s=ehr.timeout_s, bearer_token=token
        )

    return destination, send


def current_bundles(
    session: Session, study_ids: Collection[int] | None = None
) -> dict[int, Artifact]:
    """Study id -> its current FHIR bundle: the newest signed one (final/amended, written by
    sign-off without a job) supersedes any preliminary one, even one that a later
    re-analysis wrote; without a signed one, the newest preliminary."""
    query = select(Artifact).where(Artifact.kind == "fhir").order_by(Artifact.id)
    if study_ids is not None:
        query = query.where(Artifact.study_fk.in_(list(study_ids)))
    chosen: dict[int, Artifact] = {}
    for artifact in session.scalars(query):
        known = chosen.get(artifact.study_fk)
        if known is None or artifact.job_fk is None or known.job_fk is not None:
            chosen[artifact.study_fk] = artifact
    return chosen


def current_bundle(session: Session, study_id: int) -> Artifact | None:
    return current_bundles(session, [study_id]).get(study_id)


def is_current(session: Session, artifact_id: int) -> bool:
    """Whether the bundle is its study's current one: only that one may go to the EHR (a
    re-analysis after sign-off must never put a preliminary report over the final one)."""
    artifact = session.get(Artifact, artifact_id)
    current = current_bundle(session, artifact.study_fk) if artifact else None
    return current is not None and current.id == artifact_id


def deliver_if_current(
    session_factory: sessionmaker[Session], artifact_id: int | None, config: Config
) -> DestinationStatus | None:
    """A blocking delivery of a preliminary bundle: only with an EHR configured, and only
    while it is the study's current bundle (``is_current``). None when nothing was sent."""
    if artifact_id is None or not config.ehr.fhir_base_url:
        return None
    with session_factory() as session:
        current = is_current(session, artifact_id)
    if not current:
        log.info("FHIR bundle %s is not its study's current one: not sent", artifact_id)
        return None
    return deliver_artifact(session_factory, artifact_id, config)


def report_status_of(config: Config, artifact: Artifact) -> str | None:
    """The DiagnosticReport status inside a stored bundle (what the EHR receives)."""
    try:
        bundle = json.loads(artifact_path(config, artifact).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for entry in bundle.get("entry", []):
        resource = entry.get("resource") or {}
        if resource.get("resourceType") == "DiagnosticReport":
            return resource.get("status")
    return None


def study_delivery(session: Session, study_id: int, config: Config) -> FhirDelivery:
    """Where the study's current bundle stands with the EHR, for the page and the API."""
    ehr = config.ehr
    artifact = current_bundle(session, study_id)
    report_status = report_status_of(config, artifact) if artifact else None
    destination = destination_name(ehr) if ehr.fhir_base_url else ""
    if artifact is None:
        state = "not_configured" if not ehr.fhir_base_url else "no_bundle"
        label = "not configured" if not ehr.fhir_base_url else "no report bundle yet"
        return FhirDelivery(state, label, None, None, destination, 0, "", "", None)
    prefix = f"{report_status or 'unknown'} - "
    if not ehr.fhir_base_url:
        return FhirDelivery("not_configured", prefix + "EHR not configured", report_status,
                            artifact.id, "", 0, "", "", None)
    # the state first, then the rows: a send writes its rows meanwhile (right after a sign-off),
    # so the rows read second are never fewer than the state counted
    status = delivery_status(session, artifact.id, destination, ehr.max_attempts)
    rows = attempt_rows(session, artifact.id, destination)
    delivered_at = next(
        (utc(r.finished_at) for r in rows if r.state == "sent" and r.finished_at), None
    )
    if status.state == "sent" and delivered_at is not None:
        state, text = "delivered", f"delivered to EHR {delivered_at:%Y-%m-%d %H:%M:%S} UTC"
    elif status.state == "sent":
        state, text = "delivered", "delivered to EHR"
    elif status.state == "failed":
        state, text = "failed", f"failed: {status.last_error}"
    elif status.state == "not_sent":
        state, text = "not_sent", "not sent yet"
    elif not rows or rows[-1].state == "pending":
        state, text = "sending", f"sending (attempt {max(len(rows), status.attempts)})"
    else:
        state = "retrying"
        text = f"retrying (attempt {len(rows)} of {ehr.max_attempts} failed: {status.last_error})"
    return FhirDelivery(state, prefix + text, report_status, artifact.id, destination,
                        status.attempts, status.last_error, status.last_status_code,
                        delivered_at)
