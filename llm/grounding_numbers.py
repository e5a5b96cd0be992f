"""The number checks of the grounding guard: every number in a sentence, with its unit and the
words before it, must be a measured value of the kind named (within its tolerance).

Why a module of its own: which measurement a number may be (the unit, the named method, an SD,
a count of beats) is the densest part of the guard and changes on its own.
"""

from __future__ import annotations

import re

from inference.types import Measurements
from llm.grounding_facts import (
    KIND_EF,
    KIND_HEART_RATE,
    KIND_QUALITY,
    KIND_UNMEASURED,
    KIND_VOLUME,
    Fact,
)
from llm.grounding_words import Label
from reporting.values import (
    KEY_HEART_RATE,
    KEY_LV_EDV,
    KEY_LV_ESV,
    KEY_LV_SV,
    KEY_LVEF_DISKS,
    KEY_LVEF_REGRESSION,
    NOT_MEASURABLE,
    WithheldValue,
)

_KIND_WORDS = {
    KIND_EF: "EF",
    KIND_VOLUME: "LV volume",
    KIND_HEART_RATE: "heart rate",
    KIND_QUALITY: "quality score",
}
# the kind of number each reported value is (``reporting.values`` keys)
_KIND_OF_KEY = {
    KEY_LVEF_REGRESSION: KIND_EF,
    KEY_LVEF_DISKS: KIND_EF,
    KEY_LV_EDV: KIND_VOLUME,
    KEY_LV_ESV: KIND_VOLUME,
    KEY_LV_SV: KIND_VOLUME,
    KEY_HEART_RATE: KIND_HEART_RATE,
}

_NUMBER = re.compile(r"(?<![\w.,])(\d+(?:\.\d+)?)")
_UNITS = (
    (KIND_EF, re.compile(r"\s*(%|percent\b|per\s?cent\b)", re.I)),
    (KIND_VOLUME, re.compile(r"\s*(m[lL]\b|milli-?lit(?:er|re)s?\b|cc\b|cm3\b|cm³)")),
    (KIND_HEART_RATE, re.compile(
        r"\s*(bpm\b|beats?\s*(?:per|/|a)\s*min(?:ute)?\b|/\s?min\b|per\s+minute\b|min-1\b)",
        re.I)),
    ("count", re.compile(r"\s*(beats?\b|cardiac cycles?\b|cycles?\b|frames?\b)", re.I)),
    ("foreign", re.compile(
        r"\s*(mm\s?Hg\b|mmHg|mm\b|cm2\b|cm²|cm/s\b|m/s\b|cm\b|ms\b|s\b|sec(?:onds?)?\b|"
        r"min(?:utes?)?\b|kg\b|g\b|mg\b|years?\b|y/?o\b|hours?\b|days?\b|weeks?\b|months?\b|"
        r"l/min\b|L\b|Hz\b|°|mmol\b|ng\b)", re.I)),
)  # fmt: skip
# "2D", "3rd": a digit run that is part of a word, not a quantity
_IDENTIFIER_AFTER = re.compile(r"(?:D|st|nd|rd|th)\b")
_SD_BEFORE = re.compile(r"(±|\+/-|\+-|\bSD\b|standard deviation|variation)[^.]*$", re.I)
# what may stand between a number and the method named after it: "47.0 % (method of disks)",
# "39.4 % by AI regression"
_METHOD_AFTER = re.compile(
    r"\s*(?:[(,;:-]\s*)?(?:(?:by|with|using|from|on|per)\s+)?(?:the\s+)?", re.I
)


def _unit_at(sentence: str, end: int) -> tuple[str | None, str, int]:
    """(unit kind, unit text, end) right after a number; kind None when there is no unit."""
    for kind, pattern in _UNITS:
        mt = pattern.match(sentence, end)
        if mt:
            return kind, mt.group(1), mt.end()
    return None, "", end


def check_numbers(
    sentence: str,
    labels: list[Label],
    facts: tuple[Fact, ...],
    sd: Fact | None,
    m: Measurements,
    withheld: list[WithheldValue],
    reasons: list[str],
    matched: list[str],
) -> None:
    """Appends each number of ``sentence`` to ``matched`` (as quoted) or, with why, to
    ``reasons``."""
    window_start = 0
    for mt in _NUMBER.finditer(sentence):
        number = float(mt.group(1))
        unit_kind, unit_text, unit_end = _unit_at(sentence, mt.end())
        if unit_kind is None and _IDENTIFIER_AFTER.match(sentence, mt.end()):
            window_start = mt.end()
            continue  # an identifier such as "2D" or "3rd", not a quantity
        quoted = sentence[mt.start() : unit_end].strip()
        window = sentence[window_start : mt.start()]
        near = [lab for lab in labels if window_start <= lab.start and lab.end <= mt.start()]
        window_start = unit_end
        method = _method_after(sentence, unit_end, labels) if unit_kind == KIND_EF else None
        if method is not None:  # "47.0 % (method of disks)": it names this number's method
            near.append(method)
            window_start = method.end
        problem = _match_number(number, unit_kind, unit_text, window, near, facts, sd, m,
                                withheld)  # fmt: skip
        if problem is None:
            matched.append(quoted)
        else:
            reasons.append(f"{quoted!r}: {problem} (in: {sentence.strip()!r})")


def _is_method(label: Label) -> bool:
    return label.kind == KIND_EF and label.key is not None


def _method_after(sentence: str, end: int, labels: list[Label]) -> Label | None:
    """The EF method named right after a number and its unit ("39.4 % by AI regression"), so
    it pairs with that number rather than with the next one."""
    start = _METHOD_AFTER.match(sentence, end)
    at = start.end() if start else end
    return next((lab for lab in labels if _is_method(lab) and lab.start == at), None)


def _match_number(
    number: float,
    unit_kind: str | None,
    unit_text: str,
    window: str,
    near: list[Label],
    facts: tuple[Fact, ...],
    sd: Fact | None,
    m: Measurements,
    withheld: list[WithheldValue],
) -> str | None:
    """None when the number is a measured one; else why not."""
    if unit_kind == "foreign":
        return f"the node measures nothing in {unit_text}"
    # an EF method's name pairs an EF with its method; it names no quantity of its own
    methods = {lab.key for lab in near if _is_method(lab)}
    near = [lab for lab in near if not _is_method(lab)]
    if unit_kind == "count":
        # "heart rate was 2 beats": a count standing where a rate or an EF is named ("mean of
        # 2 beats" after "EDV - ESV" is a method, and stays allowed)
        if any(lab.kind in (KIND_HEART_RATE, KIND_EF) for lab in near):
            return "a count of beats or frames where a heart rate or an EF is named"
        counts = {len(m.beats), sum(b.complete for b in m.beats), m.n_frames}
        return None if number in counts else "matches no count of beats or frames analysed"
    if sd is not None and unit_kind in (None, KIND_EF) and _SD_BEFORE.search(window):
        return None if sd.matches(number) else f"is not the measured LVEF SD ({sd.text})"
    kinds = {lab.kind for lab in near if lab.kind != KIND_UNMEASURED}
    if unit_kind is not None:
        if kinds and unit_kind not in kinds:
            named = ", ".join(sorted(_KIND_WORDS[k] for k in kinds))
            return f"a {_KIND_WORDS[unit_kind]} unit after a mention of {named}"
        kind: str | None = unit_kind
    elif near and near[-1].kind != KIND_UNMEASURED:
        kind = near[-1].kind
    elif near:
        return "a number about something the node does not measure"
    else:
        kind = KIND_EF if methods else None
    candidates = [f for f in facts if kind is None or f.kind == kind]
    keys = {lab.key for lab in near if lab.kind == kind and lab.key is not None}
    if kind == KIND_EF:
        keys = {k for k in methods if k is not None}
    if keys:
        candidates = [f for f in candidates if f.key in keys]
    if any(f.matches(number) for f in candidates):
        return None
    if keys:  # a method was named: is the number the other method's?
        other = next((f for f in facts if f.kind == kind and f.key not in keys
                      and f.matches(number)), None)  # fmt: skip
        if other is not None:
            named = "; ".join(f"{f.label} {f.text}" for f in candidates) or "not measured"
            return f"is the {other.label} value, stated for another method (measured: {named})"
    if not candidates:
        what = "value" if kind is None else _KIND_WORDS[kind]
        unsure = [w for w in withheld if kind is None or _KIND_OF_KEY[w.key] == kind]
        if unsure:
            named = "; ".join(f"{w.label} {NOT_MEASURABLE} ({w.reason})" for w in unsure)
            return f"no {what} of that kind was measured: {named}, so no number may be stated"
        return f"no {what} of that kind was measured"
    measured = "; ".join(f"{f.label} {f.text}" for f in candidates)
    return f"matches no measured value (measured: {measured})"
