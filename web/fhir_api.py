"""Read-only FHIR R4 endpoints: the node's DiagnosticReports and Observations, as the EHR
receives them, for systems that pull instead of being pushed to.

``GET /fhir/DiagnosticReport/<id>`` and ``GET /fhir/Observation/<id>`` read one resource;
``GET /fhir/<Type>?patient=&study=&subject:identifier=&identifier=`` search (parameters are
ANDed) and answer a ``searchset`` Bundle. Resources come from each study's current bundle
(final or amended supersedes preliminary; see ``pacs_agent.fhir_delivery.current_bundles``),
with ids that are a pure function of their business identifier (the uuid of the bundle's
``urn:uuid:`` full URL), so an id stays the same from preliminary to final. References between
them are rewritten from ``urn:uuid:`` to ``Type/id``.

Same login as the JSON API; every failure is an OperationOutcome (401 without a session, 404
for an unknown id, 400 for a search parameter this server does not support). Each study whose
resources are returned is audited as a view.
"""

from __future__ import annotations

import copy
import json
import threading
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, current_app, g, request
from sqlalchemy import select
from sqlalchemy.orm import Session

from pacs_agent.config import Config
from pacs_agent.db.models import Artifact, Patient, Study
from pacs_agent.export import artifact_path
from pacs_agent.fhir_delivery import FHIR_JSON, current_bundles
from pacs_agent.jobs import utc
from reporting.fhir import full_url
from web import audit, auth
from web.db import db

bp = Blueprint("fhir", __name__, url_prefix="/fhir")

RESOURCE_TYPES = ("DiagnosticReport", "Observation")
SEARCH_PARAMS = ("patient", "subject:identifier", "identifier", "study")
INDEX_KEY = "echo_agent_fhir_index"
_UUID_PREFIX = "urn:uuid:"


@dataclass(frozen=True)
class Served:
    """One resource as this server gives it out, with the study it belongs to."""

    study_id: int
    resource_type: str
    resource_id: str
    resource: dict[str, Any]


class IdIndex:
    """Which (type, id) pairs each stored bundle holds, so a read by id parses only the bundle
    that has it. Keyed by artifact id and content hash: a bundle file never changes, and a
    replaced artifact (re-analysis) has another hash even if the database reuses its id."""

    def __init__(self) -> None:
        self._ids: dict[tuple[int, str], frozenset[tuple[str, str]]] = {}
        self._lock = threading.Lock()

    def ids(self, config: Config, artifact: Artifact) -> frozenset[tuple[str, str]]:
        key = (artifact.id, artifact.sha256)
        with self._lock:
            known = self._ids.get(key)
        if known is None:
            known = frozenset(
                (s.resource_type, s.resource_id) for s in bundle_resources(config, artifact)
            )
            with self._lock:
                self._ids[key] = known
        return known


def _resource_id(entry: dict[str, Any]) -> str:
    """The stable id: the uuid of the entry's ``urn:uuid:`` full URL, which the bundle
    derives from the resource's business identifier."""
    url = str(entry.get("fullUrl") or "")
    if url.startswith(_UUID_PREFIX):
        return url[len(_UUID_PREFIX):]
    identifiers = (entry.get("resource") or {}).get("identifier") or [{}]
    return full_url(identifiers[0])[len(_UUID_PREFIX):]


def bundle_resources(config: Config, artifact: Artifact) -> list[Served]:
    """The resources of a stored transaction Bundle, as served: id, meta.lastUpdated, and
    references to the other entries as ``Type/id``. An unreadable file yields none and a
    warning in the log, never a failed request."""
    try:
        bundle = json.loads(artifact_path(config, artifact).read_text(encoding="utf-8"))
        entries = [e for e in bundle.get("entry") or [] if isinstance(e, dict)]
    except (OSError, ValueError, AttributeError):
        current_app.logger.warning("FHIR bundle artifact %d cannot be read", artifact.id)
        return []
    local = {
        str(e.get("fullUrl")): f"{e['resource']['resourceType']}/{_resource_id(e)}"
        for e in entries
        if e.get("fullUrl") and isinstance(e.get("resource"), dict)
    }
    updated = utc(artifact.created_at).isoformat()
    served = []
    for entry in entries:
        resource = _with_references(copy.deepcopy(entry.get("resource") or {}), local)
        kind = str(resource.get("resourceType", ""))
        if kind not in RESOURCE_TYPES:
            continue
        rid = _resource_id(entry)
        resource = {"resourceType": kind, "id": rid, "meta": {"lastUpdated": updated},
                    **{k: v for k, v in resource.items() if k not in ("resourceType", "id")}}
        served.append(Served(artifact.study_fk, kind, rid, resource))
    return served


def _with_references(node: Any, local: dict[str, str]) -> Any:
    if isinstance(node, dict):
        out = {k: _with_references(v, local) for k, v in node.items()}
        if isinstance(out.get("reference"), str) and out["reference"] in local:
            out["reference"] = local[out["reference"]]
        return out
    if isinstance(node, list):
        return [_with_references(v, local) for v in node]
    return node


# --- answers ------------------------------------------------------------------------------


def fhir_response(body: dict[str, Any], status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, mimetype=FHIR_JSON)


def outcome(status: int, code: str, diagnostics: str) -> Response:
    return fhir_response(
        {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}],
        },
        status,
    )


def require_login() -> Response | None:
    """Runs before ``auth.guard`` (see ``web.app``): under /fhir, a request the guard would
    refuse gets an OperationOutcome (a FHIR client cannot follow a login redirect)."""
    if not request.path.startswith("/fhir/") and request.path != "/fhir":
        return None
    if auth.guard() is None:
        return None
    if g.get("user") is None:
        return outcome(401, "login", "authentication required: log in at /login")
    return outcome(403, "forbidden", "request refused")


def _config() -> Config:
    return current_app.config["ECHO_AGENT_CONFIG"]


def _index() -> IdIndex:
    return current_app.extensions[INDEX_KEY]


@bp.record_once
def _set_up(state: Any) -> None:
    state.app.extensions[INDEX_KEY] = IdIndex()


# --- read -----------------------------------------------------------------------------------


@bp.get("/<resource_type>/<resource_id>")
def read(resource_type: str, resource_id: str) -> Response:
    if resource_type not in RESOURCE_TYPES:
        return _unknown_type(resource_type)
    config, session = _config(), db()
    for artifact in current_bundles(session).values():
        if (resource_type, resource_id) not in _index().ids(config, artifact):
            continue
        for served in bundle_resources(config, artifact):
            if (served.resource_type, served.resource_id) == (resource_type, resource_id):
                audit.record_view(served.study_id, via="fhir")
                return fhir_response(served.resource)
    return outcome(404, "not-found", f"{resource_type}/{resource_id} is not known")


# --- search ---------------------------------------------------------------------------------


def _token(text: str) -> tuple[str | None, str]:
    """FHIR token search: ``value`` (any system), ``system|value``, ``|value`` (no system)."""
    if "|" not in text:
        return None, text
    system, value = text.split("|", 1)
    return system, value


def _token_matches(identifier: dict[str, Any], token: tuple[str | None, str]) -> bool:
    system, value = token
    if identifier.get("value") != value:
        return False
    if system is None:
        return True
    return identifier.get("system", "") == system


def _study_uids(resource: dict[str, Any]) -> set[str]:
    links = resource.get("imagingStudy") or resource.get("derivedFrom") or []
    uids = set()
    for link in links:
        value = str(((link or {}).get("identifier") or {}).get("value", ""))
        uids.add(value.removeprefix("urn:oid:"))
    return uids


def _matches(resource: dict[str, Any], params: dict[str, str]) -> bool:
    subject = (resource.get("subject") or {}).get("identifier") or {}
    for name, value in params.items():
        if name == "patient" and subject.get("value") != value.removeprefix("Patient/"):
            return False
        if name == "subject:identifier" and not _token_matches(subject, _token(value)):
            return False
        if name == "identifier" and not any(
            _token_matches(i, _token(value)) for i in resource.get("identifier") or []
        ):
            return False
        if name == "study" and value.removeprefix("urn:oid:") not in _study_uids(resource):
            return False
    return True


def _candidate_studies(session: Session, params: dict[str, str]) -> list[int] | None:
    """Narrows the studies in the database before any file is read; None: every study."""
    query = select(Study.id).join(Patient, Patient.id == Study.patient_fk)
    narrowed = False
    if "patient" in params:
        query = query.where(Patient.patient_id == params["patient"].removeprefix("Patient/"))
        narrowed = True
    if "subject:identifier" in params:
        query = query.where(Patient.patient_id == _token(params["subject:identifier"])[1])
        narrowed = True
    if "study" in params:
        query = query.where(
            Study.study_instance_uid == params["study"].removeprefix("urn:oid:")
        )
        narrowed = True
    return list(session.scalars(query)) if narrowed else None


@bp.get("/<resource_type>")
def search(resource_type: str) -> Response:
    if resource_type not in RESOURCE_TYPES:
        return _unknown_type(resource_type)
    params: dict[str, str] = {}
    for name in request.args:
        values = request.args.getlist(name)
        if name not in SEARCH_PARAMS:
            return outcome(400, "not-supported",
                           f"search parameter {name!r} is not supported here "
                           f"(supported: {', '.join(SEARCH_PARAMS)})")
        if len(values) != 1 or not values[0].strip():
            return outcome(400, "invalid", f"give {name} once, with a value")
        params[name] = values[0].strip()
    if not params:
        return outcome(400, "required",
                       f"a search needs at least one of: {', '.join(SEARCH_PARAMS)}")
    config, session = _config(), db()
    studies = _candidate_studies(session, params)
    found = [
        served
        for artifact in current_bundles(session, studies).values()
        for served in bundle_resources(config, artifact)
        if served.resource_type == resource_type and _matches(served.resource, params)
    ]
    for study_id in sorted({s.study_id for s in found}):
        audit.record_view(study_id, via="fhir")
    base = request.url_root.rstrip("/") + bp.url_prefix
    return fhir_response({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(found),
        "link": [{"relation": "self", "url": request.url}],
        "entry": [
            {
                "fullUrl": f"{base}/{s.resource_type}/{s.resource_id}",
                "resource": s.resource,
                "search": {"mode": "match"},
            }
            for s in found
        ],
    })


def _unknown_type(resource_type: str) -> Response:
    return outcome(404, "not-supported",
                   f"this server serves {' and '.join(RESOURCE_TYPES)}, not {resource_type!r}")


@bp.route("/", defaults={"rest": ""})
@bp.route("/<path:rest>")
def other(rest: str) -> Response:
    """Any other path under /fhir: an OperationOutcome rather than the HTML error page."""
    return outcome(404, "not-found", f"no FHIR interaction at /fhir/{rest}")
