"""A value the node does not stand behind is shown nowhere as a number (issue #14).

The measurements of a phantom loop (its true masks, ``inference.measure``) go through the real
validity gate (``inference.gate.apply_gate``) with evidence that fails a check; every surface
then states the withheld values as "not measurable" with the gate's reason and "manual
measurement required", never their number, and shows the loop's quality score: the values
list, the report text, the DICOM SR (dciodvfy, dsrdump), the FHIR bundle (fhir.resources and
the FHIR R4 JSON schema), the PDF, the grounding guard and the prompts, the web worklist, study
page and chat. The last test runs ``echo-agent analyze`` on pydicom's real SonoSite loop, where
the demo networks find no LV.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess

import numpy as np
import pydicom
import pytest
from orthanc_helpers import phantom_cache
from reporting_helpers import (
    NODE_SYSTEM,
    SEED_ONE_STUDY,
    a4c_paths,
    dciodvfy_errors,
    demo_algorithms,
    draft,
    dsrdump_text,
    fhir_schema_errors,
    load_loop,
    pdf_text,
)
from support import need_tool

from inference.gate import GateThresholds, apply_gate
from inference.measure import measure_cine
from inference.types import GateEvidence, Measurements, Validity
from llm.chat import StudyContext, safe_answer
from llm.drafting import NARRATIVE_OPENING_WITHHELD, draft_messages, measurement_lines
from llm.grounding import check_grounding, lv_grade, measured_facts
from reporting import codes
from reporting.fhir import build_fhir_bundle, bundle_dict, bundle_json
from reporting.interpretation import lv_systolic_function
from reporting.pdf import build_report_pdf
from reporting.report_text import structured_text
from reporting.sr import write_sr
from reporting.values import (
    KEY_HEART_RATE,
    KEY_LV_EDV,
    KEY_LV_ESV,
    KEY_LV_SV,
    KEY_LVEF_DISKS,
    KEY_LVEF_REGRESSION,
    loop_quality,
    primary_ef,
    reported_values,
    shown_flags,
    withheld_ef,
    withheld_values,
)

ALL_KEYS = [KEY_LVEF_REGRESSION, KEY_LVEF_DISKS, KEY_LV_EDV, KEY_LV_ESV, KEY_LV_SV,
            KEY_HEART_RATE]  # fmt: skip
LV_FRAMES_FOUND = 12
# grade and severity words a withheld EF must never carry
_GRADES = re.compile(r"\b(?:normal|abnormal|mild\w*|moderate\w*|severe\w*|reduced|dysfunction|"
                     r"hyperdynamic|preserved)\b", re.I)  # fmt: skip


@pytest.fixture(scope="module")
def loop(request, tmp_path_factory):
    (path,) = a4c_paths(phantom_cache(request.config, tmp_path_factory), 1, SEED_ONE_STUDY)
    return load_loop(path)


def _evidence(m: Measurements, lv_frames: int, ef_disagreement: float | None = None):
    return GateEvidence(
        n_frames=m.n_frames,
        lv_frames=lv_frames,
        segmentation_confidence=0.95,
        area_consistency=0.97,
        ef_disagreement_points=ef_disagreement,
        heart_rate_disagreement_fraction=None,
        ood_score=None,
    )


@pytest.fixture(scope="module")
def gated(loop) -> Measurements:
    """The LV found on 12 frames of the loop: coverage fails, every LV value and the heart
    rate (from beats) are withheld."""
    m = loop.measurements
    return apply_gate(m, _evidence(m, LV_FRAMES_FOUND), GateThresholds())


@pytest.fixture(scope="module")
def reason(loop) -> str:
    n = loop.measurements.n_frames
    return f"LV not identified on {n - LV_FRAMES_FOUND} of {n} frames"


@pytest.fixture(scope="module")
def ef_only(loop) -> Measurements:
    """The two EF methods disagree: both EFs withheld, volumes and heart rate reported."""
    m = loop.measurements
    return apply_gate(m, _evidence(m, m.n_frames, ef_disagreement=22.0), GateThresholds())


def _numbers_of(m: Measurements) -> list[str]:
    """How the original (ungated) values would have been printed: none may appear."""
    return [f"{v:.1f}" for v in (m.ef_percent, m.ef_disks_percent, m.edv_ml, m.esv_ml)
            if v is not None]  # fmt: skip


def _flat(text: str) -> str:
    return " ".join(text.split())


# --- the values lists ----------------------------------------------------------------------


def test_withheld_values_take_the_place_of_the_numbers(loop, gated, reason, ef_only) -> None:
    assert gated.ef_percent is None
    assert gated.validity["ef_percent"].state is Validity.NOT_MEASURABLE
    assert reported_values(gated, demo_algorithms()) == []
    withheld = withheld_values(gated)
    assert [w.key for w in withheld] == ALL_KEYS
    by_key = {w.key: w for w in withheld}
    assert by_key[KEY_LVEF_REGRESSION].reason == reason
    assert by_key[KEY_LV_SV].reason == reason  # withheld because EDV and ESV are
    assert by_key[KEY_LVEF_REGRESSION].text == "not measurable"
    assert by_key[KEY_LVEF_REGRESSION].statement == (
        f"LVEF (AI regression) not measurable: {reason}; manual measurement required."
    )
    assert by_key[KEY_LVEF_DISKS].method == codes.METHOD_OF_DISKS_SINGLE_PLANE
    quality = loop_quality(gated)
    expected = 0.5 * (LV_FRAMES_FOUND / loop.measurements.n_frames) / 0.9
    assert quality is not None and quality.score == pytest.approx(expected, abs=0.001)
    assert quality.text == f"{expected:.2f}" and quality.score < 0.5

    # only the EFs withheld: the volumes stay, each value in exactly one list
    reported = [v.key for v in reported_values(ef_only, demo_algorithms())]
    assert reported == [KEY_LV_EDV, KEY_LV_ESV, KEY_LV_SV, KEY_HEART_RATE]
    assert [w.key for w in withheld_values(ef_only)] == [KEY_LVEF_REGRESSION, KEY_LVEF_DISKS]
    assert "disagree by more than 15 points" in withheld_values(ef_only)[0].reason

    # before the gate: everything measured, nothing withheld, no score
    assert withheld_values(loop.measurements) == [] and loop_quality(loop.measurements) is None
    # a value the gate did not rule on but that is null (no calibration) is withheld too
    no_spacing = dataclasses.replace(loop.measurements, edv_ml=None, esv_ml=None)
    assert [w.key for w in withheld_values(no_spacing)] == [KEY_LV_EDV, KEY_LV_ESV, KEY_LV_SV]
    # a number that contradicts its own validity is never reported
    stale = dataclasses.replace(gated, ef_percent=loop.measurements.ef_percent)
    assert KEY_LVEF_REGRESSION not in [v.key for v in reported_values(stale, demo_algorithms())]


def test_report_text_states_each_withheld_value_and_grades_nothing(loop, gated, reason) -> None:
    text = structured_text(gated, demo_algorithms(), "M")
    lines = text.splitlines()
    assert lines[0] == (
        f"LVEF not measurable: {reason}; manual measurement required. "
        "LV systolic function not graded."
    )
    quality = loop_quality(gated)
    assert lines[1] == f"Image quality score {quality.text} (0-1; below 0.50 values are withheld)."
    for label in ("LVEF (method of disks)", "LV end-diastolic volume", "Heart rate"):
        assert f"{label} not measurable: " in text
    assert not _GRADES.search(text.replace("not graded", ""))
    for number in _numbers_of(loop.measurements):
        assert number not in text
    withheld = withheld_values(gated)
    systolic = lv_systolic_function(primary_ef([]), "M", withheld_ef(withheld))
    assert systolic.code is None and systolic.severity is None
    # the structured text is what replaces a failed narrative: it passes the guard
    assert check_grounding(text, gated, "M").passed, check_grounding(text, gated, "M").reasons


def test_no_quality_flag_quotes_a_withheld_number(loop) -> None:
    # the regression network 22 points above the disks EF: measure flags both numbers, the gate
    # withholds both EFs and says why without them
    disks = loop.measurements.ef_disks_percent
    m = measure_cine(loop.cine, loop.masks, lambda starts: np.full(len(starts), disks + 22.0))
    assert "ef_methods_disagree" in m.flag_codes
    quoted = f"({m.ef_percent:.0f} %)"
    evidence = _evidence(m, m.n_frames, ef_disagreement=abs(m.ef_percent - disks))
    gated = apply_gate(m, evidence, GateThresholds())
    assert [w.key for w in withheld_values(gated)] == [KEY_LVEF_REGRESSION, KEY_LVEF_DISKS]
    # the gate drops the stored flag that quotes them; its own flag says why without them
    assert not any(quoted in f.message for f in gated.flags)
    assert "ef_methods_disagree" not in [f.code for f in shown_flags(gated)]
    assert "ef_methods_disagree_beyond_limit" in [f.code for f in shown_flags(gated)]
    text = structured_text(gated, demo_algorithms(), "M")
    assert quoted not in text and "disagree by more than 15 points" in text
    assert quoted not in "\n".join(measurement_lines(gated, "M"))
    assert check_grounding(text, gated, "M").passed
    pdf = _flat(pdf_text(build_report_pdf(loop.source, gated, demo_algorithms(), draft())))
    assert quoted not in pdf and "Quality flags" in pdf
    # with the EFs reported, the flag and its numbers stay
    assert "ef_methods_disagree" in [f.code for f in shown_flags(m)]


# --- DICOM SR ---------------------------------------------------------------------------------


def _walk(items):
    for item in items:
        yield item
        yield from _walk(item.get("ContentSequence", []))


def _dsrdump_long(path) -> str:
    """dsrdump with long text values printed whole (its default cuts them at 30 characters)."""
    exe = need_tool("dsrdump", "dcmtk")
    result = subprocess.run([exe, "+Pl", str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_sr_writes_no_number_for_a_withheld_value(loop, gated, reason, tmp_path) -> None:
    out = tmp_path / "sr.dcm"
    write_sr(loop.header, gated, demo_algorithms(), draft(), out)
    assert dciodvfy_errors(out) == []
    dsrdump_text(out)  # reads, no error
    dump = _dsrdump_long(out)
    assert "Measurement failure" in dump and reason in dump
    for number in _numbers_of(loop.measurements):
        assert f'"{number}"' not in dump
    sr = pydicom.dcmread(out)
    items = list(_walk(sr.ContentSequence))
    numbers = {i.ConceptNameCodeSequence[0].CodeValue: i for i in items if i.ValueType == "NUM"}
    assert set(numbers) == {codes.LOOP_QUALITY_SCORE.value}  # no LVEF, volume or rate NUM
    score = numbers[codes.LOOP_QUALITY_SCORE.value].MeasuredValueSequence[0]
    assert float(score.NumericValue) == pytest.approx(gated.quality_score, abs=0.001)
    assert score.MeasurementUnitsCodeSequence[0].CodeValue == "1"
    assert (numbers[codes.LOOP_QUALITY_SCORE.value].ConceptNameCodeSequence[0]
            .CodingSchemeDesignator) == codes.PRIVATE_SCHEME  # fmt: skip
    failures = [
        i
        for i in items
        if i.ValueType == "CODE"
        and i.ConceptCodeSequence[0].CodeValue == codes.MEASUREMENT_FAILURE.value
    ]
    assert sorted(i.ConceptNameCodeSequence[0].CodeValue for i in failures) == sorted(
        w.concept.value for w in withheld_values(gated)
    )
    lvef = [i for i in failures if i.ConceptNameCodeSequence[0].CodeValue == codes.LVEF.value]
    texts = [c.TextValue for i in lvef for c in i.ContentSequence if c.ValueType == "TEXT"]
    assert texts == [
        f"LVEF (AI regression) not measurable: {reason}; manual measurement required.",
        f"LVEF (method of disks) not measurable: {reason}; manual measurement required.",
    ]


# --- FHIR -------------------------------------------------------------------------------------


def test_fhir_observation_has_no_value_but_a_data_absent_reason(loop, gated, reason,
                                                                tmp_path) -> None:  # fmt: skip
    bundle = build_fhir_bundle(loop.source, gated, demo_algorithms(), draft(),
                               node_system=NODE_SYSTEM)  # fmt: skip
    text = bundle_json(bundle)
    resources = [e["resource"] for e in bundle_dict(bundle)["entry"]]
    observations = [r for r in resources if r["resourceType"] == "Observation"]
    (report,) = [r for r in resources if r["resourceType"] == "DiagnosticReport"]
    uid = loop.header.SOPInstanceUID
    assert [o["identifier"][0]["value"] for o in observations] == [
        f"OBS-{uid}-{key}" for key in ALL_KEYS]  # fmt: skip
    for obs in observations:
        assert not any(key.startswith("value") for key in obs), obs
        assert "interpretation" not in obs and "referenceRange" not in obs
        absent = obs["dataAbsentReason"]
        assert absent["coding"] == [{
            "system": "http://terminology.hl7.org/CodeSystem/data-absent-reason",
            "code": "error", "display": "Error"}]  # fmt: skip
        assert "manual measurement required" in absent["text"]
    lvef = observations[0]
    assert lvef["dataAbsentReason"]["text"] == f"{reason}; manual measurement required"
    (component,) = lvef["component"]
    assert component["code"]["coding"][0]["code"] == codes.LOOP_QUALITY_SCORE.value
    assert component["valueQuantity"]["value"] == pytest.approx(gated.quality_score, abs=0.001)
    assert "conclusionCode" not in report
    assert f"LVEF (AI regression) not measurable: {reason}" in report["conclusion"]
    for number in _numbers_of(loop.measurements):
        assert number not in text
    path = tmp_path / "bundle.json"
    path.write_text(text)
    assert fhir_schema_errors(path) == {str(path): []}


# --- PDF --------------------------------------------------------------------------------------


def test_pdf_rows_say_not_measurable_with_the_reason(loop, gated, reason) -> None:
    pdf = build_report_pdf(loop.source, gated, demo_algorithms(), draft(),
                           frames_rgb=loop.cine.frames, masks=loop.masks)  # fmt: skip
    text = _flat(pdf_text(pdf))
    assert text.count(f"not measurable — {reason}; manual measurement required") == len(ALL_KEYS)
    assert f"LVEF not measurable: {reason}; manual measurement required." in text
    assert f"Image quality score {loop_quality(gated).text}" in text
    for number in _numbers_of(loop.measurements):
        assert number not in text


# --- the grounding guard and the prompts --------------------------------------------------------


def test_the_guard_fails_any_number_or_grade_for_a_withheld_value(loop, gated, reason) -> None:
    assert measured_facts(gated) == ()
    for text in ("The LVEF is 46 %.", "There is mild LV systolic dysfunction.",
                 f"The LVEF is {loop.measurements.ef_percent:.1f} %.",
                 "LV systolic function is normal.", "The heart rate is 72 bpm.",
                 f"The LV end-diastolic volume is {loop.measurements.edv_ml:.1f} mL."):  # fmt: skip
        result = check_grounding(text, gated, "M")
        assert not result.passed, text
        assert any("not measurable" in r for r in result.reasons), result.reasons
    score = loop_quality(gated).text
    quoted = (f"The left ventricular ejection fraction is not measurable ({reason}); manual "
              f"measurement required. The image quality score is {score}.")  # fmt: skip
    assert check_grounding(quoted, gated, "M").passed, check_grounding(quoted, gated, "M").reasons
    assert not check_grounding("The image quality score is 0.93.", gated, "M").passed

    lines = measurement_lines(gated, "M")
    assert f"- LVEF (AI regression): not measurable ({reason}); manual measurement required" in (
        lines
    )
    assert lines[-2] == (f"- LV systolic function (ASE/EACVI 2015): not graded: LVEF not "
                         f"measurable ({reason}); state no grade")  # fmt: skip
    assert lv_grade(gated, "M").withheld is not None
    assert draft_messages(gated, "M")[-1].content == NARRATIVE_OPENING_WITHHELD
    prompt = "\n".join(m.content for m in draft_messages(gated, "M"))
    for number in _numbers_of(loop.measurements):
        assert number not in prompt
    answer = safe_answer(StudyContext(gated, "M"))
    assert f"LVEF (AI regression) not measurable: {reason}" in answer
    assert check_grounding(answer, gated, "M").passed


def test_the_guard_still_checks_the_measured_values_beside_withheld_ones(ef_only) -> None:
    edv = f"{ef_only.edv_ml:.1f} mL"
    assert check_grounding(f"The LV end-diastolic volume is {edv}.", ef_only, "M").passed
    assert not check_grounding("The LVEF is 55.0 %.", ef_only, "M").passed
    assert not check_grounding("Normal LV systolic function.", ef_only, "M").passed
    reason = withheld_values(ef_only)[0].reason  # names "15 points"
    assert check_grounding(f"LVEF not measurable: {reason}.", ef_only, "M").passed


# --- web: worklist, study page, chat -----------------------------------------------------------


@pytest.fixture
def web_study(loop, gated, tmp_path):
    from web_helpers import login, make_node, seed_study

    from pacs_agent.db.models import Analysis, Job
    from web.app import create_app

    node = make_node(tmp_path / "home", f"sqlite:///{tmp_path / 'echo-agent.db'}")
    study_id = seed_study(node, loop.path, accession="ACC-WITHHELD")
    document = gated.to_json()
    # a stale stored EF column must not leak either: the validity rules
    with node.session_factory.begin() as session:
        job = session.query(Job).filter_by(study_fk=study_id).one()
        session.add(Analysis(job_fk=job.id, instance_fk=job.instance_fk, model_preset="demo",
                             demo_models=True, ef_percent=loop.measurements.ef_percent,
                             measurements=document))  # fmt: skip
    client = create_app(node.engine, node.config).test_client()
    token = login(client, "cardio")
    yield client, study_id, token
    node.engine.dispose()


def test_web_shows_not_measurable_with_the_reason_and_the_quality(
    web_study, loop, gated, reason
) -> None:
    client, study_id, token = web_study
    quality = f"Image quality score {loop_quality(gated).text}"
    (row,) = client.get("/api/studies?q=acc-withheld").get_json()["studies"]
    assert row["ef_percent"] is None and row["ef_disks_percent"] is None
    assert (row["ef_text"], row["ef_withheld"]) == ("not measurable", True)
    assert row["ef_reason"] == f"{reason}; manual measurement required"
    assert row["quality_text"] == quality
    assert row["quality_score"] == pytest.approx(gated.quality_score)

    detail = client.get(f"/api/studies/{study_id}").get_json()["loop"]
    assert detail["table"] == []
    assert [w["key"] for w in detail["withheld"]] == ALL_KEYS
    assert detail["comparison"]["ef_regression_percent"] is None
    page = client.get(f"/studies/{study_id}").get_data(as_text=True)
    assert '<span id="ef-value">not measurable</span>' in page
    assert f"({reason}; manual measurement required)" in page
    assert page.count(f'<span class="reason">{reason}</span>; manual measurement required') == 6
    assert quality in page
    for number in _numbers_of(loop.measurements):
        assert number not in page
    script = client.get("/static/worklist.js").get_data(as_text=True)
    assert "study.ef_withheld" in script and "study.ef_reason" in script

    answer = client.post(f"/api/studies/{study_id}/chat", json={"question": "What is the EF?"},
                         headers={"X-CSRF-Token": token}).get_data(as_text=True)  # fmt: skip
    chunks = "".join(json.loads(line[6:]).get("text", "") for line in answer.splitlines()
                     if line.startswith("data: "))  # fmt: skip
    assert f"LVEF (AI regression) not measurable: {reason}" in chunks
    for number in _numbers_of(loop.measurements):
        assert number not in chunks


# --- the real SonoSite loop through the command line ---------------------------------------


@pytest.mark.slow
def test_analyze_on_the_real_sonosite_loop_publishes_its_ef_and_withholds_the_rest(
    echo_agent_exe, tmp_path
) -> None:
    """The shipped demo models find the LV on the real loop and the gate publishes the
    regression EF; what the loop cannot support is withheld with its own reason on every
    output: the method of disks (30 frames hold no end-diastole followed by end-systole) and the
    volumes (the header's calibration region lies outside the rescaled image)."""
    from pydicom import examples

    out = tmp_path / "out"
    result = subprocess.run(
        [echo_agent_exe, "analyze", str(examples.get_path("ybr_color")), "--out", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    ef = document["ef_percent"]
    assert document["validity"]["ef_percent"]["state"] == "measured" and 20.0 < ef < 80.0
    assert document["ef_disks_percent"] is None and document["edv_ml"] is None
    disks_reason = document["validity"]["ef_disks_percent"]["reason"]
    assert disks_reason.startswith("no cardiac cycle")
    volume_reason = document["validity"]["edv_ml"]["reason"]
    assert volume_reason.startswith("The calibration region") and "outside" in volume_reason

    assert dciodvfy_errors(out / "sr.dcm") == []
    dsrdump_text(out / "sr.dcm")
    dump = _dsrdump_long(out / "sr.dcm")
    assert "not measurable" in dump and disks_reason in dump
    sr = pydicom.dcmread(out / "sr.dcm")
    lvef_numbers = [i for i in _walk(sr.ContentSequence) if i.ValueType == "NUM"
                    and i.ConceptNameCodeSequence[0].CodeValue == codes.LVEF.value]  # fmt: skip
    assert [float(i.MeasuredValueSequence[0].NumericValue) for i in lvef_numbers] == [
        pytest.approx(ef, abs=0.05)
    ]

    bundle = json.loads((out / "fhir_bundle.json").read_text())
    observations = [e["resource"] for e in bundle["entry"]
                    if e["resource"]["resourceType"] == "Observation"]  # fmt: skip
    lvef = [o for o in observations if o["code"]["coding"][0]["code"] == codes.LVEF.value]
    assert sorted("valueQuantity" in o for o in lvef) == [False, True]
    (published,) = [o for o in lvef if "valueQuantity" in o]
    assert published["valueQuantity"]["value"] == pytest.approx(ef, abs=0.05)
    (edv,) = [o for o in observations if o["code"]["coding"][0]["code"] == codes.LV_EDV.value]
    assert "valueQuantity" not in edv and "dataAbsentReason" in edv

    text = _flat(pdf_text((out / "report.pdf").read_bytes()))
    assert f"LVEF (method of disks) not measurable: {disks_reason}; manual measurement" in text
    assert "LV end-diastolic volume not measurable: The calibration region" in text
    assert not re.search(r"\d+\.\d mL", text)
