"""What the model is shown for its one sentence: the study's standing in plain words, without a
number.

Why: the model is asked to restate the answer "in plain words, with no numbers", but shown the
composed sentences ("The heart rate was 53.0 /min ..., below the usual adult resting range of
60-100 /min (AHA).") it copied their numbers, reference ranges included, and the claim guard
refused the sentence (a number the model writes must be a measured value). Banning digit
tokens while decoding made it stall ("the heart rate was \\nThe heart rate was ...") or write
"an LVEF of ½", and banning the words the guard refuses steered it to other, unchecked wording
("pumping strongly" for a severely reduced LVEF). So it is shown what the numbers mean
instead, taken from the fact sheet's grades (function, size, rate, rhythm, the view): nothing
to copy that the guard must refuse, and each of these sentences passes the guard after an
answer (a test keeps them so).
"""

from __future__ import annotations

from collections.abc import Sequence

from llm.facts import FactSheet
from reporting.interpretation import (
    GRADE_ABOVE,
    GRADE_BELOW,
    GRADE_MILD,
    GRADE_MODERATE,
    GRADE_NORMAL,
    GRADE_SEVERE,
)

# which plain sentence states each fact key (keys without one, e.g. quality, are left out)
_TOPIC_OF_KEY = {
    "lvef": "function", "lvef_disks": "function", "lvef_sd": "function", "lv_function": "function",
    "lv_edv": "size", "lv_esv": "size", "lv_sv": "size", "lv_size": "size", "bsa": "size",
    "lv_edv_index": "size", "lv_esv_index": "size", "heart_rate": "rate", "rhythm": "rhythm",
    "view": "image", "frames": "image", "not_assessed": "not_assessed",
}  # fmt: skip
# the route's topics (``llm.intents``) each plain sentence answers
_ROUTE_TOPICS = {
    "function": ("function",),
    "size": ("size",),
    "rate": ("rate",),
    "rhythm": ("rhythm",),
    "image": ("image",),
    "not_assessed": ("not_assessed",),
}
_FUNCTION = {
    GRADE_NORMAL: "is normal",
    GRADE_ABOVE: "is above the normal range",
    GRADE_MILD: "is mildly reduced",
    GRADE_MODERATE: "is moderately reduced",
    GRADE_SEVERE: "is severely reduced",
}
_SIZE = {
    "normal": "The left ventricle is normal in size.",
    "enlarged": "The left ventricle is enlarged.",
    "small": "The left ventricle is smaller than usual.",
}
_RATE = {GRADE_NORMAL: "within", GRADE_ABOVE: "above", GRADE_BELOW: "below"}


def _function(sheet: FactSheet) -> str:
    lvef = sheet.get("lvef") or sheet.get("lvef_disks")
    if lvef is None or lvef.state != "measured":
        return "The LVEF could not be measured on this loop."
    if sheet.ef_grade is None:
        return "The LVEF was measured but is not graded, because the sex is not known."
    return f"The pumping strength of the left ventricle (LVEF) {_FUNCTION[sheet.ef_grade]}."


def _size(sheet: FactSheet) -> str:
    if sheet.lv_size is None:
        return "The size of the left ventricle is not graded on this study."
    return _SIZE[sheet.lv_size]


def _rate(sheet: FactSheet) -> str:
    rate = sheet.get("heart_rate")
    if rate is None or rate.state != "measured":
        return "The heart rate could not be measured on this loop."
    if "rate_high" in sheet.conditions:
        where = _RATE[GRADE_ABOVE]
    elif "rate_low" in sheet.conditions:
        where = _RATE[GRADE_BELOW]
    else:
        where = _RATE[GRADE_NORMAL]
    return f"The heart rate was {where} the usual adult resting range."


def _rhythm(sheet: FactSheet) -> str:
    if sheet.rhythm is None:
        return "The regularity of the beats could not be judged on this loop."
    return f"The beats on the loop were {sheet.rhythm}."


def _image(sheet: FactSheet) -> str:
    view = sheet.get("view")
    if view is not None and "could not be identified" in view.sentence:
        return ("The loop was selected as an apical four-chamber view, but the left ventricle "
                "could not be identified on it.")  # fmt: skip
    if view is not None and "identified on only" in view.sentence:
        return ("The loop was selected as an apical four-chamber view, but the left ventricle "
                "was identified on only some of its frames.")  # fmt: skip
    return "The loop is an ultrasound video of the heart showing the left ventricle."


def _not_assessed(sheet: FactSheet) -> str:
    del sheet
    return "This analysis does not assess the heart valves or the other heart chambers."


_SENTENCE = {
    "function": _function,
    "size": _size,
    "rate": _rate,
    "rhythm": _rhythm,
    "image": _image,
    "not_assessed": _not_assessed,
}


def plain_sentences(
    sheet: FactSheet, fact_keys: Sequence[str], route_topics: Sequence[str], limit: int
) -> list[str]:
    """At most ``limit`` plain sentences for the facts an answer used (``fact_keys``, in its
    order): those on the question's topics first, then the others. None when the question
    names topics and no plain sentence answers one of them ("What is the stroke volume?": a
    value has no plain words beyond its grade; shown only the LV size, the model defined the
    stroke volume itself, wrongly), so the model adds nothing there."""
    topics = list(dict.fromkeys(_TOPIC_OF_KEY[k] for k in fact_keys if k in _TOPIC_OF_KEY))
    asked = [t for t in topics if set(_ROUTE_TOPICS[t]) & set(route_topics)]
    if route_topics and not asked:
        return []
    chosen = (asked + [t for t in topics if t not in asked])[:limit]
    return [_SENTENCE[t](sheet) for t in topics if t in chosen]


def all_plain_sentences(sheet: FactSheet) -> list[str]:
    """Every plain sentence of the study (for the test that they pass the guard)."""
    return [make(sheet) for make in _SENTENCE.values()]
