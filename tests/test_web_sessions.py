"""What ends a session and what slows a login is kept in the database, on SQLite and
PostgreSQL: a logout holds in another web process and after a restart, one address cannot spray
passwords across many user names, the client address comes from X-Forwarded-For only when a
configured trusted proxy sent it, and two app instances on one database share every layer
(sessions, login budget, CSRF)."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from web_helpers import PASSWORD, Node, csrf_from, login, make_node

from pacs_agent.config import ConfigError, WebConfig, load_config
from pacs_agent.db import make_engine
from pacs_agent.db.models import AuditEvent
from web.app import SESSION_COOKIE_NAME, create_app
from web.ratelimit import MAX_FAILURES_PER_ADDRESS, MAX_FAILURES_PER_USER, WINDOW_S

REPO_ROOT = Path(__file__).resolve().parents[1]

# Another web process on the same database and home (so the same secret key): it answers, for
# each session cookie given, the status of an API call made with it.
OTHER_PROCESS = """
import json, sys
from pacs_agent.config import Config, DatabaseConfig, LlmConfig
from pacs_agent.db import make_engine
from pacs_agent.db.models import AuditEvent
from web.app import SESSION_COOKIE_NAME, create_app

home, url, cookies = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
config = Config(home=home, database=DatabaseConfig(url=url), llm=LlmConfig(draft=False))
engine = make_engine(url)
app = create_app(engine, config)
statuses = []
for cookie in cookies:
    client = app.test_client()
    client.set_cookie(SESSION_COOKIE_NAME, cookie)
    statuses.append(client.get("/api/studies").status_code)
engine.dispose()
print(json.dumps(statuses))
"""


@pytest.fixture
def node(tmp_path: Path, database_url: str) -> Iterator[Node]:
    made = make_node(tmp_path / "home", database_url)
    yield made
    made.engine.dispose()


def _cookie(client: FlaskClient) -> str:
    found = client.get_cookie(SESSION_COOKIE_NAME)
    assert found is not None
    return found.value


def _status_with(app: Flask, cookie: str) -> int:
    client = app.test_client()
    client.set_cookie(SESSION_COOKIE_NAME, cookie)
    return client.get("/api/studies").status_code


def _statuses_in_another_process(node: Node, cookies: list[str]) -> list[int]:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            OTHER_PROCESS,
            node.config.home,
            node.config.database_url,
            json.dumps(cookies),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _logout(client: FlaskClient, *, everywhere: bool = False) -> None:
    token = csrf_from(client.get("/").get_data(as_text=True))
    data = {"csrf_token": token, **({"everywhere": "1"} if everywhere else {})}
    assert client.post("/logout", data=data).status_code == 302


@pytest.mark.slow  # one Python process started (about 6 s, most of it importing torch)
def test_a_logout_holds_in_another_process_and_after_a_restart(node: Node) -> None:
    """Item 6: revocations used to live in one process's memory."""
    app = create_app(node.engine, node.config)
    leaving, staying, elsewhere, other_desk = (app.test_client() for _ in range(4))
    login(leaving, "cardio")
    login(staying, "cardio")  # the same account on another workstation
    login(elsewhere, "sono")
    login(other_desk, "sono")
    left, stays = _cookie(leaving), _cookie(staying)
    sono_a, sono_b = _cookie(elsewhere), _cookie(other_desk)

    _logout(leaving)  # this session only
    _logout(elsewhere, everywhere=True)  # every session of the account

    # the untouched session answers 200 there: the other process does accept our cookies
    assert _statuses_in_another_process(node, [left, stays, sono_a, sono_b]) == [401, 200, 401, 401]
    restarted = create_app(node.engine, node.config)  # a fresh app, as after a restart
    assert [_status_with(restarted, c) for c in (left, stays, sono_a, sono_b)] == [
        401,
        200,
        401,
        401,
    ]
    login(restarted.test_client(), "sono")  # a new login after "everywhere" works


def _try_login(client: FlaskClient, username: str, password: str, **kwargs):
    token = csrf_from(client.get("/login").get_data(as_text=True))
    return client.post(
        "/login", data={"username": username, "password": password, "csrf_token": token}, **kwargs
    )


def test_many_user_names_from_one_address_hit_the_address_budget(node: Node) -> None:
    """Item 7: the limit was per (user, address) only, so spraying across names never slowed."""
    assert MAX_FAILURES_PER_USER < MAX_FAILURES_PER_ADDRESS < 12
    app = create_app(node.engine, node.config)
    client = app.test_client()
    codes = [_try_login(client, f"user{i:02d}", "Spring2026!").status_code for i in range(12)]
    assert codes == [401] * MAX_FAILURES_PER_ADDRESS + [429] * (12 - MAX_FAILURES_PER_ADDRESS)
    blocked = _try_login(client, "cardio", PASSWORD)  # even the right password, from here
    assert blocked.status_code == 429
    assert 1 <= int(blocked.headers["Retry-After"]) <= WINDOW_S + 1
    restarted = create_app(node.engine, node.config).test_client()
    assert _try_login(restarted, "sono", PASSWORD).status_code == 429  # not forgotten
    other = _try_login(
        app.test_client(), "cardio", PASSWORD, environ_base={"REMOTE_ADDR": "10.1.2.3"}
    )
    assert other.status_code == 302  # another address is not locked out


def test_x_forwarded_for_from_an_untrusted_peer_is_ignored(node: Node) -> None:
    """Item 7: without ``[web] trusted_proxies`` (the default), a forged header cannot pick a
    fresh address for every guess."""
    client = create_app(node.engine, node.config).test_client()
    codes = [
        _try_login(
            client, f"user{i:02d}", "Spring2026!", headers={"X-Forwarded-For": f"198.51.100.{i}"}
        ).status_code
        for i in range(MAX_FAILURES_PER_ADDRESS + 1)
    ]
    assert codes[-1] == 429 and codes[:-1] == [401] * MAX_FAILURES_PER_ADDRESS


def test_a_trusted_proxy_s_forwarded_address_is_the_client(node: Node) -> None:
    """Item 7: behind a configured proxy every client arrives from the proxy's address; the
    budget must count the address the proxy saw (the right-most untrusted entry)."""
    config = dataclasses.replace(
        node.config, web=WebConfig(trusted_proxies=["127.0.0.1", "10.0.0.0/8"])
    )
    app = create_app(node.engine, config)
    client = app.test_client()
    for i in range(MAX_FAILURES_PER_ADDRESS):
        # a client-written left entry and a second trusted hop: 203.0.113.7 is what counts
        forwarded = f"192.0.2.{i}, 203.0.113.7, 10.0.0.2"
        failed = _try_login(
            client, f"user{i:02d}", "Spring2026!", headers={"X-Forwarded-For": forwarded}
        )
        assert failed.status_code == 401
    sprayer = _try_login(client, "cardio", PASSWORD, headers={"X-Forwarded-For": "203.0.113.7"})
    assert sprayer.status_code == 429
    colleague = _try_login(
        app.test_client(), "cardio", PASSWORD, headers={"X-Forwarded-For": "198.51.100.20"}
    )
    assert colleague.status_code == 302  # same proxy, another client: not locked out
    untrusted_peer = _try_login(
        app.test_client(),
        "sono",
        PASSWORD,
        headers={"X-Forwarded-For": "203.0.113.7"},
        environ_base={"REMOTE_ADDR": "192.0.2.50"},
    )
    assert untrusted_peer.status_code == 302  # its header is ignored: counted as 192.0.2.50


def test_two_app_instances_on_one_database_share_sessions_budgets_and_csrf(node: Node) -> None:
    """Item 13: no layer keeps per-process state. Failures seen by one instance count in the
    other (the budget was per instance), and a CSRF token and session issued by one are
    honoured by the other (both travel in the signed cookie)."""
    first = create_app(node.engine, node.config)
    second_engine = make_engine(node.config.database_url)
    try:
        second = create_app(second_engine, node.config)
        a, b = first.test_client(), second.test_client()
        for _ in range(MAX_FAILURES_PER_USER):
            assert _try_login(a, "cardio", "wrong-password").status_code == 401
        assert _try_login(b, "cardio", PASSWORD).status_code == 429
        token = login(a, "sono")
        b.set_cookie(SESSION_COOKIE_NAME, _cookie(a))
        assert b.get("/api/studies").status_code == 200
        assert b.post("/logout", data={"csrf_token": token + "x"}).status_code == 403
        assert b.post("/logout", data={"csrf_token": token}).status_code == 302
        assert _status_with(first, _cookie(a)) == 401  # logged out through the other one
    finally:
        second_engine.dispose()


def test_trusted_proxies_are_addresses_or_networks(tmp_path: Path) -> None:
    assert load_config(environ={}).web.trusted_proxies == []
    env = {"ECHO_AGENT_WEB_TRUSTED_PROXIES": "127.0.0.1, 10.0.0.0/8, ::1"}
    assert load_config(environ=env).web.trusted_proxies == ["127.0.0.1", "10.0.0.0/8", "::1"]
    with pytest.raises(ConfigError, match=r"web\.trusted_proxies"):
        load_config(environ={"ECHO_AGENT_WEB_TRUSTED_PROXIES": "proxy.example"})


def test_behind_a_trusted_proxy_metrics_and_the_audit_trail_see_the_forwarded_client(
    node: Node,
) -> None:
    """A reverse proxy on loopback makes every request arrive from 127.0.0.1: /metrics must not
    take that for a local scraper, and the audit trail must name the client, not the proxy."""
    forwarded = {"X-Forwarded-For": "203.0.113.9"}
    plain = create_app(node.engine, node.config).test_client()
    assert plain.get("/metrics", headers=forwarded).status_code == 200  # header ignored
    config = dataclasses.replace(node.config, web=WebConfig(trusted_proxies=["127.0.0.1"]))
    app = create_app(node.engine, config)
    client = app.test_client()
    assert client.get("/metrics", headers=forwarded).status_code == 403
    assert client.get("/metrics").status_code == 200  # the proxy host itself, no header
    assert _try_login(client, "cardio", PASSWORD, headers=forwarded).status_code == 302
    with node.session_factory() as session:
        addresses = session.scalars(
            select(AuditEvent.remote_addr).where(AuditEvent.action == "login")
        ).all()
    assert addresses and addresses[-1] == "203.0.113.9"


def test_a_trusted_proxy_ending_tls_gets_a_secure_session_cookie(node: Node) -> None:
    """Behind a proxy that ends TLS the node sees plain HTTP; the proxy's X-Forwarded-Proto
    must still mark the session cookie Secure, and the header counts from that proxy only."""
    https = {"X-Forwarded-Proto": "https"}

    def cookie_is_secure(app: Flask, **kwargs) -> bool:
        client = app.test_client()
        response = _try_login(client, "cardio", PASSWORD, headers=https, **kwargs)
        assert response.status_code == 302
        (set_cookie,) = [
            h for h in response.headers.getlist("Set-Cookie") if h.startswith(SESSION_COOKIE_NAME)
        ]
        return "; Secure" in set_cookie

    plain = create_app(node.engine, node.config)
    assert not cookie_is_secure(plain)  # no trusted proxy: the header is anyone's
    config = dataclasses.replace(node.config, web=WebConfig(trusted_proxies=["127.0.0.1"]))
    proxied = create_app(node.engine, config)
    assert cookie_is_secure(proxied)
    assert not cookie_is_secure(proxied, environ_base={"REMOTE_ADDR": "192.0.2.60"})


def test_the_page_header_offers_log_out_everywhere(node: Node) -> None:
    """The header's logout form carries a second submit button that sends ``everywhere=1``:
    pressing it on one workstation ends the account's session on another."""
    app = create_app(node.engine, node.config)
    here, there = app.test_client(), app.test_client()
    token = login(here, "cardio")
    login(there, "cardio")
    page = here.get("/").get_data(as_text=True)
    assert re.search(r'<button[^>]*name="everywhere"[^>]*value="1"[^>]*>Log out everywhere<', page)
    assert here.post("/logout", data={"csrf_token": token, "everywhere": "1"}).status_code == 302
    assert there.get("/api/studies").status_code == 401
