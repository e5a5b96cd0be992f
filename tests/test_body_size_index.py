"""Height and weight from the DICOM header, BSA (Mosteller) and the LV volumes indexed to it
(issue #19): plausible header values are used, missing, zero or absurd ones are withheld with
their reason; the fact sheet, the chat's size answer and the report text judge LV size on the
indexed range when there is one, and say the volumes are not indexed when there is none."""

from __future__ import annotations

import logging
import math

import pytest
from pydicom.dataset import Dataset

from llm.chat import StudyContext, answer_question
from llm.facts import build_fact_sheet
from reporting.body_size import (
    BodySize,
    body_size_from_dataset,
    body_size_from_values,
    body_surface_area_m2,
)
from reporting.indexed_volumes import index_lines, indexed_volumes
from reporting.interpretation import indexed_range_grade, interpret_indexed
from reporting.report_text import structured_text
from reporting.values import KEY_LV_EDV, KEY_LV_ESV, reported_values
from tests.reporting_helpers import demo_algorithms
from tests.test_grounding import measurements

ENLARGED = "Is the left ventricle enlarged?"
# female, EDV 100 mL: normal by the absolute range (46-106 mL), but for a 150 cm, 45 kg woman
# (BSA 1.37 m2) 73.0 mL/m2, above the indexed range (29-61 mL/m2): only the index shows it
SMALL_WOMAN = BodySize(150.0, 45.0)
STUDY = measurements(ef=55.0, disks=54.0, edv=100.0, esv=45.0, hr=70.0)


def test_mosteller_bsa() -> None:
    assert body_surface_area_m2(180.0, 80.0) == pytest.approx(2.0)  # sqrt(14400 / 3600)
    assert body_surface_area_m2(150.0, 45.0) == pytest.approx(math.sqrt(150 * 45 / 3600))
    with pytest.raises(ValueError):
        body_surface_area_m2(0.0, 70.0)


@pytest.mark.parametrize(
    ("height_m", "weight_kg", "expected", "reasons"),
    [
        ("1.65", "60", (165.0, 60.0), ()),
        (1.805, 72.5, (180.5, 72.5), ()),
        (None, None, (None, None), ("height not in the DICOM header",
                                    "weight not in the DICOM header")),
        ("0", "0", (None, None), ("height 0 m is outside 0.5-2.5 m",
                                  "weight 0 kg is outside 2-400 kg")),
        ("175", "0.07", (None, None), ("height 175 m is outside 0.5-2.5 m",
                                       "weight 0.07 kg is outside 2-400 kg")),
        ("", "70", (None, 70.0), ("height empty in the DICOM header",)),
        ("1.7", "abc", (170.0, None), ("weight 'abc' is not a number",)),
        (["1.7", "1.8"], "70", (None, 70.0), ("height has 2 values",)),
        ("nan", "70", (None, 70.0), ("height 'nan' is not a finite number",)),
    ],
)  # fmt: skip
def test_header_values_are_used_only_when_plausible(height_m, weight_kg, expected, reasons) -> None:
    body = body_size_from_values(height_m, weight_kg)
    assert (body.height_cm, body.weight_kg) == expected
    assert body.reasons == reasons
    assert (body.bsa_m2 is not None) == (not reasons)


def test_a_withheld_value_is_logged_with_its_reason(caplog: pytest.LogCaptureFixture) -> None:
    ds = Dataset()
    ds.PatientSize = "0"
    ds.PatientWeight = "70"
    with caplog.at_level(logging.INFO, logger="echo_agent.reporting.body_size"):
        body = body_size_from_dataset(ds)
    assert body.height_cm is None and body.weight_kg == 70.0
    assert "height 0 m is outside 0.5-2.5 m" in caplog.text
    ds.PatientSize = "1.62"
    assert body_size_from_dataset(ds) == BodySize(162.0, 70.0)


def test_indexed_ranges_are_sex_specific() -> None:
    # ASE/EACVI 2015: EDVi men 34-74, women 29-61; ESVi men 11-31, women 8-24 mL/m2
    assert indexed_range_grade(KEY_LV_EDV, 65.0, "M") == "normal"
    assert indexed_range_grade(KEY_LV_EDV, 65.0, "F") == "above normal range"
    assert indexed_range_grade(KEY_LV_EDV, 65.0, None) is None  # the sexes disagree
    assert indexed_range_grade(KEY_LV_EDV, 80.0, None) == "above normal range"
    assert indexed_range_grade(KEY_LV_ESV, 9.0, "M") == "below normal range"
    assert indexed_range_grade(KEY_LV_ESV, 9.0, "F") == "normal"
    ranges = interpret_indexed(KEY_LV_ESV, 20.0, "F").ranges
    assert [(r.low, r.high, r.sex) for r in ranges] == [(8.0, 24.0, "F")]


def test_the_fact_sheet_and_the_size_answer_prefer_the_indexed_range() -> None:
    absolute = build_fact_sheet(STUDY, "F")
    assert absolute.lv_size == "normal"
    indexed = build_fact_sheet(STUDY, "F", height_cm=150.0, weight_kg=45.0)
    assert indexed.lv_size == "enlarged"
    bsa = indexed.get("bsa")
    assert bsa is not None and bsa.value == pytest.approx(1.37, abs=0.005)
    edvi, esvi = indexed.get("lv_edv_index"), indexed.get("lv_esv_index")
    assert edvi is not None and edvi.value == pytest.approx(100.0 / SMALL_WOMAN.bsa_m2, abs=0.05)
    assert esvi is not None and esvi.value == pytest.approx(45.0 / SMALL_WOMAN.bsa_m2, abs=0.05)
    assert "29-61 mL/m2 for women" in edvi.sentence and "8-24 mL/m2 for women" in esvi.sentence
    assert "above" in edvi.sentence and "above" in esvi.sentence  # 73.0 > 61, 32.9 > 24

    context = StudyContext(STUDY, "F", height_cm=150.0, weight_kg=45.0)
    answer = answer_question(ENLARGED, context, None)
    assert answer.verdict == "pass"
    assert "The left ventricle is enlarged" in answer.text
    assert "73.0 mL/m2" in answer.text and "29-61 mL/m2 for women" in answer.text
    assert "Mosteller" in answer.text and "1.37 m2" in answer.text
    assert "46-106 mL" not in answer.text  # the absolute range is not the one judged against


def test_without_height_and_weight_nothing_is_indexed_and_the_sheet_says_why() -> None:
    for sheet in (build_fact_sheet(STUDY, "F"),
                  build_fact_sheet(STUDY, "F", height_cm=165.0, weight_kg=None),
                  build_fact_sheet(STUDY, "F", height_cm=16500.0, weight_kg=60.0)):  # fmt: skip
        assert sheet.get("bsa") is None and sheet.get("lv_edv_index") is None
        assert sheet.get("lv_esv_index") is None
        withheld = sheet.get("volume_index")
        assert withheld is not None and withheld.state == "not_measurable"
        assert "not indexed" in withheld.sentence and "mL/m2" not in " ".join(sheet.sentences)
        assert sheet.lv_size == "normal"  # 100 mL within 46-106 mL (women)
    answer = answer_question(ENLARGED, StudyContext(STUDY, "F"), None)
    assert "normal in size" in answer.text and "46-106 mL for women" in answer.text
    assert "mL/m2" not in answer.text


def test_the_report_text_lists_the_indices_or_why_there_are_none() -> None:
    algorithms = demo_algorithms()
    text = structured_text(STUDY, algorithms, "F", SMALL_WOMAN)
    assert "Body surface area: 1.37 m2 (Mosteller, from height 150 cm and weight 45 kg" in text
    assert "LV end-diastolic volume index: 73.0 mL/m2 (above normal range; reference " \
           "29-61 mL/m2 (women)" in text  # fmt: skip
    assert "LV end-systolic volume index: 32.9 mL/m2 (above normal range" in text
    unknown = structured_text(STUDY, algorithms, "F", body_size_from_values(None, "0"))
    assert "LV volumes not indexed to body surface area: height not in the DICOM header; " \
           "weight 0 kg is outside 2-400 kg." in unknown  # fmt: skip
    assert "mL/m2" not in unknown
    # a caller that did not look at the header: the text is as before
    assert structured_text(STUDY, algorithms, "F") == structured_text(STUDY, algorithms, "F", None)
    assert "body surface" not in structured_text(STUDY, algorithms, "F")
    # no volume reported: nothing to index, nothing said
    no_volumes = measurements(ef=55.0, disks=None, edv=None, esv=None, hr=70.0)
    values = reported_values(no_volumes, algorithms)
    assert index_lines(values, SMALL_WOMAN, "F") == []
    assert indexed_volumes(reported_values(STUDY, algorithms), BodySize(), "F") == []
