"""DICOM TID 5200 Echocardiography Procedure Report (``reporting.echo_sr``) of a phantom loop and
of pydicom's real SonoSite loop: dciodvfy finds no error, dcmtk's dsrdump and dsr2xml read it,
every NUM reads back from pydicom with its concept, value, unit and TID 5203 modifiers, values
the validity gate withheld are absent, and the preliminary / signed flags are those of the
TID 1500 SR."""

from __future__ import annotations

import subprocess
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from orthanc_helpers import phantom_cache
from reporting_helpers import (
    SEED_ONE_STUDY,
    a4c_paths,
    dciodvfy_output,
    demo_algorithms,
    draft,
    dsrdump_text,
    load_loop,
    signature,
)
from support import need_tool

from inference.gate import GateThresholds, apply_gate
from inference.types import GateEvidence, Measurements
from reporting.echo_sr import SERIES_NUMBER_ECHO_SR, write_echo_sr, write_signed_echo_sr
from reporting.types import DEMO_LABEL_ASCII
from reporting.values import (
    KEY_HEART_RATE,
    KEY_LV_EDV,
    KEY_LV_ESV,
    KEY_LV_SV,
    KEY_LVEF_DISKS,
    KEY_LVEF_REGRESSION,
    reported_values,
    withheld_values,
)

# What each reported value must read back as: (concept, scheme, unit, method, cardiac phase,
# image view, algorithm name prefix). Written out here, not derived from the module under test.
A4C = ("399214001", "SCT")
EXPECTED = {
    KEY_LVEF_REGRESSION: ("18043-0", "LN", "%", None, None, A4C, "echo-agent R(2+1)D-18"),
    KEY_LVEF_DISKS: ("18043-0", "LN", "%", "125208", None, A4C, "echo-agent DeepLabV3"),
    KEY_LV_EDV: ("18026-5", "LN", "mL", "125208", "416190007", A4C, "echo-agent DeepLabV3"),
    KEY_LV_ESV: ("18148-7", "LN", "mL", "125208", "416430001", A4C, "echo-agent DeepLabV3"),
    KEY_LV_SV: ("90096001", "SCT", "mL", "125208", None, A4C, "echo-agent DeepLabV3"),
    KEY_HEART_RATE: ("8867-4", "LN", "/min", None, None, None, None),
}
# dciodvfy warnings these documents may carry, and why they are acceptable
EXPLAINED_WARNINGS = (
    # the source loop's Type 2 patient name, copied as it is (the SonoSite loop's "PLA" has no
    # caret); the SR invents nothing about the patient
    "Retired Person Name form",
)


@pytest.fixture(scope="module")
def loop(request, tmp_path_factory):
    (path,) = a4c_paths(phantom_cache(request.config, tmp_path_factory), 1, SEED_ONE_STUDY)
    return load_loop(path)


@dataclass
class ReadNumber:
    """One NUM as a receiver reads it: value, unit, its group's image mode and its modifiers
    by concept code as (relationship, value)."""

    concept: tuple[str, str]
    value: float
    unit: str
    image_mode: str | None
    modifiers: dict[str, tuple[str, str]] = field(default_factory=dict)
    algorithm: str | None = None
    frames: list[int] | None = None


def _code(item) -> tuple[str, str]:
    c = item.ConceptNameCodeSequence[0]
    return str(c.CodeValue), str(c.CodingSchemeDesignator)


def _read_left_ventricle(sr) -> list[ReadNumber]:
    """The NUMs of the Left Ventricle section, read with pydicom alone (TID 5202 / 5203)."""
    sections = [i for i in sr.ContentSequence if _code(i) == ("59776-5", "LN")]
    if not sections:
        return []
    (section,) = sections
    assert section.RelationshipType == "CONTAINS" and section.ValueType == "CONTAINER"
    (site,) = [i for i in section.ContentSequence if _code(i) == ("363698007", "SCT")]
    assert site.RelationshipType == "HAS CONCEPT MOD"
    assert site.ConceptCodeSequence[0].CodeValue == "87878005"
    numbers = []
    groups = [i for i in section.ContentSequence if _code(i) == ("125007", "DCM")]
    assert groups
    for group in groups:
        modes = [i for i in group.ContentSequence if _code(i) == ("399264008", "SCT")]
        assert all(m.RelationshipType == "HAS CONCEPT MOD" for m in modes)
        mode = str(modes[0].ConceptCodeSequence[0].CodeValue) if modes else None
        for item in group.ContentSequence:
            if item.ValueType != "NUM":
                continue
            assert item.RelationshipType == "CONTAINS"
            measured = item.MeasuredValueSequence[0]
            read = ReadNumber(
                _code(item),
                float(measured.NumericValue),
                str(measured.MeasurementUnitsCodeSequence[0].CodeValue),
                mode,
            )
            for child in item.ContentSequence:
                code = _code(child)[0]
                if child.ValueType == "CODE":
                    value = str(child.ConceptCodeSequence[0].CodeValue)
                    read.modifiers[code] = (str(child.RelationshipType), value)
                elif code == "111001":  # TID 4019 Algorithm Name
                    assert child.RelationshipType == "HAS CONCEPT MOD"
                    read.algorithm = str(child.TextValue)
                elif code == "121112":  # Source of Measurement
                    assert child.RelationshipType == "INFERRED FROM"
                    ref = child.ReferencedSOPSequence[0]
                    read.frames = [int(f) for f in ref.get("ReferencedFrameNumber", [])]
            numbers.append(read)
    return numbers


def _dciodvfy_clean(path: Path) -> list[str]:
    """dciodvfy's lines: no error, and only the warnings explained above (returned)."""
    lines = dciodvfy_output(path)
    assert [ln for ln in lines if ln.startswith("Error")] == []
    warnings = [ln for ln in lines if ln.startswith("Warning")]
    assert [w for w in warnings if not any(e in w for e in EXPLAINED_WARNINGS)] == []
    return warnings


def _dsr2xml(path: Path) -> ET.Element:
    exe = need_tool("dsr2xml", "dcmtk")
    result = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return ET.fromstring(result.stdout)


def _gated(m: Measurements, lv_frames: int, ef_disagreement: float | None) -> Measurements:
    evidence = GateEvidence(
        n_frames=m.n_frames,
        lv_frames=lv_frames,
        segmentation_confidence=0.95,
        area_consistency=0.97,
        ef_disagreement_points=ef_disagreement,
        heart_rate_disagreement_fraction=None,
        ood_score=None,
    )
    return apply_gate(m, evidence, GateThresholds())


def test_preliminary_echo_sr_validates_and_every_value_round_trips(loop, tmp_path):
    out = tmp_path / "echo_sr.dcm"
    algorithms = demo_algorithms(False)
    write_echo_sr(loop.header, loop.measurements, algorithms, draft(False), out)
    assert _dciodvfy_clean(out) == []

    sr = pydicom.dcmread(out)
    assert sr.SOPClassUID == pydicom.uid.ComprehensiveSRStorage
    assert (sr.CompletionFlag, sr.VerificationFlag, sr.PreliminaryFlag) == (
        "PARTIAL",
        "UNVERIFIED",
        "PRELIMINARY",
    )
    assert "VerifyingObserverSequence" not in sr
    (template,) = sr.ContentTemplateSequence
    assert (template.MappingResource, template.TemplateIdentifier) == ("DCMR", "5200")
    assert _code(sr) == ("125200", "DCM")
    assert sr.ConceptNameCodeSequence[0].CodeMeaning == "Adult Echocardiography Procedure Report"
    assert sr.ContentSequence[0].RelationshipType == "HAS OBS CONTEXT"
    assert (sr.StudyInstanceUID, sr.PatientID) == (
        loop.header.StudyInstanceUID,
        loop.header.PatientID,
    )
    assert sr.SeriesInstanceUID != loop.header.SeriesInstanceUID
    assert int(sr.SeriesNumber) == SERIES_NUMBER_ECHO_SR
    assert "DEMO" not in sr.SeriesDescription
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == loop.header.SOPInstanceUID

    values = reported_values(loop.measurements, algorithms)
    assert [v.key for v in values] == list(EXPECTED)  # the phantom loop measures every value
    numbers = _read_left_ventricle(sr)
    assert len(numbers) == len(values)
    unread = list(numbers)
    for v in values:
        concept, scheme, unit, method, phase, view, algorithm = EXPECTED[v.key]
        matches = [
            n
            for n in unread
            if n.concept == (concept, scheme)
            and n.modifiers.get("370129005", (None, None))[1] == method
        ]
        assert len(matches) == 1, v.key
        (n,) = matches
        unread.remove(n)
        assert n.value == pytest.approx(v.value, abs=1e-9) and n.unit == unit
        assert n.image_mode == ("399064001" if view else None)  # 2D mode for the LV group
        if method is not None:
            assert n.modifiers["370129005"] == ("HAS CONCEPT MOD", method)
        assert n.modifiers.get("272518008") == (
            None if phase is None else ("HAS CONCEPT MOD", phase)
        )
        if view is None:
            assert "111031" not in n.modifiers
        else:
            assert n.modifiers["111031"] == ("HAS ACQ CONTEXT", view[0])
        derivation = ("HAS CONCEPT MOD", "373098007") if v.n_beats > 1 else None
        assert n.modifiers.get("121401") == derivation  # Derivation = Mean over beats
        assert (n.algorithm or "").startswith(algorithm or "") and bool(n.algorithm) == bool(
            algorithm
        )
        assert n.frames == [f + 1 for f in v.source_frames]
    assert unread == []

    # against the measurement step and the phantom's truth, not only against reported_values
    m = loop.measurements
    by_key = {
        k: n
        for k in EXPECTED
        for n in numbers
        if n.concept[0] == EXPECTED[k][0]
        and n.modifiers.get("370129005", (None, None))[1] == EXPECTED[k][3]
    }
    assert by_key[KEY_LVEF_REGRESSION].value == pytest.approx(m.ef_percent, abs=0.05)
    assert by_key[KEY_LV_EDV].value == pytest.approx(loop.truth["edv_ml"], rel=0.05)
    assert by_key[KEY_LVEF_DISKS].value == pytest.approx(loop.truth["ef_percent"], abs=3)
    beats = [b for b in m.beats if b.edv_ml is not None]
    assert by_key[KEY_LV_EDV].frames == sorted(b.ed_frame + 1 for b in beats)
    assert by_key[KEY_LV_ESV].frames == sorted(b.es_frame + 1 for b in beats)

    # dcmtk reads it: dsrdump prints every value, dsr2xml writes the same tree as XML
    dump = dsrdump_text(out)
    assert "Adult Echocardiography Procedure Report" in dump
    for v in values:
        assert f'"{v.value:g}"' in dump or f'"{v.value}"' in dump, v.key
    xml_numbers = [
        (num.findtext("concept/value"), float(num.findtext("value")), num.findtext("unit/value"))
        for num in _dsr2xml(out).iter("num")
    ]
    assert sorted(xml_numbers) == sorted(
        (EXPECTED[v.key][0], v.value, EXPECTED[v.key][2]) for v in values
    )
    # highdicom reads its content tree back, with the template identifier
    report = hd.sr.ComprehensiveSR.from_dataset(sr)
    assert report.content[0].template_id == "5200"


def test_signed_echo_sr_is_final_and_names_its_predecessor(loop, tmp_path):
    algorithms = demo_algorithms()
    preliminary = write_echo_sr(
        loop.header, loop.measurements, algorithms, draft(), tmp_path / "p.dcm"
    )
    out = tmp_path / "signed.dcm"
    signed_report = draft().signed(signature())
    write_signed_echo_sr(
        preliminary, loop.header, loop.measurements, algorithms, signed_report, out
    )
    assert _dciodvfy_clean(out) == []
    dsrdump_text(out)
    _dsr2xml(out)
    sr = pydicom.dcmread(out)
    assert (sr.CompletionFlag, sr.VerificationFlag, sr.PreliminaryFlag) == (
        "COMPLETE",
        "VERIFIED",
        "FINAL",
    )
    observer = sr.VerifyingObserverSequence[0]
    assert str(observer.VerifyingObserverName) == "Okafor^Ada^^Dr"
    assert observer.VerifyingOrganization == "Echo Lab A"
    assert observer.VerificationDateTime.startswith("20240816093000")
    assert sr.SeriesInstanceUID == preliminary.SeriesInstanceUID
    assert sr.SOPInstanceUID != preliminary.SOPInstanceUID
    assert int(sr.InstanceNumber) == int(preliminary.InstanceNumber) + 1
    predecessor = sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert predecessor.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == (
        preliminary.SOPInstanceUID
    )
    # signing changes the flags, not the content
    assert [(n.concept, n.value) for n in _read_left_ventricle(sr)] == [
        (n.concept, n.value) for n in _read_left_ventricle(preliminary)
    ]
    # demo models: said in the series description, a Comment and each algorithm name
    assert "[DEMO]" in sr.SeriesDescription
    comments = [str(i.TextValue) for i in sr.ContentSequence if _code(i) == ("121106", "DCM")]
    assert comments == [DEMO_LABEL_ASCII]
    assert all(
        DEMO_LABEL_ASCII in (n.algorithm or DEMO_LABEL_ASCII) for n in _read_left_ventricle(sr)
    )
    with pytest.raises(ValueError, match="signed"):
        write_signed_echo_sr(preliminary, loop.header, loop.measurements, algorithms, draft(), out)


def test_values_withheld_by_the_gate_are_absent(loop, tmp_path):
    m = loop.measurements
    # the two EF methods disagree: both EFs withheld, volumes and heart rate reported
    ef_only = _gated(m, m.n_frames, ef_disagreement=22.0)
    assert {w.key for w in withheld_values(ef_only)} == {KEY_LVEF_REGRESSION, KEY_LVEF_DISKS}
    out = tmp_path / "ef_withheld.dcm"
    write_echo_sr(loop.header, ef_only, demo_algorithms(), draft(), out)
    assert _dciodvfy_clean(out) == []
    dump = dsrdump_text(out)
    concepts = [n.concept[0] for n in _read_left_ventricle(pydicom.dcmread(out))]
    assert "18043-0" not in concepts
    assert sorted(concepts) == sorted(["18026-5", "18148-7", "90096001", "8867-4"])
    for number in (m.ef_percent, m.ef_disks_percent):  # dsrdump quotes NUM values
        assert f'"{number:.1f}"' not in dump
    assert f'"{m.edv_ml:.1f}"' in dump  # while a reported value is printed
    # the LV found on 12 frames: every LV value and the beat heart rate withheld, no section
    gated = _gated(m, 12, ef_disagreement=None)
    assert reported_values(gated, demo_algorithms()) == []
    out = tmp_path / "all_withheld.dcm"
    write_echo_sr(loop.header, gated, demo_algorithms(), draft(), out)
    assert _dciodvfy_clean(out) == []
    sr = pydicom.dcmread(out)
    assert _read_left_ventricle(sr) == []
    assert not [i for i in sr.ContentSequence if i.ValueType == "NUM"]
    assert "Adult Echocardiography Procedure Report" in dsrdump_text(out)


def test_real_sonosite_loop_through_the_analysis_reports_only_its_ef(tmp_path):
    """pydicom's real SonoSite A4C loop through the node's analysis with the shipped demo
    networks: the LV is found and the regression EF published; the method of disks (no whole
    beat in 30 frames) and the volumes (calibration region outside the rescaled image) are
    withheld, and the echo SR holds the one LVEF number and no volume, yet is a valid document
    dcmtk reads."""
    from pydicom import examples

    from inference.analyze import analyse
    from inference.model_cache import load_models
    from pacs_agent.analysis import model_settings
    from pacs_agent.config import Config
    from pacs_agent.outputs import algorithms_for

    path = Path(examples.get_path("ybr_color"))
    with tempfile.TemporaryDirectory() as home:
        config = Config(home=home)
        models = load_models(model_settings(config))
        result = analyse(path, models, all_clip_stride=config.models.all_clip_stride)
    measurements = result.analysis.measurements
    algorithms = algorithms_for(models)
    withheld = {w.key for w in withheld_values(measurements)}
    assert {KEY_LVEF_DISKS, KEY_LV_EDV, KEY_LV_ESV, KEY_LV_SV} <= withheld
    assert KEY_LVEF_REGRESSION not in withheld and measurements.ef_percent is not None
    source = pydicom.dcmread(path, stop_before_pixels=True)
    out = tmp_path / "echo_sr.dcm"
    write_echo_sr(source, measurements, algorithms, draft(models.demo), out)
    _dciodvfy_clean(out)  # the loop's own patient name draws the one explained warning
    dsrdump_text(out)
    _dsr2xml(out)
    sr = pydicom.dcmread(out)
    volume_concepts = {EXPECTED[k][0] for k in (KEY_LV_EDV, KEY_LV_ESV, KEY_LV_SV)}
    numbers = _read_left_ventricle(sr)
    assert not [n for n in numbers if n.concept[0] in volume_concepts]
    (lvef,) = [n for n in numbers if n.concept[0] == EXPECTED[KEY_LVEF_REGRESSION][0]]
    assert lvef.value == pytest.approx(measurements.ef_percent, abs=0.05)
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    assert str(sr.PatientName) == str(source.PatientName)
