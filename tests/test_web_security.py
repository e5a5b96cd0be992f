"""The review app's safety rules, with Flask's test client on SQLite and PostgreSQL: every
route needs a session, state changes need the CSRF token, DICOM text is escaped, roles hold,
logins are rate limited, cookies carry the right flags, and the audit trail records actions."""

from __future__ import annotations

import re
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from web_helpers import (
    PASSWORD,
    Node,
    a4c_loops,
    add_not_eligible_series,
    csrf_from,
    login,
    make_node,
    seed_study,
)

from pacs_agent.db.models import AuditEvent, ReportVersion
from web.app import create_app
from web.secret import SECRET_FILE_NAME, load_or_create_secret_key

SCRIPT_NAME = "<script>alert(1)</script>"
PUBLIC = {"health.healthz", "health.readyz", "health.metrics", "static", "auth.login"}


@pytest.fixture
def node(tmp_path: Path, database_url: str) -> Iterator[Node]:
    made = make_node(tmp_path / "home", database_url)
    yield made
    made.engine.dispose()


@pytest.fixture
def study_id(node: Node, phantom_studies: list[Path]) -> int:
    """A received study (no analysis: cheap) whose patient is named like an attack."""
    sid = seed_study(node, a4c_loops(phantom_studies)[0], patient_name=SCRIPT_NAME)
    with node.session_factory.begin() as session:
        session.add(ReportVersion(study_fk=sid, version=1, status="preliminary",
                                  structured_text="LVEF 55.0 %.", narrative_text=SCRIPT_NAME))
    add_not_eligible_series(node, sid, "colour flow loop: not a B-mode A4C")
    return sid


@pytest.fixture
def app(node: Node):
    return create_app(node.engine, node.config)


def _url(rule) -> str:
    return re.sub(r"<(?:\w+:)?(\w+)>", lambda m: "1", rule.rule)


def test_every_route_needs_a_session(app, study_id) -> None:
    client = app.test_client()
    checked = 0
    for rule in app.url_map.iter_rules():
        if rule.endpoint in PUBLIC:
            continue
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            response = client.open(_url(rule), method=method)
            checked += 1
            if rule.rule.startswith("/api/"):
                assert response.status_code == 401, (method, rule.rule)
                assert response.get_json() == {"error": "authentication required"}
            elif rule.rule.startswith("/fhir"):
                assert response.status_code == 401, (method, rule.rule)
                assert response.get_json()["resourceType"] == "OperationOutcome"
            elif rule.rule.startswith("/dicomweb"):  # a session or a bearer token
                assert response.status_code == 401, (method, rule.rule)
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
            else:
                assert response.status_code == 302, (method, rule.rule)
                assert response.headers["Location"].startswith("/login")
    assert checked >= 15
    assert client.get("/healthz").status_code == 200
    assert client.get("/login").status_code == 200


def test_state_changes_without_the_csrf_token_are_refused(app, node, study_id) -> None:
    client = app.test_client()
    client.get("/login")
    refused = client.post("/login", data={"username": "cardio", "password": PASSWORD})
    assert refused.status_code == 403  # login CSRF too
    token = login(client, "cardio")
    body = {"base_version": 1, "structured_text": "x", "narrative_text": "y"}
    for url in (f"/api/studies/{study_id}/report", f"/api/studies/{study_id}/report/sign"):
        assert client.post(url, json=body).status_code == 403
        wrong = client.post(url, json=body, headers={"X-CSRF-Token": token + "x"})
        assert wrong.status_code == 403
    asked = client.post(f"/api/studies/{study_id}/chat", json={"question": "EF?"})
    assert asked.status_code == 403
    assert client.post("/logout").status_code == 403
    with node.session_factory() as session:
        assert [v.version for v in session.scalars(select(ReportVersion))] == [1]
    saved = client.post(f"/api/studies/{study_id}/report", json=body,
                        headers={"X-CSRF-Token": token})
    assert saved.status_code == 201


def test_dicom_text_renders_as_text(app, study_id) -> None:
    client = app.test_client()
    login(client, "sono")
    page = client.get(f"/studies/{study_id}").get_data(as_text=True)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert SCRIPT_NAME not in page
    assert "colour flow loop: not a B-mode A4C" in page
    listing = client.get("/api/studies")
    assert listing.mimetype == "application/json"
    assert listing.headers["X-Content-Type-Options"] == "nosniff"
    assert "script-src 'self'" in listing.headers["Content-Security-Policy"]
    assert listing.get_json()["studies"][0]["patient_name"] == SCRIPT_NAME  # data, not markup
    searched = client.get("/api/studies?q=alert").get_json()
    assert searched["count"] == 1
    assert client.get("/api/studies?q=nobody").get_json()["count"] == 0


def test_a_sonographer_can_read_but_not_edit_or_sign(app, study_id) -> None:
    client = app.test_client()
    token = login(client, "sono")
    assert client.get(f"/api/studies/{study_id}").status_code == 200
    body = {"base_version": 1, "structured_text": "x", "narrative_text": "y"}
    headers = {"X-CSRF-Token": token}
    for url in (f"/api/studies/{study_id}/report", f"/api/studies/{study_id}/report/sign"):
        response = client.post(url, json=body, headers=headers)
        assert response.status_code == 403
        assert "cardiologist" in response.get_json()["error"]
    assert client.get("/admin/audit").status_code == 403
    assert client.get("/api/audit").status_code == 403


def test_the_audit_log_records_login_view_edit_and_ask(app, node, study_id) -> None:
    client = app.test_client()
    client.get("/login")
    bad = client.post("/login", data={"username": "cardio", "password": "wrong-password",
                                      "csrf_token": _token(client)})
    assert bad.status_code == 401
    token = login(client, "cardio")
    client.get(f"/studies/{study_id}")
    client.post(f"/api/studies/{study_id}/report", headers={"X-CSRF-Token": token},
                json={"base_version": 1, "structured_text": "edited", "narrative_text": ""})
    answer = client.post(f"/api/studies/{study_id}/chat", headers={"X-CSRF-Token": token},
                         json={"question": "What is the heart rate?"})
    assert answer.mimetype == "text/event-stream"
    assert "event: done" in answer.get_data(as_text=True)
    with node.session_factory() as session:
        events = [(e.username, e.action, e.study_fk) for e in
                  session.scalars(select(AuditEvent).order_by(AuditEvent.id))]
    assert ("cardio", "login_failed", None) in events
    assert ("cardio", "login", None) in events
    assert ("cardio", "view", study_id) in events
    assert ("cardio", "edit", study_id) in events
    assert ("cardio", "ask", study_id) in events
    admin = app.test_client()
    login(admin, "admin")
    page = admin.get("/admin/audit").get_data(as_text=True)
    assert "login_failed" in page and "ask" in page
    assert {e["action"] for e in admin.get("/api/audit").get_json()["events"]} >= {
        "login", "view", "edit", "ask"}


def _token(client) -> str:
    return csrf_from(client.get("/login").get_data(as_text=True))


def test_logins_are_rate_limited_per_user_and_address(app, node) -> None:
    client = app.test_client()
    for _ in range(5):
        response = client.post("/login", data={"username": "cardio", "password": "nope-nope",
                                               "csrf_token": _token(client)})
        assert response.status_code == 401
    blocked = client.post("/login", data={"username": "cardio", "password": PASSWORD,
                                          "csrf_token": _token(client)})
    assert blocked.status_code == 429
    other = app.test_client()  # another account from the same address is not locked out
    login(other, "sono")


def test_session_cookie_flags_logout_and_secret_key(app, node) -> None:
    client = app.test_client()
    client.get("/login")
    response = client.post("/login", data={"username": "cardio", "password": PASSWORD,
                                           "csrf_token": _token(client)})
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    page = client.get("/")
    assert page.status_code == 200 and page.headers["Cache-Control"] == "no-store"
    stolen = client.get_cookie("echo_agent_session").value
    client.post("/logout", data={"csrf_token": _token_from_page(client)})
    assert client.get("/").status_code == 302
    replay = app.test_client()
    replay.set_cookie("echo_agent_session", stolen)
    assert replay.get("/api/studies").status_code == 401  # revoked at logout

    secure = app.test_client()
    secure.get("/login", base_url="https://localhost")
    token = _token_https(secure)
    tls = secure.post("/login", base_url="https://localhost",
                      data={"username": "sono", "password": PASSWORD, "csrf_token": token})
    assert "Secure" in tls.headers["Set-Cookie"]

    key_file = Path(node.config.home_path) / SECRET_FILE_NAME
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert load_or_create_secret_key(Path(node.config.home_path)) == app.secret_key


def _token_from_page(client) -> str:
    return csrf_from(client.get("/").get_data(as_text=True))


def _token_https(client) -> str:
    return csrf_from(client.get("/login", base_url="https://localhost").get_data(as_text=True))


def test_login_redirects_only_to_local_paths(app, study_id) -> None:
    client = app.test_client()
    page = client.get(f"/studies/{study_id}")
    assert page.headers["Location"] == f"/login?next=/studies/{study_id}"
    for target, expected in ((f"/studies/{study_id}", f"/studies/{study_id}"),
                             ("https://evil.example/", "/"), ("//evil.example", "/")):
        fresh = app.test_client()
        response = fresh.post("/login", data={"username": "sono", "password": PASSWORD,
                                              "next": target, "csrf_token": _token(fresh)})
        assert response.headers["Location"] == expected


def test_the_openapi_document_covers_every_api_route(app) -> None:
    client = app.test_client()
    assert client.get("/api/openapi.json").status_code == 401
    login(client, "sono")
    doc = client.get("/api/openapi.json").get_json()
    assert doc["openapi"].startswith("3.")
    documented = set(doc["paths"])
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/api/"):
            path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
            assert path in documented, path


def test_a_chat_backend_plugs_in_and_a_failure_mid_answer_is_kept_visible(node, study_id) -> None:
    seen: list[tuple[object, list, str]] = []

    def backend(context, history, question):
        seen.append((context, list(history), question))
        yield "The EF is "
        raise RuntimeError("model crashed")

    app = create_app(node.engine, node.config, chat_backend=backend)
    client = app.test_client()
    token = login(client, "cardio")
    body = client.post(f"/api/studies/{study_id}/chat", json={"question": "EF?"},
                       headers={"X-CSRF-Token": token}).get_data(as_text=True)
    assert "event: chunk" in body and "event: error" in body and "RuntimeError" in body
    context, history, question = seen[0]
    assert context.study_id == study_id and context.measurements is None
    assert history == [] and question == "EF?"
    messages = client.get(f"/api/studies/{study_id}/chat").get_json()["messages"]
    assert messages[1]["content"] == "The EF is \n[answer interrupted]"
    assert messages[1]["grounding"] == {"backend": "backend", "complete": False}
    client.post(f"/api/studies/{study_id}/chat", json={"question": "And now?"},
                headers={"X-CSRF-Token": token}).get_data()
    assert [turn.role for turn in seen[1][1]] == ["user", "assistant"]  # history passed on


def test_sessions_end_after_idle_time_and_polling_does_not_keep_them_alive(
    app, monkeypatch
) -> None:
    import web.auth

    client = app.test_client()
    login(client, "sono")
    now = web.auth.now_s()
    clock = {"t": now + web.auth.IDLE_TIMEOUT_S - 60}
    monkeypatch.setattr(web.auth, "now_s", lambda: clock["t"])
    assert client.get("/api/studies", headers={"X-Echo-Background": "1"}).status_code == 200
    clock["t"] = now + web.auth.IDLE_TIMEOUT_S + 1  # idle since login, despite the polling
    assert client.get("/api/studies").status_code == 401
