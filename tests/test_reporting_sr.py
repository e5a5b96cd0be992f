"""DICOM SR (TID 1500) of a phantom loop: valid by dciodvfy, read by dsrdump and highdicom,
the codes, units, values and frame references, preliminary vs signed, nulls left out, and
every code in ``reporting.codes`` only."""

from __future__ import annotations

import dataclasses
import re

import highdicom as hd
import pydicom
import pytest
from orthanc_helpers import REPO_ROOT, phantom_cache
from reporting_helpers import (
    SEED_ONE_STUDY,
    a4c_paths,
    dciodvfy_errors,
    dcmdump_reads,
    demo_algorithms,
    draft,
    dsrdump_text,
    load_loop,
    signature,
)

from reporting import codes
from reporting.sr import write_signed_sr, write_sr
from reporting.types import DEMO_LABEL_ASCII
from reporting.values import reported_values


@pytest.fixture(scope="module")
def loop(request, tmp_path_factory):
    (path,) = a4c_paths(phantom_cache(request.config, tmp_path_factory), 1, SEED_ONE_STUDY)
    return load_loop(path)


def _walk(items):
    for item in items:
        yield item
        yield from _walk(item.get("ContentSequence", []))


def _numbers(sr) -> list:
    return [i for i in _walk(sr.ContentSequence) if i.ValueType == "NUM"]


def _children(item, concept_value: str) -> list:
    return [
        c
        for c in item.get("ContentSequence", [])
        if c.ConceptNameCodeSequence[0].CodeValue == concept_value
    ]


def _texts(sr) -> list[str]:
    return [str(i.TextValue) for i in _walk(sr.ContentSequence) if i.ValueType == "TEXT"]


def test_preliminary_sr_content_codes_units_and_frames(loop, tmp_path):
    out = tmp_path / "sr.dcm"
    sr = write_sr(loop.header, loop.measurements, demo_algorithms(), draft(), out)
    assert dciodvfy_errors(out) == []
    dcmdump_reads(out)
    dump = dsrdump_text(out)
    assert "Left Ventricular Ejection Fraction by US" in dump

    sr = pydicom.dcmread(out)
    assert sr.SOPClassUID == pydicom.uid.ComprehensiveSRStorage
    assert (sr.CompletionFlag, sr.VerificationFlag, sr.PreliminaryFlag) == (
        "PARTIAL",
        "UNVERIFIED",
        "PRELIMINARY",
    )
    assert "VerifyingObserverSequence" not in sr
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert sr.StudyInstanceUID == loop.header.StudyInstanceUID
    assert sr.SeriesInstanceUID != loop.header.SeriesInstanceUID
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == loop.header.SOPInstanceUID

    m = loop.measurements
    by_code: dict[str, list] = {}
    for item in _numbers(sr):
        by_code.setdefault(item.ConceptNameCodeSequence[0].CodeValue, []).append(item)
    assert set(by_code) == {"18043-0", "18026-5", "18148-7", "8867-4", "90096001"}
    units = {
        code: {i.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue for i in v}
        for code, v in by_code.items()
    }
    assert units == {
        "18043-0": {"%"},
        "18026-5": {"mL"},
        "18148-7": {"mL"},
        "8867-4": {"/min"},
        "90096001": {"mL"},
    }

    def value(item) -> float:
        return float(item.MeasuredValueSequence[0].NumericValue)

    # two LVEFs: method of disks, and the regression network with its algorithm identification
    disks = [i for i in by_code["18043-0"] if _children(i, "370129005")]
    regression = [i for i in by_code["18043-0"] if not _children(i, "370129005")]
    assert len(disks) == len(regression) == 1
    assert _children(disks[0], "370129005")[0].ConceptCodeSequence[0].CodeValue == "125208"
    assert value(disks[0]) == pytest.approx(m.ef_disks_percent, abs=0.05)
    assert value(regression[0]) == pytest.approx(m.ef_percent, abs=0.05)
    algorithm_name = _children(regression[0], "111001")[0].TextValue
    assert algorithm_name.startswith("echo-agent R(2+1)D-18")
    assert value(by_code["18026-5"][0]) == pytest.approx(m.edv_ml, abs=0.05)
    assert value(by_code["18148-7"][0]) == pytest.approx(m.esv_ml, abs=0.05)
    assert value(by_code["90096001"][0]) == pytest.approx(m.edv_ml - m.esv_ml, abs=0.1)
    assert value(by_code["8867-4"][0]) == pytest.approx(m.heart_rate_bpm, abs=0.05)
    # against the phantom's truth (true masks: volumes and EF agree closely)
    assert value(by_code["18026-5"][0]) == pytest.approx(loop.truth["edv_ml"], rel=0.05)
    assert value(disks[0]) == pytest.approx(loop.truth["ef_percent"], abs=3)

    for code in ("18043-0", "18026-5", "18148-7", "90096001"):
        for item in by_code[code]:
            assert _children(item, "363698007")[0].ConceptCodeSequence[0].CodeValue == "87878005"
            view = _children(item, "111031")[0].ConceptCodeSequence[0]
            assert (view.CodeValue, view.CodingSchemeDesignator) == ("399214001", "SCT")
    for item in by_code["18026-5"] + by_code["18148-7"] + disks:
        assert _children(item, "370129005")[0].ConceptCodeSequence[0].CodeValue == "125208"

    def frames(item) -> list[int]:
        (image,) = _children(item, "121112")  # Source of Measurement
        ref = image.ReferencedSOPSequence[0]
        assert ref.ReferencedSOPInstanceUID == loop.header.SOPInstanceUID
        return [int(f) for f in ref.get("ReferencedFrameNumber", [])]

    beats = [b for b in m.beats if b.edv_ml is not None]
    assert frames(by_code["18026-5"][0]) == sorted(b.ed_frame + 1 for b in beats)
    assert frames(by_code["18148-7"][0]) == sorted(b.es_frame + 1 for b in beats)
    true_ed = {f + 1 for f in loop.truth["ed_frames"]}
    assert set(frames(by_code["18026-5"][0])) <= {f + d for f in true_ed for d in (-1, 0, 1)}
    # highdicom reads its own template back: one group, every value
    report = hd.sr.ComprehensiveSR.from_dataset(sr)
    (group,) = report.content.get_image_measurement_groups()
    read_back = sorted((x.name.value, x.unit.value) for x in group.get_measurements())
    assert read_back == sorted(
        (v.concept.value, v.unit.value) for v in reported_values(m, demo_algorithms())
    )


def test_signed_sr_is_a_new_complete_verified_document(loop, tmp_path):
    algorithms = demo_algorithms()
    preliminary = write_sr(loop.header, loop.measurements, algorithms, draft(), tmp_path / "p.dcm")
    signed_report = draft().signed(signature())
    out = tmp_path / "signed.dcm"
    write_signed_sr(preliminary, loop.header, loop.measurements, algorithms, signed_report, out)
    assert dciodvfy_errors(out) == []
    dsrdump_text(out)
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
    assert sr.SOPInstanceUID != preliminary.SOPInstanceUID
    assert sr.SeriesInstanceUID == preliminary.SeriesInstanceUID
    assert int(sr.InstanceNumber) == int(preliminary.InstanceNumber) + 1
    predecessor = sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert predecessor.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == (
        preliminary.SOPInstanceUID
    )
    with pytest.raises(ValueError, match="signed"):
        write_signed_sr(preliminary, loop.header, loop.measurements, algorithms, draft(), out)


def test_null_measurements_are_left_out(loop, tmp_path):
    # no spacing: no volumes (and so no stroke volume); no header or beat heart rate
    m = dataclasses.replace(
        loop.measurements, edv_ml=None, esv_ml=None, heart_rate_bpm=None, heart_rate_source="none"
    )
    m = dataclasses.replace(
        m, beats=tuple(dataclasses.replace(b, edv_ml=None, esv_ml=None) for b in m.beats)
    )
    out = tmp_path / "sr.dcm"
    write_sr(loop.header, m, demo_algorithms(), draft(), out)
    assert dciodvfy_errors(out) == []
    names = {i.ConceptNameCodeSequence[0].CodeValue for i in _numbers(pydicom.dcmread(out))}
    assert names == {"18043-0"}
    assert [v.key for v in reported_values(m, demo_algorithms())] == [
        "lvef_regression",
        "lvef_disks",
    ]


def test_demo_label_in_sr_only_for_demo_models(loop, tmp_path):
    demo = write_sr(
        loop.header, loop.measurements, demo_algorithms(True), draft(True), tmp_path / "d"
    )
    real = write_sr(
        loop.header, loop.measurements, demo_algorithms(False), draft(False), tmp_path / "r"
    )
    assert DEMO_LABEL_ASCII in _texts(demo)
    assert any(DEMO_LABEL_ASCII in t for t in _texts(demo) if t.startswith("echo-agent"))
    assert "DEMO" in demo.SeriesDescription
    assert not any("DEMO" in t for t in _texts(real))
    assert "DEMO" not in real.SeriesDescription
    assert "Automated draft for review." in _texts(real)


# --- every code in one module ----------------------------------------------------------------

# A LOINC code, a SNOMED CT / DCM numeric code in quotes, or a UCUM unit in quotes
_CODE_LITERAL = re.compile(r"""["'](\d{1,7}-\d|\d{5,18}|LP\d+-\d|CUS)["']""")


def test_codes_live_only_in_the_codes_module():
    offenders = []
    for path in sorted((REPO_ROOT / "reporting").glob("*.py")):
        if path.name == "codes.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if _CODE_LITERAL.search(line):
                offenders.append(f"{path.name}:{number}: {line.strip()}")
    assert offenders == []
    listed = codes.all_codes()
    values = {(c.value, c.scheme) for c in listed.values()}
    for needed in [
        ("18043-0", "LN"),
        ("18026-5", "LN"),
        ("18148-7", "LN"),
        ("8867-4", "LN"),
        ("90096001", "SCT"),
        ("125208", "DCM"),
        ("87878005", "SCT"),
        ("399214001", "SCT"),
        ("42148-7", "LN"),
        ("LP29708-2", "LN"),
        ("CUS", "HL7-0074"),
        ("371857005", "SCT"),
        ("134401001", "SCT"),
        ("%", "UCUM"),
        ("mL", "UCUM"),
        ("/min", "UCUM"),
    ]:
        assert needed in values, needed
    assert all(c.meaning for c in listed.values())
