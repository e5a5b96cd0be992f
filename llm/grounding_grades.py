"""The grade checks of the grounding guard: a word that grades LV systolic function must agree
with the ASE/EACVI 2015 grade of the primary EF, one about the heart rate or an LV volume with
that value's reference range; grading something unmeasured, or image quality in words, fails.

Why a module of its own: grade words are read differently from numbers (negations, the subject
carried over from the sentence before, severities the node never gives).
"""

from __future__ import annotations

import re

from llm.grounding_facts import (
    ALL_GRADES,
    KIND_EF,
    KIND_HEART_RATE,
    KIND_QUALITY,
    KIND_UNMEASURED,
    KIND_VOLUME,
    REDUCED,
    SEVERITIES,
    LvGrade,
)
from llm.grounding_words import Label
from reporting.interpretation import (
    GRADE_ABOVE,
    GRADE_BELOW,
    GRADE_MILD,
    GRADE_MODERATE,
    GRADE_NORMAL,
    GRADE_SEVERE,
)
from reporting.values import KEY_HEART_RATE, KEY_LV_EDV, KEY_LV_ESV, NOT_MEASURABLE

# the facts that have a reference range, and their keys in ``reporting.values``
RANGE_KEYS = {"edv": KEY_LV_EDV, "esv": KEY_LV_ESV, "heart_rate": KEY_HEART_RATE}

# a verb of the pumping, then up to two words ("pumps with", "squeezes a bit")
_PUMPING = r"\b(?:pump|squeez|contract)\w*\s+(?:\w+\s+){0,2}?"
# grade words; the phrases come first and mask what they cover
_GRADE_WORDS = (
    (frozenset({GRADE_ABOVE}), re.compile(r"\btachycardi\w*|\belevated\b", re.I)),
    (REDUCED, re.compile(r"\bbradycardi\w*", re.I)),
    (REDUCED, re.compile(r"below (?:the )?(?:lower limit of )?normal(?: range| limits?)?", re.I)),
    (frozenset({GRADE_ABOVE}), re.compile(
        r"above (?:the )?(?:upper limit of )?(?:normal|reference)(?: range| limits?)?|"
        r"hyperdynamic|supra-?normal|hypercontractil\w*", re.I)),
    # lay words for the pumping ("pumps harder than usual", "squeezes less strongly"): the
    # stage-2 chat adapter wrote these for a reduced LVEF, and no word above checks them
    (frozenset({GRADE_ABOVE}), re.compile(
        _PUMPING + r"(?:(?:much |even |a (?:little|bit) )?more (?:strongly|forcefully|powerfully)"
        r"|harder|stronger)\b", re.I)),
    (REDUCED, re.compile(
        _PUMPING + r"(?:(?:much |far |clearly |somewhat |a (?:little|bit) )?less (?:strongly|"
        r"forcefully|powerfully|well|hard)|weaker|weakly)\b", re.I)),
    (frozenset({GRADE_NORMAL, GRADE_ABOVE}), re.compile(
        _PUMPING + r"(?:strongly|forcefully|powerfully|well)\b", re.I)),
    (frozenset({GRADE_NORMAL}), re.compile(
        r"(?:within|in) (?:the )?normal (?:range|limits)|\bnormal\b|\bnormally\b", re.I)),
    (frozenset({GRADE_NORMAL, GRADE_ABOVE}), re.compile(
        r"\b(?:preserved|healthy|good|excellent|strong|robust)\b", re.I)),
    (frozenset({GRADE_MILD}), re.compile(r"\bmild(?:ly)?\b", re.I)),
    (frozenset({GRADE_MODERATE}), re.compile(r"\bmoderate(?:ly)?\b", re.I)),
    (frozenset({GRADE_SEVERE}), re.compile(r"\bsevere(?:ly)?\b", re.I)),
    (REDUCED, re.compile(
        r"\b(?:reduced|reduction|impaired|impairment|decreased?|decline|depressed|"
        r"dysfunction(?:al)?|weak(?:ened)?|poor)\b",
        re.I)),
    (REDUCED | {GRADE_ABOVE}, re.compile(r"\babnormal(?:ly)?\b", re.I)),
)  # fmt: skip
_NEGATION = re.compile(r"\b(?:not|no|without|never|nor)\b|n't\b", re.I)


def check_grades(
    sentence: str,
    labels: list[Label],
    subject: str | None,
    grade: LvGrade,
    ranges: dict[str, str | None],
    reasons: list[str],
    matched: list[str],
) -> None:
    """Appends each grade word of ``sentence`` to ``matched`` or, with why, to ``reasons``;
    ``subject`` is what the sentences before were about."""
    masked = sentence
    for claim, pattern in _GRADE_WORDS:
        for mt in pattern.finditer(masked):
            about = _subject_of(mt.start(), labels, subject)
            words = mt.group(0)
            before = masked[: mt.start()].split()[-3:]
            negated = any(_NEGATION.search(w) for w in before)
            said = (ALL_GRADES - claim) if negated else claim
            phrase = f"{'not ' if negated else ''}{words}"
            if about in (KIND_HEART_RATE, KIND_VOLUME):
                keys = _range_subject(mt.start(), labels, about)
                problem = _range_problem(claim, said, keys, ranges)
                if problem is None:
                    matched.append(phrase)
                else:
                    reasons.append(f"{phrase!r}: {problem} (in: {sentence.strip()!r})")
            elif about == KIND_UNMEASURED:
                reasons.append(f"{phrase!r} grades something the node does not measure "
                               f"(in: {sentence.strip()!r})")  # fmt: skip
            elif about == KIND_QUALITY:
                reasons.append(f"{phrase!r}: the node grades no image quality in words, it "
                               f"gives its score (in: {sentence.strip()!r})")  # fmt: skip
            elif grade.ef is None and grade.withheld is not None:
                reasons.append(
                    f"{phrase!r}: LVEF {NOT_MEASURABLE} ({grade.withheld.reason}), so no grade "
                    f"may be stated (in: {sentence.strip()!r})"
                )
            elif grade.ef is None:
                reasons.append(f"{phrase!r}: no LVEF was measured, so no grade may be stated")
            elif grade.grade is None:
                reasons.append(
                    f"{phrase!r}: LVEF {grade.ef.text} is graded differently for men and "
                    "women and the sex is unknown, so no grade may be stated"
                )
            elif grade.grade not in said:
                reasons.append(
                    f"{phrase!r} disagrees with LVEF {grade.ef.text}: {grade.phrase} "
                    f"(ASE/EACVI 2015) (in: {sentence.strip()!r})"
                )
            else:
                matched.append(phrase)
        masked = pattern.sub(lambda mt: " " * len(mt.group(0)), masked)


def _range_subject(position: int, labels: list[Label], about: str) -> tuple[str, ...]:
    """The facts a grade word about the heart rate or a volume speaks of: the nearest named
    one before it (else after it), every volume with a range for plain "volumes"."""
    if about == KIND_HEART_RATE:
        return ("heart_rate",)
    before = [lab for lab in labels if lab.end <= position and lab.kind == KIND_VOLUME]
    after = [lab for lab in labels if lab.start >= position and lab.kind == KIND_VOLUME]
    named = before[-1] if before else (after[0] if after else None)
    if named is None or named.key is None:
        return ("edv", "esv")
    return (named.key,)


def _range_problem(
    claim: frozenset[str], said: frozenset[str], keys: tuple[str, ...],
    ranges: dict[str, str | None],
) -> str | None:  # fmt: skip
    """None when what a grade word says of a heart rate or volume holds for every fact in
    ``keys``; else why not. LV grades map onto ranges: normal -> normal, above -> above, any
    reduced grade -> below."""
    if claim in SEVERITIES:
        return "the node grades no severity of a heart rate or an LV volume"
    as_range = {GRADE_NORMAL: GRADE_NORMAL, GRADE_ABOVE: GRADE_ABOVE}
    allowed = {as_range.get(g, GRADE_BELOW) for g in said}
    for key in keys:
        if key not in RANGE_KEYS:
            return "the node has no reference range for that value"
        if key not in ranges:
            return "that value was not measured"
        measured = ranges[key]
        if measured is None:
            return "its reference range depends on sex, which is unknown, so no grade may be stated"
        if measured not in allowed:
            return f"the measured value is {measured} ({key.replace('_', ' ')})"
    return None


def _subject_of(position: int, labels: list[Label], carried: str | None) -> str:
    before = [lab for lab in labels if lab.end <= position]
    if before:
        return before[-1].kind
    after = [lab for lab in labels if lab.start >= position]
    if after:
        return after[0].kind
    return carried or KIND_EF
