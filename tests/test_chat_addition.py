"""The model's one sentence: it is shown the study's standing in plain words and no number, the
question's topic first; it is not asked where no plain sentence answers the question; and the
guard refuses its own words about blood (physiology only in the knowledge base's words)."""

from __future__ import annotations

import re

import pytest
from scripted_model import ScriptedTextModel

from llm.chat import ADDITION_OPENING, StudyContext, answer_question
from llm.claims import check_claims
from llm.compose import compose_answer
from llm.plain_context import all_plain_sentences
from tests.test_grounding import measurements

STUDIES = [
    (measurements(), "M"),
    (measurements(ef=35.4, disks=33.0, edv=160.2, esv=103.5), "F"),  # reduced, enlarged
    (measurements(ef=53.0), None),  # the grade depends on the unknown sex
    (measurements(ef=78.0, edv=50.0, esv=11.0), "M"),  # above the range, small
    (measurements(edv=None, esv=None, disks=None, hr=None), "M"),
    (measurements(ef=None, disks=None), "M"),
    (measurements(hr=120.0), "F"),
    (measurements(hr=45.0), "F"),
]


@pytest.mark.parametrize(("m", "sex"), STUDIES)
def test_every_plain_sentence_is_true_and_holds_no_number(m, sex) -> None:  # type: ignore[no-untyped-def]
    sheet = StudyContext(m, sex).fact_sheet()
    core = compose_answer("What does this result mean for my heart health?", sheet).text
    for sentence in all_plain_sentences(sheet):
        assert not re.search(r"\d", sentence), sentence
        restated = f"{ADDITION_OPENING} {sentence[0].lower()}{sentence[1:]}"
        result = check_claims(f"{core} {restated}", sheet)
        assert result.passed, (sentence, result.reasons)


def _prompt(question: str, context: StudyContext) -> str:
    model = ScriptedTextModel([f"{ADDITION_OPENING} the result is explained above."])
    answer_question(question, context, model)
    if not model.prompts:
        return ""
    return model.prompts[0][1].content


def test_the_model_is_shown_the_asked_topic_in_plain_words_and_no_number() -> None:
    reduced = StudyContext(*STUDIES[1])
    prompt = _prompt("What about my pulse?", reduced)
    assert prompt.endswith("Answer: The heart rate was within the usual adult resting range.")
    prompt = _prompt("What does this result mean for my heart health?", reduced)
    assert "(LVEF) is moderately reduced." in prompt and "The left ventricle is enlarged." in prompt
    assert not re.search(r"\d", prompt)
    slow = StudyContext(*STUDIES[7])
    assert "below the usual adult resting range" in _prompt("And the heart rate?", slow)


def test_a_value_without_plain_words_gets_no_model_sentence() -> None:
    context = StudyContext(*STUDIES[0])
    model = ScriptedTextModel([f"{ADDITION_OPENING} the stroke volume is what the heart ejects."])
    answer = answer_question("What is the stroke volume?", context, model)
    assert model.prompts == [] and answer.model_verdict == "not_checked"
    assert "The LV stroke volume is 66.2 mL" in answer.text


def test_the_guard_refuses_the_models_own_words_about_blood() -> None:
    context = StudyContext(*STUDIES[0])
    model = ScriptedTextModel([f"{ADDITION_OPENING} the stroke volume is the amount of blood "
                               "that is pumped by the heart per minute."])  # fmt: skip
    answer = answer_question("What does this result mean for my heart health?", context, model)
    assert answer.model_verdict == "fail"
    assert any("'blood': anatomy" in r for r in answer.model_reasons), answer.model_reasons
    assert "blood" not in answer.text.split(ADDITION_OPENING)[-1]


def test_a_description_gets_no_model_sentence() -> None:
    model = ScriptedTextModel([f"{ADDITION_OPENING} the video shows a strong heart."])
    answer = answer_question("Please describe the echocardiogram video.", StudyContext(*STUDIES[0]),
                             model)  # fmt: skip
    assert model.prompts == [] and answer.model_verdict == "not_checked"
    assert answer.intent == "descriptive" and "apical four-chamber (A4C) view" in answer.text


@pytest.mark.parametrize(("hr", "passes"), [(72.0, False), (120.0, True), (None, False)])
def test_the_guard_checks_how_fast_the_model_says_the_heart_beats(hr, passes) -> None:  # type: ignore[no-untyped-def]
    context = StudyContext(measurements(hr=hr), "M")
    model = ScriptedTextModel([f"{ADDITION_OPENING} the heart is beating too fast."])
    answer = answer_question("What is the ejection fraction?", context, model)
    assert answer.model_verdict == ("pass" if passes else "fail"), answer.model_reasons
    if not passes:
        assert any("'fast'" in r for r in answer.model_reasons)


@pytest.mark.parametrize(
    ("ef", "sentence", "passes"),
    [
        (35.0, "your heart's main pumping chamber pumps much more strongly than usual.", False),
        (35.0, "your heart pumps less strongly than usual.", True),
        (60.0, "your heart's main pumping chamber pumps harder than usual.", False),
        (60.0, "your heart's main pumping chamber pumps normally.", True),
        (78.0, "your heart's main pumping chamber squeezes harder than usual.", True),
        (78.0, "your heart pumps a little less strongly than usual.", False),
    ],
)
def test_the_guard_checks_lay_words_for_the_pumping(ef: float, sentence: str, passes: bool) -> None:
    # the first retrained chat adapter wrote "pumps much more strongly than usual" for a
    # moderately reduced LVEF, and no grade word caught it
    context = StudyContext(measurements(ef=ef, disks=ef, esv=120.3 * (1 - ef / 100)), "M")
    model = ScriptedTextModel([f"{ADDITION_OPENING} {sentence}"])
    answer = answer_question("What does my ejection fraction mean?", context, model)
    assert answer.model_verdict == ("pass" if passes else "fail"), answer.model_reasons
