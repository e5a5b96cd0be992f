"""Height and weight end to end (issue #19): a phantom A4C loop whose header carries Patient's
Size and Weight goes through the job pipeline (a truth oracle plays the networks); the analysis
row keeps them, the preliminary report and the PDF list the BSA and the indexed volumes, and the
review page's chat judges LV size on the indexed range. The same loop without them (absent,
or zero and absurd as real headers have them) stores NULL, and every surface says the volumes
are not indexed and why."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select
from web_helpers import Node, a4c_loops, login, make_node, oracle_models, seed_study

from llm.chat_service import composed_backend
from pacs_agent.db.models import Analysis, Artifact, ReportVersion
from tests.reporting_helpers import pdf_text
from web.app import create_app

pytestmark = pytest.mark.slow

ENLARGED = "Is the left ventricle enlarged?"


def _with_header(source: Path, target: Path, **values: str) -> Path:
    """A copy of the loop with these header values (absent ones removed): Patient's Sex "F"."""
    ds = pydicom.dcmread(source)
    ds.PatientSex = "F"
    for keyword in ("PatientSize", "PatientWeight"):
        if keyword in ds:
            del ds[keyword]
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    ds.save_as(target)
    return target


@pytest.fixture(scope="module")
def nodes(tmp_path_factory, phantom_studies) -> Iterator[dict[str, tuple[Node, int]]]:
    loop = a4c_loops(phantom_studies)[0]
    out = {}
    headers = {
        "with": {"PatientSize": "1.65", "PatientWeight": "60"},
        "without": {},
        "absurd": {"PatientSize": "165", "PatientWeight": "0"},  # cm typed as m, a 0 default
    }
    for name, values in headers.items():
        tmp = tmp_path_factory.mktemp(f"body_{name}")
        node = make_node(tmp / "home", f"sqlite:///{tmp / 'echo-agent.db'}")
        copy = _with_header(loop, tmp / "loop.dcm", **values)
        out[name] = (node, seed_study(node, copy, models=oracle_models(loop)))
    yield out
    for node, _ in out.values():
        node.engine.dispose()


def _stored(node: Node) -> tuple[Analysis, str, bytes]:
    with node.session_factory() as s:
        analysis = s.scalars(select(Analysis)).one()
        s.expunge(analysis)
        report = s.scalars(select(ReportVersion)).one().structured_text
        pdf = s.scalars(select(Artifact).where(Artifact.kind == "pdf")).one()
    return analysis, report, (node.config.home_path / pdf.file_path).read_bytes()


def _ask(node: Node, study_id: int, question: str) -> str:
    client = create_app(node.engine, node.config, chat_backend=composed_backend()).test_client()
    token = login(client, "sono")
    body = client.post(f"/api/studies/{study_id}/chat", json={"question": question},
                       headers={"X-CSRF-Token": token}).get_data(as_text=True)  # fmt: skip
    done = [b for b in body.split("\n\n") if b.startswith("event: done")]
    assert done, body
    history = client.get(f"/api/studies/{study_id}/chat").get_json()["messages"]
    assert json.loads(done[0].split("data: ", 1)[1])["complete"] is True
    return str(history[-1]["content"])


def test_height_and_weight_in_the_header_index_every_surface(nodes) -> None:
    node, study_id = nodes["with"]
    analysis, report, pdf = _stored(node)
    assert (analysis.patient_height_cm, analysis.patient_weight_kg) == (165.0, 60.0)
    edv = analysis.measurements["edv_ml"]
    bsa = (165.0 * 60.0 / 3600) ** 0.5  # Mosteller, 1.66 m2
    index_ml_per_m2 = round(round(edv, 1) / bsa, 1)
    index = f"{index_ml_per_m2:.1f} mL/m2"
    size = ("enlarged" if index_ml_per_m2 > 61 else "smaller than usual" if index_ml_per_m2 < 29
            else "normal in size")  # women: 29-61 mL/m2  # fmt: skip
    assert "Body surface area: 1.66 m2 (Mosteller, from height 165 cm and weight 60 kg" in report
    assert f"LV end-diastolic volume index: {index}" in report
    assert "LV end-systolic volume index:" in report and "8-24 mL/m2 (women)" in report
    text = pdf_text(pdf)
    assert "Body surface area" in text and "1.66 m2" in text
    assert "LV end-diastolic volume index" in text and index in text
    assert "29-61 mL/m2 (women)" in text
    answer = _ask(node, study_id, ENLARGED)
    assert f"The left ventricle is {size}: its end-diastolic volume index of {index}" in answer
    assert "29-61 mL/m2 for women" in answer and "1.66 m2" in answer


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("without", "height not in the DICOM header; weight not in the DICOM header"),
        ("absurd", "height 165 m is outside 0.5-2.5 m; weight 0 kg is outside 2-400 kg"),
    ],
)
def test_without_plausible_height_and_weight_nothing_is_indexed(nodes, name, reason) -> None:
    node, study_id = nodes[name]
    analysis, report, pdf = _stored(node)
    assert (analysis.patient_height_cm, analysis.patient_weight_kg) == (None, None)
    assert f"LV volumes not indexed to body surface area: {reason}." in report
    assert "mL/m2" not in report and "Body surface area:" not in report
    text = pdf_text(pdf)
    assert "not indexed" in text and "mL/m2" not in text
    answer = _ask(node, study_id, ENLARGED)
    assert "mL/m2" not in answer and "46-106 mL for women" in answer
