"""DICOM results to the ``[[dicomweb_destinations]]`` by STOW-RS (DICOM PS3.18 §10.5), sent by a
``deliver_stow`` job (``pacs_agent.deliveries``) for the same artifacts C-STORE export sends.

One try is one ``POST <url>/studies`` of the stored file as ``multipart/related;
type="application/dicom"``, recorded as one ``ExportAttempt`` row whose destination is
``dicomweb:<name>`` (so the study page and the API list it beside the C-STORE rows); the status
code is the HTTP status. The try succeeds only when the answer's Referenced SOP Sequence names
the file's SOP Instance UID: a 200 that does not is no proof the archive holds it. A Failed SOP
Sequence entry for it (a 409, or a 202 with warnings) fails the delivery at once with its
Failure Reason, as does any other 4xx but 408 / 429: the same bytes would be refused again. No
answer, a timeout, a refused connection, 408, 429 and 5xx are retried with the ``[export]``
back-off up to its ``max_attempts``.

Plain ``urllib``: dicomweb-client retries inside one call and raises before handing back the
Failed SOP Sequence, while a delivery job must make exactly one try per run and record it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from http.client import HTTPException
from typing import Any

import pydicom
from sqlalchemy.orm import Session, sessionmaker

from pacs_agent.attempts import DestinationStatus, RetryPolicy, Sent, send_once, standing
from pacs_agent.config import Config, DicomwebDestinationConfig
from pacs_agent.db.models import Artifact, utcnow
from pacs_agent.export import artifact_path
from pacs_agent.fhir_delivery import NoRedirects
from pacs_agent.jobs import Backoff

DESTINATION_PREFIX = "dicomweb:"
LOCAL_PROBLEM = "local"  # status code of a try that never reached the network
DICOM_JSON = "application/dicom+json"
MAX_RESPONSE_BYTES = 1_000_000
# DICOM JSON keys (PS3.18 F.2): the answer's sequences and their items' attributes
REFERENCED_SOP_SEQUENCE = "00081199"
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"


def destination_name(dest: DicomwebDestinationConfig) -> str:
    """What ``Job.destination`` and ``ExportAttempt.destination`` hold for ``dest``."""
    return f"{DESTINATION_PREFIX}{dest.name}"


def configured(config: Config, destination: str) -> DicomwebDestinationConfig | None:
    """The ``[[dicomweb_destinations]]`` entry behind a ``dicomweb:<name>`` destination."""
    return next(
        (d for d in config.dicomweb_destinations if destination_name(d) == destination), None
    )


def retryable(status_code: str) -> bool:
    """No answer at all, 408 Request Timeout, 429 Too Many Requests, or a 5xx."""
    return status_code in ("", "408", "429") or (
        len(status_code) == 3 and status_code.startswith("5")
    )


def _permanent(status_code: str) -> bool:
    return not retryable(status_code)


def stow_policy(config: Config) -> RetryPolicy:
    """``[export]``'s tries and back-off (a DICOMweb archive is a PACS by another road)."""
    limits = config.export
    backoff = Backoff(limits.backoff_initial_s, limits.backoff_max_s)
    return RetryPolicy(limits.max_attempts, backoff, _permanent)


def stow_status(
    session: Session, artifact_id: int, destination: str, max_attempts: int
) -> DestinationStatus:
    """Like ``export.destination_status``, and "failed" after one refusal."""
    return standing(session, artifact_id, destination, max_attempts, _permanent)


def _bearer_token(dest: DicomwebDestinationConfig) -> str:
    if not dest.bearer_token_env:
        return ""
    token = os.environ.get(dest.bearer_token_env, "").strip()
    if not token:
        raise ValueError(f"the token variable {dest.bearer_token_env} is empty or unset")
    return token


def _uids(items: Any) -> dict[str, dict[str, Any]]:
    """SOP Instance UID -> item, for the items of a DICOM JSON sequence."""
    found: dict[str, dict[str, Any]] = {}
    for item in items or []:
        values = (item.get(REFERENCED_SOP_INSTANCE_UID) or {}).get("Value") or []
        if values:
            found[str(values[0])] = item
    return found


def judge_answer(status: int, payload: bytes, sop_instance_uid: str) -> Sent:
    """The verdict on a STOW-RS answer for the one instance sent."""
    try:
        body = json.loads(payload) if payload.strip() else {}
    except ValueError:
        body = {}
    if isinstance(body, list):  # some servers answer a one-element array
        body = body[0] if body and isinstance(body[0], dict) else {}
    if not isinstance(body, dict):
        body = {}
    failed = _uids((body.get(FAILED_SOP_SEQUENCE) or {}).get("Value"))
    stored = _uids((body.get(REFERENCED_SOP_SEQUENCE) or {}).get("Value"))
    code = str(status)
    if sop_instance_uid in failed:
        reasons = (failed[sop_instance_uid].get(FAILURE_REASON) or {}).get("Value") or ["?"]
        return Sent(False, code, f"HTTP {status}: refused, Failure Reason {reasons[0]}")
    if 200 <= status < 300 and sop_instance_uid in stored:
        return Sent(True, code, "")
    if 200 <= status < 300:
        return Sent(False, code, f"HTTP {status}, but the answer does not name the instance")
    return Sent(False, code, f"HTTP {status} from the DICOMweb service")


def post_instance(
    url: str, data: bytes, sop_instance_uid: str, *, timeout_s: float, bearer_token: str = ""
) -> Sent:
    """One STOW-RS POST of one DICOM file to ``<url>/studies``; never raises for network
    trouble, the outcome says what happened."""
    boundary = f"echo-agent-{uuid.uuid4().hex}"
    body = b"".join(
        (
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(),
            data,
            f"\r\n--{boundary}--\r\n".encode(),
        )
    )
    headers = {
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": DICOM_JSON,
    }
    if bearer_token:
        headers["Authorization"] = f"Bearer {bearer_token}"
    target = url.rstrip("/") + "/studies"
    request = urllib.request.Request(target, data=body, headers=headers, method="POST")
    opener = urllib.request.build_opener(NoRedirects())
    try:
        with opener.open(request, timeout=timeout_s) as response:
            return judge_answer(
                int(response.status), response.read(MAX_RESPONSE_BYTES), sop_instance_uid
            )
    except urllib.error.HTTPError as exc:
        if 300 <= exc.code < 400:
            where = exc.headers.get("Location", "?")
            return Sent(False, str(exc.code), f"redirected to {where}; configure the final URL")
        payload = exc.read(MAX_RESPONSE_BYTES) if exc.fp else b""
        return judge_answer(exc.code, payload, sop_instance_uid)
    except urllib.error.URLError as exc:
        return Sent(False, "", f"cannot reach {target}: {exc.reason}")
    except (OSError, HTTPException) as exc:  # timeouts and resets while reading the answer
        return Sent(False, "", f"no answer from {target}: {type(exc).__name__}: {exc}")


def stow_once(
    session_factory: sessionmaker[Session],
    artifact_id: int,
    dest: DicomwebDestinationConfig,
    config: Config,
    clock: Callable[[], dt.datetime] = utcnow,
) -> DestinationStatus:
    """One STOW-RS try of the artifact to ``dest`` (none when it is already stored there or
    failed for good); ``dest.timeout_s`` bounds the connection and the wait for the answer."""
    with session_factory() as session:
        artifact = session.get(Artifact, artifact_id)
        if artifact is None:
            raise ValueError(f"artifact {artifact_id} does not exist")
        path = artifact_path(config, artifact)
    token = _bearer_token(dest)

    def send() -> Sent:
        try:
            data = path.read_bytes()
            uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        except (OSError, AttributeError, pydicom.errors.InvalidDicomError) as exc:
            return Sent(False, LOCAL_PROBLEM, f"cannot send: {type(exc).__name__}: {exc}")
        return post_instance(dest.url, data, uid, timeout_s=dest.timeout_s, bearer_token=token)

    return send_once(
        session_factory, artifact_id, destination_name(dest), send, stow_policy(config), clock
    )
