"""A small FHIR R4 server for the tests: the EHR the node delivers to.

No FHIR server can be installed here (HAPI needs Maven Central; PyPI, npm and Debian carry
none), so this one implements the part of the FHIR REST API that delivery relies on, as the
specification words it (http://hl7.org/fhir/R4/http.html):

- ``POST [base]`` with a ``transaction`` Bundle (``application/fhir+json``), parsed with
  fhir.resources (R4B models), processed atomically: every entry succeeds or nothing changes.
- ``PUT Type?identifier=system|value``: a conditional update. No match creates the resource
  (201, a server-assigned id), one match updates it (200, the next version), more than one
  fails the transaction (412 Precondition Failed).
- ``urn:uuid:`` full URLs are replaced by the assigned ``Type/id`` in every reference.
- The answer is a ``transaction-response`` Bundle (status, location, etag per entry); errors
  are OperationOutcomes.
- ``GET [base]/Type/id`` and ``GET [base]/Type?identifier=...`` read what it holds.

It can be told to fail the next requests: ``"500"`` answers 500 without applying anything;
``"drop"`` applies the transaction and closes the connection without answering (the response
is lost, the change is not). With ``known_patients``, a resource whose subject is another
patient is refused with 400 and an OperationOutcome, as an EHR refuses a report it cannot file.
"""

from __future__ import annotations

import copy
import itertools
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fhir.resources.R4B.bundle import Bundle
from pydantic import ValidationError

FHIR_JSON = "application/fhir+json"


class TransactionError(Exception):
    """Fails the whole transaction with this HTTP status and diagnostics."""

    def __init__(self, status: int, diagnostics: str, code: str = "processing") -> None:
        super().__init__(diagnostics)
        self.status = status
        self.diagnostics = diagnostics
        self.code = code


@dataclass
class Received:
    """One request as it arrived: method, path, headers and the raw body."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Store:
    """Resources by type and id; each stored dict carries its ``meta.versionId``."""

    resources: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))


def operation_outcome(diagnostics: str, code: str = "processing") -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}],
    }


class FhirReceiver:
    """The server's state and behaviour; ``serve()`` runs it on loopback in a thread."""

    def __init__(self, known_patients: set[str] | None = None) -> None:
        self.store = Store()
        self.known_patients = known_patients
        self.requests: list[Received] = []
        self._failures: list[str] = []
        self._lock = threading.Lock()
        self.base_url = ""

    # --- what the tests use ---------------------------------------------------------------

    def fail_next(self, count: int, mode: str = "500") -> None:
        """The next ``count`` transaction requests fail: "500" or "drop" (see the module)."""
        if mode not in ("500", "drop"):
            raise ValueError(f"unknown failure mode {mode!r}")
        with self._lock:
            self._failures.extend([mode] * count)

    def all(self, resource_type: str) -> list[dict[str, Any]]:
        with self._lock:
            return [copy.deepcopy(r) for r in self.store.resources.get(resource_type, {}).values()]

    def transactions(self) -> list[Received]:
        return [r for r in self.requests if r.method == "POST"]

    # --- the FHIR interactions ----------------------------------------------------------------

    def _next_failure(self) -> str | None:
        with self._lock:
            return self._failures.pop(0) if self._failures else None

    def transaction(self, body: bytes) -> dict[str, Any]:
        """Processes a transaction Bundle atomically; raises TransactionError."""
        try:
            bundle = Bundle.model_validate_json(body)
        except (ValidationError, ValueError) as exc:
            raise TransactionError(400, f"not a valid FHIR Bundle: {exc}", "structure") from None
        if bundle.type != "transaction":
            raise TransactionError(400, f"expected a transaction Bundle, got {bundle.type}")
        raw = json.loads(body)
        with self._lock:
            staged = copy.deepcopy(self.store.resources)
            assigned: dict[str, str] = {}
            planned = []
            for index, entry in enumerate(raw.get("entry") or []):
                planned.append(self._plan(index, entry, staged, assigned))
            answers = []
            for resource_type, resource_id, version, created, resource in planned:
                resource = _rewrite_references(resource, assigned)
                resource["id"] = resource_id
                resource["meta"] = {"versionId": str(version)}
                staged.setdefault(resource_type, {})[resource_id] = resource
                answers.append({"response": {
                    "status": "201 Created" if created else "200 OK",
                    "location": f"{resource_type}/{resource_id}/_history/{version}",
                    "etag": f'W/"{version}"',
                }})
            self.store.resources = staged
        return {"resourceType": "Bundle", "type": "transaction-response", "entry": answers}

    def _plan(
        self,
        index: int,
        entry: dict[str, Any],
        staged: dict[str, dict[str, dict[str, Any]]],
        assigned: dict[str, str],
    ) -> tuple[str, str, int, bool, dict[str, Any]]:
        request = entry.get("request") or {}
        resource = copy.deepcopy(entry.get("resource") or {})
        if request.get("method") != "PUT":
            raise TransactionError(400, f"entry {index}: only PUT is supported here")
        url = urlsplit(request.get("url", ""))
        resource_type = url.path.strip("/")
        if resource.get("resourceType") != resource_type or "/" in resource_type:
            raise TransactionError(400, f"entry {index}: {request.get('url')!r} does not "
                                        f"match a {resource.get('resourceType')}")
        self._check_patient(index, resource)
        query = parse_qs(url.query, keep_blank_values=True)
        if list(query) != ["identifier"] or len(query["identifier"]) != 1:
            raise TransactionError(400, f"entry {index}: only ?identifier= conditions here")
        system, _, value = query["identifier"][0].rpartition("|")
        matches = [
            rid for rid, stored in staged.get(resource_type, {}).items()
            if _has_identifier(stored, system, value)
        ]
        if len(matches) > 1:
            raise TransactionError(
                412, f"entry {index}: {len(matches)} {resource_type} resources match "
                     f"identifier {system}|{value}", "duplicate")
        if matches:
            resource_id = matches[0]
            version = int(staged[resource_type][resource_id]["meta"]["versionId"]) + 1
            created = False
        else:
            resource_id = str(next(self.store.ids))
            version, created = 1, True
        if entry.get("fullUrl"):
            assigned[entry["fullUrl"]] = f"{resource_type}/{resource_id}"
        return resource_type, resource_id, version, created, resource

    def _check_patient(self, index: int, resource: dict[str, Any]) -> None:
        if self.known_patients is None:
            return
        value = ((resource.get("subject") or {}).get("identifier") or {}).get("value")
        if value not in self.known_patients:
            raise TransactionError(
                400, f"entry {index}: no Patient with identifier {value!r} in this EHR",
                "not-found")

    def read(self, resource_type: str, resource_id: str) -> dict[str, Any] | None:
        with self._lock:
            found = self.store.resources.get(resource_type, {}).get(resource_id)
            return copy.deepcopy(found) if found else None

    def search(self, resource_type: str, identifier: str) -> dict[str, Any]:
        system, _, value = identifier.rpartition("|")
        matches = [r for r in self.all(resource_type) if _has_identifier(r, system, value)]
        return {"resourceType": "Bundle", "type": "searchset", "total": len(matches),
                "entry": [{"resource": r, "search": {"mode": "match"}} for r in matches]}

    # --- serving ----------------------------------------------------------------------------

    @contextmanager
    def serve(self) -> Iterator[FhirReceiver]:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{server.server_address[1]}/fhir"
        thread = threading.Thread(target=server.serve_forever, name="fhir-receiver",
                                  daemon=True)
        thread.start()
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=10)


def _has_identifier(resource: dict[str, Any], system: str, value: str) -> bool:
    return any(
        i.get("value") == value and (not system or i.get("system") == system)
        for i in resource.get("identifier") or []
    )


def _rewrite_references(node: Any, assigned: dict[str, str]) -> Any:
    """Every ``reference`` to a full URL of this transaction now names the assigned id."""
    if isinstance(node, dict):
        out = {k: _rewrite_references(v, assigned) for k, v in node.items()}
        ref = out.get("reference")
        if isinstance(ref, str) and ref in assigned:
            out["reference"] = assigned[ref]
        return out
    if isinstance(node, list):
        return [_rewrite_references(v, assigned) for v in node]
    return node


def _handler_for(receiver: FhirReceiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet tests
            return

        def _answer(self, status: int, resource: dict[str, Any]) -> None:
            data = json.dumps(resource).encode()
            self.send_response(status)
            self.send_header("Content-Type", FHIR_JSON)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _path(self) -> tuple[list[str], dict[str, list[str]]] | None:
            url = urlsplit(self.path)
            if not (url.path == "/fhir" or url.path.startswith("/fhir/")):
                self._answer(404, operation_outcome(f"no such path {url.path}", "not-found"))
                return None
            return [p for p in url.path.split("/")[2:] if p], parse_qs(url.query)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            receiver.requests.append(Received("POST", self.path, dict(self.headers), body))
            parsed = self._path()
            if parsed is None:
                return
            if parsed[0]:
                self._answer(400, operation_outcome("POST a transaction Bundle to the base"))
                return
            if self.headers.get("Content-Type", "").split(";")[0].strip() != FHIR_JSON:
                self._answer(415, operation_outcome(f"send {FHIR_JSON}", "not-supported"))
                return
            failure = receiver._next_failure()
            if failure == "500":
                self._answer(500, operation_outcome("simulated server failure", "transient"))
                return
            try:
                answer = receiver.transaction(body)
            except TransactionError as exc:
                self._answer(exc.status, operation_outcome(exc.diagnostics, exc.code))
                return
            if failure == "drop":  # applied, but the answer never arrives
                self.close_connection = True
                return
            self._answer(200, answer)

        def do_GET(self) -> None:
            receiver.requests.append(Received("GET", self.path, dict(self.headers), b""))
            parsed = self._path()
            if parsed is None:
                return
            parts, query = parsed
            if len(parts) == 2:
                found = receiver.read(parts[0], parts[1])
                if found is None:
                    self._answer(404, operation_outcome(f"{parts[0]}/{parts[1]} is not known",
                                                        "not-found"))
                else:
                    self._answer(200, found)
            elif len(parts) == 1 and "identifier" in query:
                self._answer(200, receiver.search(parts[0], query["identifier"][0]))
            else:
                self._answer(400, operation_outcome("read by id or search by identifier only"))

    return Handler
