"""``/healthz`` (alive), ``/readyz`` (database, schema, store, models) and the model-loading
banner's status, on real databases and a real store directory."""

from __future__ import annotations

import dataclasses
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import waitress
from support import find_free_port, need_tool, require_or_skip
from waitress import wasyncore
from web_helpers import PASSWORD, Node, login, make_node

from echo_agent.demo import follow_model_status
from pacs_agent.config import Config, DatabaseConfig, DicomConfig, StoreConfig
from pacs_agent.db import make_engine
from pacs_agent.readiness import CNN, CONVERTING_TEXT, LANGUAGE_MODEL, ModelStatus
from web.app import create_app

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]


@pytest.fixture
def node(tmp_path: Path, database_url: str) -> Iterator[Node]:
    made = make_node(tmp_path / "home", database_url)
    made.config.store_path.mkdir(parents=True)
    yield made
    made.engine.dispose()


def _client(node: Node, status: ModelStatus | None = None, config: Config | None = None):
    app = create_app(node.engine, config or node.config, secret_key=b"k" * 32, model_status=status)
    return app.test_client()


def test_healthz_says_alive_and_nothing_else(node: Node) -> None:
    response = _client(node).get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_readyz_checks_database_schema_store_and_models(node: Node) -> None:
    status = ModelStatus()
    status.expect(CNN)
    status.expect(LANGUAGE_MODEL, required=False)
    client = _client(node, status)

    pending = client.get("/readyz")
    assert pending.status_code == 503
    assert pending.get_json()["reason"] == "model cnn pending"
    status.set_state(CNN, "loading")
    assert client.get("/readyz").get_json()["reason"] == "model cnn loading"
    status.set_state(CNN, "ready")
    ready = client.get("/readyz")  # the optional language model does not hold readiness up
    assert ready.status_code == 200
    assert ready.get_json() == {"status": "ready", "checks": {
        "database": "ok", "schema": "ok", "store": "ok", "disk": "ok", "models": "ok"}}
    status.set_state(CNN, "failed", "ValueError: no such weights")
    failed = client.get("/readyz").get_json()
    assert failed["reason"] == "model cnn failed: ValueError: no such weights"

    web_only = _client(node).get("/readyz")  # no models in this process: not checked
    assert web_only.status_code == 200 and "models" not in web_only.get_json()["checks"]


def test_readyz_is_503_on_an_old_schema(tmp_path: Path, database_url: str, node: Node) -> None:
    with node.engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = 'old'"))
    body = _client(node).get("/readyz")
    assert body.status_code == 503
    assert body.get_json()["reason"].startswith("schema old is not")
    assert body.get_json()["checks"] == {"database": "ok", "schema": "outdated"}


def test_readyz_is_503_when_the_store_is_not_writable(tmp_path: Path, node: Node) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    config = dataclasses.replace(node.config, store=StoreConfig(path=str(blocker / "store")))
    body = _client(node, config=config).get("/readyz")
    assert body.status_code == 503
    assert body.get_json()["reason"].startswith("store not writable")
    assert not list(tmp_path.glob("**/.readyz-*"))  # the probe leaves nothing behind


def test_readyz_is_503_while_the_disk_guard_refuses_every_store(node: Node) -> None:
    """The listener answers 0xA700 to every C-STORE below dicom.min_free_disk_mb; /readyz must
    not call such a node ready."""
    free_mb = shutil.disk_usage(node.config.store_path).free // (1024 * 1024)
    guarded = dataclasses.replace(
        node.config, dicom=DicomConfig(min_free_disk_mb=free_mb + 10_000)
    )
    body = _client(node, config=guarded).get("/readyz")
    assert body.status_code == 503
    assert body.get_json()["checks"] == {
        "database": "ok", "schema": "ok", "store": "ok", "disk": "below guard"}
    reason = body.get_json()["reason"]
    assert reason.startswith("disk space low") and "dicom.min_free_disk_mb" in reason
    roomy = dataclasses.replace(node.config, dicom=DicomConfig(min_free_disk_mb=0))
    assert _client(node, config=roomy).get("/readyz").status_code == 200


def test_readyz_is_503_when_the_database_does_not_answer(tmp_path: Path) -> None:
    url = f"postgresql+psycopg://nobody@127.0.0.1:{find_free_port()}/none"
    engine = make_engine(url)
    config = Config(home=str(tmp_path / "home"), database=DatabaseConfig(url=url))
    try:
        app = create_app(engine, config, secret_key=b"k" * 32)
        body = app.test_client().get("/readyz")
    finally:
        engine.dispose()
    assert body.status_code == 503
    assert body.get_json() == {
        "status": "not ready",
        "reason": "database unreachable (OperationalError)",
        "checks": {"database": "unreachable"},
    }


def test_the_banner_status_follows_the_models_and_needs_a_login(node: Node) -> None:
    status = ModelStatus()
    status.expect(CNN)
    status.expect(LANGUAGE_MODEL, required=False)
    client = _client(node, status)
    assert client.get("/api/status/models").status_code == 401
    login(client, "sono")

    status.set_state(CNN, "loading")
    body = client.get("/api/status/models").get_json()
    assert body["state"] == "loading"
    assert body["message"] == "Loading the segmentation and EF models..."
    status.set_state(CNN, "ready")
    status.set_state(LANGUAGE_MODEL, "converting")
    body = client.get("/api/status/models").get_json()
    assert (body["state"], body["message"]) == ("loading", CONVERTING_TEXT)
    assert body["models"]["cnn"]["state"] == "ready"
    assert body["models"]["cnn"]["load_s"] >= 0
    status.set_state(LANGUAGE_MODEL, "ready")
    assert client.get("/api/status/models").get_json()["message"] == "Ready"

    page = client.get("/").get_data(as_text=True)
    assert 'id="model-banner"' in page and "model_status.js" in page
    web_only = _client(node)
    login(web_only, "sono")
    assert web_only.get("/api/status/models").get_json()["state"] == "none"


def test_track_records_load_time_and_failure() -> None:
    status = ModelStatus()
    assert status.track(CNN, lambda: 42) == 42
    assert CNN in status.load_times_s()
    with pytest.raises(RuntimeError):
        status.track(LANGUAGE_MODEL, _boom, "converting")
    snap = status.snapshot()
    assert snap["state"] == "failed"
    assert snap["message"] == "The language model could not be loaded: RuntimeError: out of memory"
    assert status.required_ready() == (
        False, "model language_model failed: RuntimeError: out of memory"
    )


def _boom() -> None:
    raise RuntimeError("out of memory")


def test_the_demo_prints_each_loading_step_until_ready() -> None:
    status = ModelStatus()
    status.expect(CNN)
    status.expect(LANGUAGE_MODEL, required=False)
    printed: list[str] = []
    follower = threading.Thread(target=follow_model_status, args=(status, printed.append, 0.01))
    follower.start()
    for name, state in ((CNN, "loading"), (CNN, "ready"), (LANGUAGE_MODEL, "converting"),
                        (LANGUAGE_MODEL, "ready")):
        time.sleep(0.2)  # 20 polls per step
        status.set_state(name, state)
    follower.join(5)
    assert not follower.is_alive()
    assert printed == [
        "models: Loading the segmentation and EF models...",
        "models: Loading the language model...",
        f"models: {CONVERTING_TEXT}",
        "models: Ready",
    ]


def test_the_banner_shows_loading_then_ready_in_chromium(tmp_path: Path) -> None:
    """Served by waitress as the node serves it; the page polls while the node loads models."""
    chromium = need_tool("chromium", "chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        require_or_skip("the playwright package is not installed")
    node = make_node(tmp_path / "home", f"sqlite:///{tmp_path / 'b.db'}")
    status = ModelStatus()
    status.expect(CNN)
    status.set_state(CNN, "loading")
    web_map: dict = {}
    app = create_app(node.engine, node.config, secret_key=b"k" * 32, model_status=status)
    web = waitress.create_server(app, map=web_map, host="127.0.0.1", port=0, threads=2)
    thread = threading.Thread(target=web.run, daemon=True)
    thread.start()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{web.effective_port}/")
            page.fill("#username", "sono")
            page.fill("#password", PASSWORD)
            page.click("#login-submit")
            page.wait_for_selector("#worklist-table")
            banner = page.locator("#model-banner")
            banner.wait_for(state="visible", timeout=10_000)
            assert banner.inner_text() == "Loading the segmentation and EF models..."
            status.set_state(CNN, "ready")
            page.wait_for_selector("#model-banner[data-state='ready']", timeout=10_000)
            assert banner.inner_text() == "Ready"
            banner.wait_for(state="hidden", timeout=10_000)
            browser.close()
    finally:
        web.task_dispatcher.shutdown(timeout=5)
        web.trigger.pull_trigger(lambda: wasyncore.close_all(web_map))
        thread.join(timeout=10)
        node.engine.dispose()
