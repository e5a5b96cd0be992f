"""The grounding guard: numbers and LV-function grades in generated text against measurements."""

from __future__ import annotations

from dataclasses import replace

import pytest

from inference.types import Beat, Measurements
from llm.grounding import check_grounding, lv_grade, measured_facts
from reporting.types import AlgorithmInfo, Algorithms
from reporting.values import reported_values


def measurements(
    ef: float | None = 55.2,
    disks: float | None = 54.8,
    edv: float | None = 120.3,
    esv: float | None = 54.1,
    hr: float | None = 72.0,
    sd: float | None = None,
) -> Measurements:
    beat = Beat(10, 25, 40, ef, 0, edv, esv, disks, None, None)
    return Measurements(
        ef_percent=ef, ef_sd_percent=sd, ef_source="beats", ef_clips_mean_percent=ef,
        ef_disks_percent=disks, edv_ml=edv, esv_ml=esv, heart_rate_bpm=hr,
        heart_rate_source="beats", beats=(beat, beat), flags=(), n_frames=60,
        frame_time_ms=20.0, spacing_cm=(0.05, 0.05), ed_frames=(10,), es_frames=(25,),
        lv_area_px=(), lv_area_cm2=None,
    )  # fmt: skip


M = measurements()


@pytest.mark.parametrize(
    "text",
    [
        "Normal LV systolic function: LVEF (AI regression) 55.2 %. LV end-diastolic volume "
        "120.3 mL, end-systolic volume 54.1 mL, stroke volume 66.2 mL. Heart rate 72 bpm over "
        "2 beats.",
        "The ejection fraction is 55 percent and the EDV is 120.5 ml.",  # within tolerance
        "The end-diastolic and end-systolic volumes are 120.3 mL and 54.1 mL.",
        "The 2D A4C view shows normal LV systolic function (ASE/EACVI 2015).",
        "There is no LV systolic dysfunction.",
        "The heart rate is 71.2 beats per minute.",
        "Regional wall motion and the valves were not assessed.",
        "The LVEF lies within the normal range.",  # "lies" here places a value, not a patient
        "",
    ],
)
def test_grounded_text_passes(text: str) -> None:
    result = check_grounding(text, M, "M")
    assert result.passed, result.reasons


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("The EF is 80%.", "80%"),
        ("The LVEF is 55.8 %.", "55.8 %"),  # 0.6 points off
        ("The heart rate is 74 bpm.", "74 bpm"),  # 2 /min off
        ("The EDV is 121 mL.", "121 mL"),
        ("The LV end-systolic volume is 120.3 mL.", "120.3 mL"),  # the EDV, named as the ESV
        ("Systolic function of 72.0 mmHg.", "mmHg"),
        ("The heart rate is 55.2 %.", "55.2 %"),  # an EF number called a heart rate
        ("The LVEF is 72.", "72"),  # the heart rate's number called an EF
        ("Image 1280x1280 of the heart.", "1280"),
        ("EF fifty-five percent.", "fifty"),
        ("The LVEF is mildly reduced.", "mildly"),
        ("LV systolic function is severely impaired.", "severely"),
        ("Your LVEF is not in the normal range.", "not in the normal range"),
        ("The mitral valve is normal.", "does not measure"),
        ("There may be hypertrophy of the left ventricle.", "hypertrophy"),
        ("The patient has heart failure.", "heart failure"),
        ("EF 55.2 ± 3.0 %", "3.0 %"),  # no SD was measured
        ("The heart rate was 2 beats.", "a count"),
        ("The video is a 3D reconstruction using CT and MRI.", "2D apical four-chamber"),
        ("It was measured in a two-chamber view.", "2D apical four-chamber"),
        # the embedded model's answer to "Could you describe this echocardiogram video for me?"
        (
            "The patient is lying on the table with the patient's head positioned in front of "
            "the patient's chest.",
            "not the patient or the room",
        ),
    ],
)
def test_ungrounded_text_fails(text: str, why: str) -> None:
    result = check_grounding(text, M, "M")
    assert result.verdict == "fail"
    assert any(why in reason for reason in result.reasons), result.reasons


def test_grades_follow_ase_eacvi_2015() -> None:
    reduced = measurements(ef=35.4, disks=33.0)
    assert check_grounding("Moderately reduced LV systolic function.", reduced, "F").passed
    assert not check_grounding("The heart is healthy, LVEF 35.4 %.", reduced, "F").passed
    assert check_grounding("There is a reduction in LVEF to 35.4 %.", reduced, "F").passed
    assert not check_grounding("There is a reduction in LVEF to 55.2 %.", M, "M").passed
    assert not check_grounding("Normal LV systolic function.", reduced, "F").passed
    assert not check_grounding("Mildly reduced LV systolic function.", reduced, "F").passed
    hyper = measurements(ef=78.0, disks=77.8)
    assert check_grounding("The LVEF is hyperdynamic at 78.0 %.", hyper, "M").passed
    assert not check_grounding("The LVEF is normal at 78.0 %.", hyper, "M").passed
    severe = measurements(ef=22.0, disks=23.0)
    assert check_grounding("LVEF 22.0 %: severely abnormal.", severe, "M").passed


def test_sex_decides_the_grade_and_unknown_sex_grades_nothing() -> None:
    borderline = measurements(ef=53.0, disks=53.1)  # normal for men, mildly abnormal for women
    assert check_grounding("Normal LV systolic function.", borderline, "M").passed
    assert not check_grounding("Normal LV systolic function.", borderline, "F").passed
    assert check_grounding("Mildly reduced LV systolic function.", borderline, "F").passed
    grade = lv_grade(borderline, None)
    assert grade.grade is None and "normal" not in grade.phrase
    result = check_grounding("Normal LV systolic function.", borderline, None)
    assert not result.passed and "sex is unknown" in result.reasons[0]


def test_missing_measurements_cannot_be_quoted() -> None:
    no_volumes = measurements(edv=None, esv=None, disks=None)
    assert [f.key for f in measured_facts(no_volumes)] == ["ef_regression", "heart_rate"]
    result = check_grounding("The EDV is 120.3 mL.", no_volumes, "M")
    assert not result.passed and "no LV volume" in result.reasons[0]
    no_ef = measurements(ef=None, disks=None)
    assert not check_grounding("Normal LV systolic function.", no_ef, "M").passed


def test_the_measured_sd_may_be_quoted() -> None:
    with_sd = measurements(sd=3.0)
    assert check_grounding("LVEF 55.2 ± 3.0 %.", with_sd, "M").passed
    assert not check_grounding("LVEF 55.2 ± 4.0 %.", with_sd, "M").passed


def test_result_is_storable() -> None:
    result = check_grounding("The EF is 80%.", M, "M")
    assert result.to_json()["verdict"] == "fail"
    assert isinstance(result.to_json()["reasons"], list)


def test_heart_rate_and_volume_grades_follow_their_reference_ranges() -> None:
    # heart rate 72 /min (normal 60-100); EDV 120.3 mL and ESV 54.1 mL: normal for men,
    # above the women's range (EDV 46-106, ESV 14-42 mL, ASE/EACVI 2015 Table 1)
    assert check_grounding("The heart rate is normal at 72.0 /min.", M, "M").passed
    assert check_grounding("The LV end-diastolic volume is normal.", M, "M").passed
    assert check_grounding("The LV volumes are within normal limits.", M, "M").passed
    assert check_grounding("The patient is not tachycardic.", M, "M").passed
    fast = measurements(hr=112.0)
    assert check_grounding("The heart rate is elevated at 112.0 /min.", fast, "M").passed
    assert check_grounding("The patient is tachycardic.", fast, "M").passed


@pytest.mark.parametrize(
    ("text", "sex", "why"),
    [
        # the embedded model wrote this one, and the guard passed it before it graded ranges
        ("The patient's heart rate was 72.0 /min, severely reduced.", "M", "no severity"),
        ("The heart rate of 72.0 /min is elevated.", "M", "is normal"),
        ("The patient is tachycardic.", "M", "is normal"),
        ("The heart rate is reduced.", "M", "is normal"),
        ("The LV end-diastolic volume is normal.", "F", "above normal range (edv)"),
        ("The LV volumes are normal.", "F", "above normal range"),
        ("The LV volumes are normal.", None, "depends on sex"),
        ("The stroke volume is normal.", "M", "no reference range"),
    ],
)
def test_heart_rate_and_volume_grades_that_the_ranges_contradict_fail(
    text: str, sex: str | None, why: str
) -> None:
    result = check_grounding(text, M, sex)
    assert result.verdict == "fail"
    assert any(why in reason for reason in result.reasons), result.reasons


def test_a_grade_of_an_unmeasured_volume_fails() -> None:
    no_volumes = measurements(edv=None, esv=None, disks=None)
    result = check_grounding("The LV end-diastolic volume is normal.", no_volumes, "M")
    assert not result.passed and "not measured" in result.reasons[0]


# issue #15 item 9: the two EFs of one loop differ; a number stated for one method must be
# that method's (the regression EF given as the method-of-disks value passed before)
APART = measurements(ef=39.4, disks=47.0)


@pytest.mark.parametrize(
    "text",
    [
        "The LVEF by the method of disks is 39.4 %.",
        "The AI regression LVEF is 47.0 %.",
        "LVEF (method of disks) 39.4 %.",
        "The LVEF is 47.0 % by regression.",
        "The LVEF is 47.0 % (AI regression) and 39.4 % (method of disks).",
        "The method-of-disks EF (39.4 %) is lower than expected.",
    ],
)
def test_an_ef_stated_for_the_other_method_fails(text: str) -> None:
    result = check_grounding(text, APART, "M")
    assert result.verdict == "fail", text
    assert any("method" in reason or "regression" in reason for reason in result.reasons)


@pytest.mark.parametrize(
    "text",
    [
        "The LVEF by the method of disks is 47.0 %.",
        "The AI regression LVEF is 39.4 %.",
        "LVEF (AI regression) 39.4 %, LVEF (method of disks) 47.0 %.",
        "The LVEF is 39.4 % (AI regression) and 47.0 % (method of disks).",
        "The LVEF is 39.4 % by regression and 47.0 % by the method of disks.",
        "The LVEF is 39.4 %.",  # no method named: either EF may be meant
        "The regression and method-of-disks EFs are 39.4 % and 47.0 %.",
    ],
)
def test_an_ef_paired_with_its_own_method_passes(text: str) -> None:
    result = check_grounding(text, APART, "M")
    assert result.passed, result.reasons


def test_no_method_text_states_a_mean_over_zero_beats() -> None:
    """Without a pixel spacing the disks EF (a ratio) is still reported, from the beats' pixel
    volumes, while no beat carries a volume in mL: its method said "mean of 0 beats"."""
    beat = Beat(10, 25, 40, 39.4, 0, None, None, 47.0, None, None)
    no_spacing = replace(
        measurements(ef=39.4, disks=47.0, edv=None, esv=None),
        beats=(beat, beat), spacing_cm=None,
    )
    info = AlgorithmInfo("test", "0", demo_model=True)
    values = {v.key: v for v in reported_values(no_spacing, Algorithms(info, info))}
    assert "0 beats" not in values["lvef_disks"].method_text
    assert values["lvef_disks"].method_text.endswith("mean of 2 beats")
    assert values["lvef_disks"].n_beats == 2 and values["lvef_disks"].source_frames == (10, 25)
    # with no per-beat EF at all the texts say what the value is, never a mean of none
    bare = replace(no_spacing, beats=())
    for value in reported_values(bare, Algorithms(info, info)):
        assert "mean of 0" not in value.method_text, value


# --- claims beyond numbers (``llm.claims``) ---------------------------------------------------

# the phantom study of issue #19: female, EDV 130.9 mL (women 46-106 mL), LVEF 35.6 %
PHANTOM = measurements(ef=35.6, disks=34.9, edv=130.9, esv=84.3, hr=66.0)
IRREGULAR = replace(PHANTOM, beats=(Beat(0, 12, 30, 35.6, 0, 130.9, 84.3, 34.9, None, None),
                                    Beat(30, 42, 50, 35.6, 0, 130.9, 84.3, 34.9, None, None)))


@pytest.mark.parametrize(
    ("text", "why"),
    [
        # the false sentences the embedded model wrote (issue #19)
        ("The left ventricle is not enlarged.", "is enlarged"),
        ("The left ventricle is a large vessel that is responsible for pumping blood throughout "
         "the body.", "anatomy"),
        ("The echocardiogram is done with a specialized equipment called an echocardiogram "
         "machine. The echocardiogram is done with a specialized equipment called an "
         "echocardiogram machine.", "repeated sentence"),
        ("The echocardiogram shows a specialized equipment called an echocardiogram machine.",
         "equipment"),
        ("The LV is normal in size.", "is enlarged"),
        ("The left ventricle is smaller than usual.", "is enlarged"),
        ("The mitral valve opens well.", "does not assess"),
        ("Wall motion is normal.", "does not"),
        ("The right ventricle looks fine.", "does not assess"),
        ("The patient is in sinus rhythm.", "needs an ECG"),
        ("There is atrial fibrillation.", "needs an ECG"),
        ("The beats were irregular.", "were regular"),
        ("The heart pumps blood to the body.", "anatomy"),
    ],
)
def test_false_claims_fail_the_guard(text: str, why: str) -> None:
    result = check_grounding(text, PHANTOM, "F")
    assert not result.passed
    assert any(why in r for r in result.reasons), result.reasons


@pytest.mark.parametrize(
    "text",
    [
        "The left ventricle is enlarged.",
        "The left ventricle is dilated, with an end-diastolic volume of 130.9 mL.",
        "The LV is not normal in size.",
        "The beats on the loop were regular.",
        "The valves were not assessed.",
        "Naming the rhythm, such as sinus rhythm, needs an ECG.",
    ],
)
def test_true_claims_pass_the_guard(text: str) -> None:
    result = check_grounding(text, PHANTOM, "F")
    assert result.passed, result.reasons


def test_size_and_rhythm_words_follow_the_sex_range_and_the_beats() -> None:
    male = check_grounding("The left ventricle is normal in size.", PHANTOM, "M")
    assert male.passed, male.reasons  # 130.9 mL is within 62-150 mL for men
    unknown = check_grounding("The left ventricle is enlarged.", PHANTOM, None)
    assert not unknown.passed and "not graded" in unknown.reasons[0]
    assert not check_grounding("The beats were regular.", IRREGULAR, "F").passed
    assert check_grounding("The beats were irregular.", IRREGULAR, "F").passed


def test_the_claim_guard_takes_vetted_sentences_verbatim_and_fails_empty_answers() -> None:
    from llm.claims import check_claims
    from llm.facts import build_fact_sheet
    from llm.knowledge import entry

    sheet = build_fact_sheet(PHANTOM, "F")
    size = sheet.get("lv_size").sentence  # type: ignore[union-attr]
    assert "46-106 mL" in size and not check_grounding(size, PHANTOM, "F").passed
    assert check_claims(size, sheet).passed  # a fact sentence, ranges and all
    assert check_claims(entry("lv-anatomy").text, sheet).passed  # anatomy from the KB
    assert not check_claims(entry("ef-normal-meaning").text, sheet).passed  # not this study
    assert not check_claims(f"{size} {size}", sheet).passed
    empty = check_claims("Thank you for your question. I hope this helps.", sheet)
    assert not empty.passed and "states nothing" in empty.reasons[0]
