"""The OpenAPI 3 description of the JSON API and the read-only FHIR endpoints, served at
``/api/openapi.json``.

Written by hand next to the routes it describes (a test checks every API route is in it), so
an integrator reads one document rather than the page scripts.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify

from pacs_agent import __version__

bp = Blueprint("openapi", __name__)

_ERROR = {"$ref": "#/components/schemas/Error"}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "Bad request", 401: "Not logged in", 403: "Wrong role or CSRF token",
            404: "Not found", 409: "Conflict (stale base_version, already signed)"}
    return {str(c): _json(_ERROR, text[c]) for c in codes}


def _id(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "integer"}}


_EDIT = {
    "type": "object",
    "required": ["base_version"],
    "properties": {
        "base_version": {"type": "integer", "description": "the version the edit started from"},
        "structured_text": {"type": "string"},
        "narrative_text": {"type": "string"},
        "amendment_reason": {"type": "string", "description": "required after sign-off"},
    },
}


def document() -> dict[str, Any]:
    obj = {"type": "object", "additionalProperties": True}
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "echo-agent review API",
            "version": __version__,
            "description": (
                "Session-cookie authentication (log in at /login). Every state-changing request "
                "carries the session's CSRF token in the X-CSRF-Token header. Values are the "
                "stored measurements; strings are plain text (escape them when displaying)."
            ),
        },
        "components": {
            "securitySchemes": {
                "session": {"type": "apiKey", "in": "cookie", "name": "echo_agent_session"},
                "csrf": {"type": "apiKey", "in": "header", "name": "X-CSRF-Token"},
            },
            "schemas": {
                "Error": {"type": "object", "properties": {"error": {"type": "string"}}},
                "ReportEdit": _EDIT,
                "StudySummary": obj,
                "StudyDetail": obj,
                "ReportVersion": obj,
                "FhirResource": {"type": "object", "additionalProperties": True,
                                 "description": "FHIR R4 JSON (http://hl7.org/fhir/R4/)",
                                 "required": ["resourceType"],
                                 "properties": {"resourceType": {"type": "string"}}},
            },
        },
        "security": [{"session": []}],
        "paths": {
            "/api/studies": {"get": {
                "summary": "Worklist",
                "parameters": [
                    {"name": "q", "in": "query", "schema": {"type": "string"},
                     "description": "search in patient name, patient ID, accession"},
                    {"name": "status", "in": "query", "schema": {"type": "string", "enum": [
                        "received", "analysing", "drafted", "signed", "failed",
                        "not_eligible"]}},
                    {"name": "sort", "in": "query", "schema": {"type": "string", "enum": [
                        "date", "name", "patient_id", "accession", "status", "ef",
                        "received"]}},
                    {"name": "order", "in": "query",
                     "schema": {"type": "string", "enum": ["asc", "desc"]}},
                ],
                "responses": {"200": _json({"type": "object", "properties": {
                    "studies": {"type": "array",
                                "items": {"$ref": "#/components/schemas/StudySummary"}},
                    "count": {"type": "integer"}}}), **_errors(400, 401)},
            }},
            "/api/studies/{study_id}": {"get": {
                "summary": "Study detail: loop, measurements, report, export (audited view)",
                "parameters": [_id("study_id")],
                "responses": {"200": _json({"$ref": "#/components/schemas/StudyDetail"}),
                              **_errors(401, 404)},
            }},
            "/api/studies/{study_id}/export": {"get": {
                "summary": "Export and FHIR status of the study's artifacts",
                "parameters": [_id("study_id")],
                "responses": {"200": _json(obj), **_errors(401, 404)},
            }},
            "/api/studies/{study_id}/report": {"post": {
                "summary": "Edit the report: a new draft version, or an amendment once signed "
                           "(cardiologist)",
                "security": [{"session": [], "csrf": []}],
                "parameters": [_id("study_id")],
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/ReportEdit"}}}},
                "responses": {"201": _json(obj, "Created"), **_errors(400, 401, 403, 404, 409)},
            }},
            "/api/studies/{study_id}/report/sign": {"post": {
                "summary": "Sign the report (cardiologist): signed SR, final FHIR, export",
                "security": [{"session": [], "csrf": []}],
                "parameters": [_id("study_id")],
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/ReportEdit"}}}},
                "responses": {"201": _json(obj, "Signed"), **_errors(400, 401, 403, 404, 409)},
            }},
            "/api/studies/{study_id}/report/versions": {"get": {
                "summary": "Every report version",
                "parameters": [_id("study_id")],
                "responses": {"200": _json(obj), **_errors(401, 404)},
            }},
            "/api/studies/{study_id}/report/versions/{number}": {"get": {
                "summary": "One report version",
                "parameters": [_id("study_id"), _id("number")],
                "responses": {"200": _json({"$ref": "#/components/schemas/ReportVersion"}),
                              **_errors(401, 404)},
            }},
            "/api/studies/{study_id}/chat": {
                "get": {
                    "summary": "This user's chat history for the study",
                    "parameters": [_id("study_id")],
                    "responses": {"200": _json(obj), **_errors(401, 404)},
                },
                "post": {
                    "summary": "Ask a question; the answer streams as Server-Sent Events "
                               "(start, chunk {text}, replace {text}: the grounding guard "
                               "replaced the answer, error, done {answer_id, complete, "
                               "verdict, reasons})",
                    "security": [{"session": [], "csrf": []}],
                    "parameters": [_id("study_id")],
                    "requestBody": {"required": True, "content": {"application/json": {
                        "schema": {"type": "object", "required": ["question"],
                                   "properties": {"question": {"type": "string"}}}}}},
                    "responses": {
                        "200": {"description": "event stream",
                                "content": {"text/event-stream": {"schema": {
                                    "type": "string"}}}},
                        **_errors(400, 401, 403, 404),
                    },
                },
            },
            "/api/analyses/{analysis_id}/frames/{index}.jpg": {"get": {
                "summary": "One source frame of the analysed loop (0-based index)",
                "parameters": [_id("analysis_id"), _id("index")],
                "responses": {"200": {"description": "JPEG",
                                      "content": {"image/jpeg": {}}}, **_errors(401, 404)},
            }},
            "/api/analyses/{analysis_id}/contours": {"get": {
                "summary": "LV outline per frame from the DICOM SEG ([x0,y0,x1,y1,...] pixels)",
                "parameters": [_id("analysis_id")],
                "responses": {"200": _json(obj), **_errors(401, 404)},
            }},
            "/api/audit": {"get": {
                "summary": "Audit events, newest first (admin)",
                "parameters": [
                    {"name": "before", "in": "query", "schema": {"type": "integer"}},
                    {"name": "action", "in": "query", "schema": {"type": "string"}},
                ],
                "responses": {"200": _json(obj), **_errors(401, 403)},
            }},
            "/api/quarantine": {"get": {
                "summary": "Instances refused because their patient differs from their study's "
                           "(admin): reason, time, UIDs, sending AE; newest first",
                "parameters": [{"name": "before", "in": "query", "schema": {"type": "integer"}}],
                "responses": {"200": _json(obj), **_errors(401, 403)},
            }},
            "/api/openapi.json": {"get": {
                "summary": "This document", "responses": {"200": _json(obj)}}},
            "/api/status/models": {"get": {
                "summary": "Model loading state for the banner: state (loading, ready, failed, "
                           "none), message, and each model's state and load time",
                "responses": {"200": _json(obj), **_errors(401)},
            }},
            **_fhir_paths(),
        },
    }


def _fhir(description: str, *codes: int) -> dict[str, Any]:
    """Answers of the read-only FHIR endpoints: FHIR JSON, errors as OperationOutcome."""
    text = {400: "Unsupported or missing search parameter", 401: "Not logged in",
            404: "Unknown id or resource type"}
    outcome = {"$ref": "#/components/schemas/FhirResource"}
    answers = {"200": {"description": description,
                       "content": {"application/fhir+json": {"schema": outcome}}}}
    for code in codes:
        answers[str(code)] = {"description": f"{text[code]} (OperationOutcome)",
                              "content": {"application/fhir+json": {"schema": outcome}}}
    return answers


def _fhir_paths() -> dict[str, Any]:
    """``web.fhir_api``: DiagnosticReport and Observation, read and search (FHIR R4)."""
    token = {"type": "string"}
    search = [
        {"name": "patient", "in": "query", "schema": token,
         "description": "the patient's ID (DICOM Patient ID / MRN; Patient/<id> accepted)"},
        {"name": "subject:identifier", "in": "query", "schema": token,
         "description": "the subject's identifier as a FHIR token: value, system|value"},
        {"name": "identifier", "in": "query", "schema": token,
         "description": "the resource's business identifier: value or system|value"},
        {"name": "study", "in": "query", "schema": token,
         "description": "the Study Instance UID (urn:oid: prefix optional)"},
    ]
    paths: dict[str, Any] = {}
    for kind in ("DiagnosticReport", "Observation"):
        paths[f"/fhir/{kind}/{{id}}"] = {"get": {
            "summary": f"Read one {kind} (the current version: final or amended supersedes "
                       "preliminary; audited view)",
            "parameters": [{"name": "id", "in": "path", "required": True,
                            "schema": {"type": "string"}}],
            "responses": _fhir(kind, 401, 404),
        }}
        paths[f"/fhir/{kind}"] = {"get": {
            "summary": f"Search {kind} resources (parameters are ANDed, at least one; "
                       "audited view); a searchset Bundle",
            "parameters": search,
            "responses": _fhir("searchset Bundle", 400, 401),
        }}
    return paths


@bp.get("/api/openapi.json")
def openapi() -> object:
    return jsonify(document())
