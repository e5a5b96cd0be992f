"""The grounding guard: generated text may state only what the node measured.

Every number in a text is found with its unit and the words before it, and must match a
measurement of the same kind: an EF within 0.5 points of the regression or the method-of-disks
EF (the one named, when a method is named: "by the method of disks", "39.4 % (AI regression)"),
a volume within 0.5 mL of the EDV, ESV or stroke volume (the one named, when one is named),
a heart rate within 1 /min. Every word that grades LV systolic function ("normal", "mildly
reduced", "hyperdynamic", negations included) must agree with the ASE/EACVI 2015 grade of the
primary EF (``reporting.interpretation``); one about the heart rate or an LV volume ("normal",
"reduced", "elevated", "tachycardic") must agree with that value's reference range, the one the
EHR's interpretation flag uses, and a severity ("severely") of either fails: the node grades
neither by severity. A grade about something the node does not measure (valves, rhythm, the
right heart) fails too. Anything the guard cannot tie to a measurement
fails, and so does naming another view or modality than the 2D apical four-chamber loop or
describing the patient or the room (position, table), which no loop shows the node: a
false alarm costs a regenerated draft, a miss puts an invented number before a reader.

A value the node does not stand behind (``reporting.values.withheld_values``: the validity gate
withheld it, or it could not be measured) is no fact: any number stated for it fails, and with
the LVEF withheld so does every grade of LV systolic function ("mild LV systolic dysfunction").
What a text may say of it is that it is not measurable, quoting its reason exactly (a quoted
reason is taken out before the checks: "LV not identified on 30 of 30 frames" names frames, not
an EF). The loop's quality score may be quoted too ("quality score 0.82", or the report's own
sentence about it); a quality described in words ("poor image quality") fails.

The parts: ``llm.grounding_facts`` (the values and the LV grade), ``llm.grounding_words``
(sentences, context words, words never said), ``llm.grounding_numbers`` and
``llm.grounding_grades`` (the two checks). This module runs them and keeps every name it
always exported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from inference.types import Measurements
from llm.grounding_facts import (
    ALL_GRADES,
    EF_TOLERANCE_POINTS,
    HEART_RATE_TOLERANCE_BPM,
    KIND_EF,
    KIND_HEART_RATE,
    KIND_QUALITY,
    KIND_UNMEASURED,
    KIND_VOLUME,
    QUALITY_TOLERANCE,
    REDUCED,
    SEVERITIES,
    VOLUME_TOLERANCE_ML,
    Fact,
    LvGrade,
    lv_grade,
    measured_facts,
    quality_facts,
    sd_fact,
)
from llm.grounding_grades import RANGE_KEYS, check_grades
from llm.grounding_numbers import check_numbers
from llm.grounding_words import CITATIONS, labels_of, sentences, word_problems
from llm.types import Verdict
from reporting.interpretation import range_grade
from reporting.values import WithheldValue, loop_quality, withheld_values

if TYPE_CHECKING:
    from llm.facts import FactSheet

__all__ = [
    "ALL_GRADES",
    "EF_TOLERANCE_POINTS",
    "HEART_RATE_TOLERANCE_BPM",
    "KIND_EF",
    "KIND_HEART_RATE",
    "KIND_QUALITY",
    "KIND_UNMEASURED",
    "KIND_VOLUME",
    "QUALITY_TOLERANCE",
    "REDUCED",
    "SEVERITIES",
    "VOLUME_TOLERANCE_ML",
    "Fact",
    "GroundingResult",
    "LvGrade",
    "check_grounding",
    "lv_grade",
    "measured_facts",
    "quality_facts",
]


@dataclass(frozen=True)
class GroundingResult:
    """The guard's answer for one text: its verdict, why it failed, and what it checked."""

    verdict: str  # "pass" | "fail"
    reasons: tuple[str, ...]  # why it failed, one line per unmatched number or word
    matched: tuple[str, ...]  # what was checked and found true, for the reviewer

    @property
    def passed(self) -> bool:
        return self.verdict == Verdict.PASS

    def to_json(self) -> dict[str, object]:
        return {"verdict": self.verdict, "reasons": list(self.reasons)}


def check_grounding(
    text: str, m: Measurements, sex: str | None = None, *, sheet: FactSheet | None = None
) -> GroundingResult:
    """Checks every number and every LV-function grade in ``text`` against ``m``, and the
    claims of ``llm.claims`` (LV size, rhythm, unassessed structures, anatomy, repeats)
    against the study's fact sheet (``sheet``, else built from ``m`` and ``sex``)."""
    from llm.claims import claim_findings
    from llm.facts import build_fact_sheet

    if sheet is None:
        sheet = build_fact_sheet(m, sex)
    claims = claim_findings(text, sheet.lv_size, sheet.rhythm)
    text = claims.masked
    withheld = withheld_values(m)
    facts = measured_facts(m) + quality_facts(m)
    sd = sd_fact(m)
    grade = lv_grade(m, sex)
    text = _without_node_sentences(text, m, withheld)
    ranges = {f.key: range_grade(RANGE_KEYS[f.key], f.value, sex)
              for f in facts if f.key in RANGE_KEYS}  # fmt: skip
    reasons: list[str] = list(claims.reasons)
    matched: list[str] = list(claims.matched)
    subject: str | None = None  # what the previous sentences were about
    for sentence in sentences(CITATIONS.sub("", text)):
        labels = labels_of(sentence)
        reasons.extend(word_problems(sentence))
        check_numbers(sentence, labels, facts, sd, m, withheld, reasons, matched)
        check_grades(sentence, labels, subject, grade, ranges, reasons, matched)
        if labels:
            subject = labels[-1].kind
    verdict = Verdict.FAIL if reasons else Verdict.PASS
    return GroundingResult(verdict, tuple(reasons), tuple(matched))


def _without_node_sentences(text: str, m: Measurements, withheld: list[WithheldValue]) -> str:
    """The text with every exact quote of a withheld value's reason (or of one of the reasons
    it joins) and of the quality score's sentence taken out: their numbers count frames or name
    limits and scales, and must not be read as a measurement."""
    quotes = {part for w in withheld for part in (w.reason, *w.reason.split("; ")) if part}
    quality = loop_quality(m)
    if quality is not None:
        quotes.add(quality.statement.rstrip("."))
    for quote in sorted(quotes, key=len, reverse=True):
        text = re.sub(re.escape(quote), " ", text, flags=re.I)
    return text
