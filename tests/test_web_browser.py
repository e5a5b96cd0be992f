"""The review app in Debian's Chromium (Playwright), served by waitress as the node serves it,
on a study the real pipeline analysed with the demo networks: log in, open the study from the
worklist, play the cine, toggle the overlay, read the EF, edit and sign, watch the FHIR and
export status change, ask in the chat and watch the answer stream. Screenshots of the worklist
and the study page are saved in the test's folder and copied to /tmp/echo-agent-screenshots/.
"""

from __future__ import annotations

import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import waitress
from dicom_helpers import PEER_AET, free_tcp_port, storescp
from fhir_receiver import FhirReceiver
from sqlalchemy import select
from support import need_tool, require_or_skip
from waitress import wasyncore
from web_helpers import (
    PASSWORD,
    a4c_loops,
    demo_models_or_skip,
    make_node,
    seed_study,
)

from pacs_agent.config import DestinationConfig, DicomConfig, EhrConfig, ExportConfig
from pacs_agent.db.models import Analysis, AuditEvent
from web.app import create_app

pytestmark = pytest.mark.slow

SCREENSHOT_COPY_DIR = Path("/tmp/echo-agent-screenshots")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
SCRIPT_NAME = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def ehr() -> Iterator[FhirReceiver]:
    """The EHR (a loopback FHIR server), up before the pipeline delivers to it."""
    with FhirReceiver().serve() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def server(tmp_path_factory, phantom_studies, ehr) -> Iterator[dict]:
    chromium = need_tool("chromium", "chromium")
    models = demo_models_or_skip()
    tmp = tmp_path_factory.mktemp("web_browser")
    node = make_node(tmp / "home", f"sqlite:///{tmp / 'echo-agent.db'}")
    port = free_tcp_port()
    node.config = node.config.__class__(
        home=node.config.home,
        database=node.config.database,
        llm=node.config.llm,
        dicom=DicomConfig(ae_title="ECHOAGENT"),
        export=ExportConfig(max_attempts=2, backoff_initial_s=0.05, backoff_max_s=0.5),
        ehr=EhrConfig(fhir_base_url=ehr.base_url, max_attempts=2, backoff_initial_s=0.05),
        destinations=[DestinationConfig(name="pacs", ae_title=PEER_AET, host="127.0.0.1",
                                        port=port)],
    )
    loop = a4c_loops(phantom_studies)[0]
    with storescp(port, tmp / "peer"):  # the PACS is up before the pipeline exports to it
        study_id = seed_study(node, loop, patient_name=SCRIPT_NAME, models=models,
                              accession="ACC-BROWSER")
        with node.session_factory() as session:
            analysis = session.scalars(select(Analysis)).one()
            ef, analysis_id = analysis.ef_percent, analysis.id
        web_map: dict = {}
        from llm.chat_service import composed_backend

        app = create_app(node.engine, node.config, chat_backend=composed_backend())
        web = waitress.create_server(app, map=web_map, host="127.0.0.1", port=0, threads=4)
        thread = threading.Thread(target=web.run, daemon=True)
        thread.start()
        yield {
            "url": f"http://127.0.0.1:{web.effective_port}",
            "study_id": study_id,
            "ef": ef,
            "analysis_id": analysis_id,
            "node": node,
            "chromium": chromium,
            "shots": tmp / "screenshots",
            "ehr": ehr,
        }
        web.task_dispatcher.shutdown(timeout=5)  # then close from inside the server's loop
        web.trigger.pull_trigger(lambda: wasyncore.close_all(web_map))
        thread.join(timeout=10)
    node.engine.dispose()


@pytest.fixture(scope="module")
def browser(server) -> Iterator[object]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        require_or_skip("the playwright package is not installed")
    with sync_playwright() as p:
        instance = p.chromium.launch(executable_path=server["chromium"], args=CHROMIUM_ARGS)
        yield instance
        instance.close()


def _shot(page, server: dict, name: str) -> Path:
    server["shots"].mkdir(parents=True, exist_ok=True)
    path = server["shots"] / name
    page.screenshot(path=str(path), full_page=True)
    SCREENSHOT_COPY_DIR.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, SCREENSHOT_COPY_DIR / name)
    return path


def _wait_until(page, predicate: str, timeout: float = 10_000) -> None:
    """Polls a JavaScript predicate from Python (Playwright's own polling proved unreliable
    under the page's strict content security policy)."""
    waited = 0.0
    while not page.evaluate(predicate):
        if waited >= timeout:
            raise AssertionError(f"not true after {timeout / 1000:.0f} s: {predicate}")
        page.wait_for_timeout(100)
        waited += 100


def _log_in(page, server: dict, username: str) -> None:
    page.goto(server["url"] + "/")
    assert "/login" in page.url
    page.fill("#username", username)
    page.fill("#password", PASSWORD)
    page.click("#login-submit")
    page.wait_for_selector("#worklist-table")


def test_review_sign_and_chat_in_chromium(browser, server) -> None:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    _log_in(page, server, "cardio")

    row = page.locator(f"tr[data-study-id='{server['study_id']}']")
    row.wait_for()
    assert row.locator("a.study-link").inner_text() == SCRIPT_NAME  # text, never markup
    # the EF, and under it the loop's quality score (the validity gate's, 0-1)
    ef_cell = row.locator("td.ef").inner_text().splitlines()
    assert ef_cell[0] == f"{server['ef']:.1f} %"
    assert re.fullmatch(r"Image quality score 0\.\d\d.*", ef_cell[1])
    _shot(page, server, "worklist.png")
    row.locator("a.study-link").click()
    page.wait_for_url(re.compile(rf"/studies/{server['study_id']}$"))
    assert page.locator("#patient-name").inner_text() == SCRIPT_NAME
    assert "DEMO MODELS" in page.locator("#demo-banner").inner_text()

    canvas = page.locator("#cine")
    page.wait_for_selector("#cine-loading", state="hidden", timeout=60_000)
    first = int(canvas.get_attribute("data-frame"))
    page.click("#play")
    _wait_until(page,
        f"() => document.getElementById('cine').dataset.frame !== '{first}'", timeout=10_000)
    seen = {int(canvas.get_attribute("data-frame"))}
    for _ in range(5):
        page.wait_for_timeout(120)
        seen.add(int(canvas.get_attribute("data-frame")))
    assert len(seen) >= 3, seen  # frames advance while playing
    page.click("#play")  # pause
    page.click("#step-forward")
    contours = page.evaluate(
        "async (url) => (await (await fetch(url)).json()).frames",
        f"/api/analyses/{server['analysis_id']}/contours",
    )
    outlined = [i for i, points in enumerate(contours) if len(points) >= 6]
    if outlined:  # go to a frame where the SEG has an outline
        page.evaluate(
            "(i) => { const s = document.getElementById('frame-slider'); s.value = String(i);"
            " s.dispatchEvent(new Event('input')); }", outlined[0])
        assert canvas.get_attribute("data-frame") == str(outlined[0])
    checksum = "() => { const c = document.getElementById('cine'); const d = c.getContext('2d')" \
        ".getImageData(0, 0, c.width, c.height).data; let s = 0; for (let i = 0; i < d.length;" \
        " i += 4) s += d[i] * 3 + d[i + 1] * 5 + d[i + 2] * 7; return s; }"
    with_overlay = page.evaluate(checksum)
    page.uncheck("#overlay-toggle")
    assert canvas.get_attribute("data-overlay") == "off"
    without_overlay = page.evaluate(checksum)
    overlay_changed = with_overlay != without_overlay  # checked last: see the end
    page.check("#overlay-toggle")

    ef_text = f"{server['ef']:.1f} %"
    assert page.locator("#ef-value").inner_text() == ef_text
    table_ef = page.locator("#measurement-table tr[data-key='lvef_regression'] td.value")
    assert table_ef.inner_text() == ef_text
    assert page.locator("#fhir-status").inner_text() == "preliminary"
    delivery = page.locator("#fhir-delivery")
    assert delivery.inner_text().startswith("preliminary - delivered to EHR")
    _shot(page, server, "study.png")

    page.fill("#narrative-text", "LV size and systolic function reviewed on the loop.")
    page.click("#sign-report")
    _wait_until(page,
        "() => document.getElementById('report-status').textContent.startsWith('signed')")
    _wait_until(page,
        "() => document.getElementById('fhir-status').textContent === 'final'", timeout=30_000)
    _wait_until(page, "() => document.getElementById('fhir-delivery').textContent"
                      ".startsWith('final - delivered to EHR')", timeout=30_000)
    (report,) = server["ehr"].all("DiagnosticReport")  # the same report, now final
    assert report["status"] == "final" and report["meta"]["versionId"] == "2"
    _wait_until(page,
        "() => document.getElementById('export-list').textContent.includes('SR v2 → pacs: sent')",
        timeout=60_000)
    assert page.locator("#study-status").inner_text() == "signed"

    page.fill("#chat-input", "What is the ejection fraction?")
    page.click("#chat-send")
    answer = page.locator(".bubble.assistant .text").last
    _wait_until(page,
        "() => { const a = [...document.querySelectorAll('.bubble.assistant .text')].pop();"
        " return a && a.dataset.done === 'true'; }", timeout=30_000)
    assert int(answer.get_attribute("data-chunks")) > 3  # it arrived in pieces
    assert ef_text in answer.inner_text()
    # under the answer: the facts and the knowledge entries it was built from, with sources
    based_on = page.locator(".bubble.assistant .based-on").last.inner_text()
    assert "Based on" in based_on and "LV systolic function grade" in based_on
    assert "ASE/EACVI 2015" in based_on
    _shot(page, server, "study-signed.png")
    assert dialogs == [] and errors == []

    sono = browser.new_context().new_page()
    _log_in(sono, server, "sono")
    sono.goto(f"{server['url']}/studies/{server['study_id']}")
    _wait_until(sono, "() => document.getElementById('sign-note').textContent.length > 0")
    assert sono.locator("#sign-report").is_hidden()
    assert sono.locator("#narrative-text").get_attribute("readonly") is not None
    context.close()

    with server["node"].session_factory() as session:
        actions = {e.action for e in session.scalars(select(AuditEvent))}
    assert {"login", "view", "sign", "export", "ask"} <= actions
    # the demo networks must find the LV on a phantom loop, and the overlay must show it
    assert outlined, "the demo segmentation found no LV on any frame"
    assert overlay_changed, "toggling the overlay did not change the picture"
