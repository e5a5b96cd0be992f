"""The claim checks of the guard: what a text says about the study beyond its numbers.

The number guard (``llm.grounding``) keeps every number and LV-function grade honest. The
embedded model, asked open questions, wrote true-looking sentences no number check catches:
"The left ventricle is not enlarged." (for an EDV above the female range), "The left ventricle
is a large vessel that is responsible for pumping blood throughout the body." and the same
sentence about "a specialized equipment called an echocardiogram machine" three times. So:

* LV size words ("enlarged", "dilated", "large", "small", "normal in size", negations
  included) must agree with the fact sheet's size (sex-specific EDV range, indexed when
  height and weight are known); with no size graded, none may be stated.
* Rate words in a sentence about the heart rate, pulse or beats ("fast", "rapid", "slow",
  negations included) must agree with where the measured rate lies in the usual adult resting
  range (the model wrote "the heart is beating too fast" for a rate within it).
* Rhythm words: "regular"/"irregular" must agree with the cycle lengths; a named rhythm
  ("sinus rhythm", "atrial fibrillation", "arrhythmia") needs an ECG and fails unless hedged.
* Structures the node does not assess (valves, wall motion, wall thickness, right ventricle,
  atria, pericardium) may be named only in a sentence that says they were not assessed.
* Anatomy, physiology and the equipment are stated only in the knowledge base's own words: a
  sentence of that kind that is not a vetted sentence fails. Any sentence of the model's own
  about blood is one ("the stroke volume is the amount of blood that is pumped by the heart per
  minute" is false: that is the cardiac output).
* A sentence said twice (in an answer, also one whose words all stand in an earlier one) fails,
  and an answer that states nothing about the study (no fact, no knowledge entry, no checked
  claim) fails.

``check_claims`` accepts every sentence of the fact sheet and of the knowledge entries that
apply to the study verbatim (they are true by construction) and checks everything else with
these claim checks and the number guard. ``claim_findings`` is what ``check_grounding`` runs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llm.types import Verdict

if TYPE_CHECKING:
    from llm.facts import FactSheet
    from llm.grounding import GroundingResult
    from llm.knowledge_entries import KnowledgeEntry

MIN_CONTAINED_WORDS = 5  # a shorter sentence inside an earlier one may be a fair summary
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_WORD = re.compile(r"[a-z0-9]+(?:\.[0-9]+)?")
_NEGATION = re.compile(r"\b(?:not|no|without|never|nor|neither)\b|n't\b", re.I)

_LV_SUBJECT = re.compile(
    r"\bleft ventric\w*|\bLV\b|\bventricle\b|\bheart\b|\bchamber\b|\bcavity\b", re.I
)
_SIZE_WORDS = (
    ("normal", re.compile(r"\bnormal(?:ly)?[- ]sized?\b|\bnormal in size\b|"
                          r"\bsize (?:is |was )?(?:normal\b|(?:within|in) (?:the )?(?:normal|"
                          r"reference) range\b)", re.I)),
    ("enlarged", re.compile(r"\benlarge(?:d|ment)\b|\bdilat(?:ed|ation)\b|\bbigger than\b|"
                            r"\blarger than\b|\b(?:is|was|looks|appears) (?:too |very )?"
                            r"(?:large|big)\b", re.I)),
    ("small", re.compile(r"\bsmaller than\b|\b(?:is|was|looks|appears) (?:too |very )?small\b",
                         re.I)),
)  # fmt: skip
_SIZES = frozenset({"normal", "enlarged", "small"})

_RHYTHM_SUBJECT = re.compile(
    r"\brhythm\w*|\bbeats?\b|\bheartbeats?\b|\bintervals?\b|\bcycles?\b|\bpulse\b", re.I
)
_REGULARITY = re.compile(r"\b(ir)?regular(?:ly)?\b", re.I)
_NAMED_RHYTHM = re.compile(
    r"\bsinus rhythm\b|\batrial fibrillation\b|\bAF\b|\bafib\b|\batrial flutter\b|"
    r"\barrhythmi\w*|\bectopic\b|\bextra ?systol\w*|\bpremature (?:beats?|contractions?)\b",
    re.I,
)
_ECG_HEDGE = re.compile(r"\bECG\b|electrocardiogra\w*|\bcannot\b|can't|\bnot (?:be )?"
                        r"(?:named|assessed|judged|diagnosed)\b", re.I)  # fmt: skip
_UNASSESSED = re.compile(
    r"\bvalv\w*|\bmitral\b|\baortic\b|\btricuspid\b|\bpulmonary valve\b|\bwall motion\b|"
    r"\bwall thickness\b|\bright ventric\w*|\bRV\b|\batri(?:um|a|al)\b|pericardi\w*|"
    r"\bdiastolic function\b|\bfilling pressures?\b",
    re.I,
)
_HEDGE = re.compile(
    r"\bnot (?:be )?(?:assessed|measured|evaluated|examined|shown|seen|checked|looked at|"
    r"assessable|part of)\b|\bcannot\b|can't|\bcould not\b|\bdoes not (?:assess|measure|show|"
    r"look|include|cover)\b|\bdid not\b|\boutside\b|\bbeyond\b|\bneeds? (?:the|a) full\b",
    re.I,
)
_ANATOMY = re.compile(
    r"\bvessels?\b|\barter(?:y|ies)\b|\bveins?\b|\baorta\b|\bcirculat\w*|"
    r"\bpumps? (?:the )?blood\b|\bpumping (?:the )?blood\b|\bresponsible for\b|"
    r"\bis (?:a|an|the) (?:\w+ ){0,2}(?:chamber|organ|muscle|pump|part of)\b|"
    r"\bblood\b|\boxygen\w*\b",
    re.I,
)
_EQUIPMENT = re.compile(
    r"\bmachines?\b|\bequipment\b|\btransducers?\b|\bprobes?\b|\bgel\b|\bsound waves?\b|"
    r"\bultrasound waves?\b|\btechnicians?\b|\bsonographers?\b",
    re.I,
)


# words for how fast the heart beats, with what they claim about the rate's range
_RATE_SUBJECT = re.compile(r"\bheart ?rate\b|\bpulse\b|\bbeat(?:s|ing)?\b|\bheartbeats?\b",
                           re.I)  # fmt: skip
_RATE_WORDS = (
    ("high", re.compile(r"\b(?:fast|faster|rapid(?:ly)?|quick(?:ly)?|racing|high)\b", re.I)),
    ("low", re.compile(r"\b(?:slow|slower|slowly|low)\b", re.I)),
)
_RATES = frozenset({"high", "low", "normal"})


def rate_claims(text: str, sheet: FactSheet) -> list[str]:
    """Why the speed words of ``text`` ("the heart is beating too fast") disagree with the
    measured heart rate's place in the usual adult resting range (the fact sheet's
    ``rate_high``/``rate_low``), or cannot be said because no rate was measured."""
    from llm.facts import STATE_MEASURED

    fact = sheet.get("heart_rate")
    measured = fact is not None and fact.state == STATE_MEASURED
    rate = ("high" if "rate_high" in sheet.conditions else
            "low" if "rate_low" in sheet.conditions else "normal")  # fmt: skip
    reasons = []
    for sentence in sentences(text):
        if not _RATE_SUBJECT.search(sentence):
            continue
        for said_rate, pattern in _RATE_WORDS:
            for mt in pattern.finditer(sentence):
                negated = _negated(sentence, mt.start())
                said = (_RATES - {said_rate}) if negated else {said_rate}
                phrase = f"{'not ' if negated else ''}{mt.group(0)}"
                if not measured:
                    reasons.append(f"{phrase!r}: no heart rate was measured on this loop "
                                   f"(in: {sentence!r})")  # fmt: skip
                elif rate not in said:
                    where = {"high": "above", "low": "below", "normal": "within"}[rate]
                    reasons.append(f"{phrase!r}: the heart rate was {where} the usual adult "
                                   f"resting range (in: {sentence!r})")  # fmt: skip
    return reasons


@dataclass(frozen=True)
class ClaimFindings:
    """What the claim checks found in a text: ``reasons`` (failures), ``matched`` (claims found
    true) and ``masked`` (the text with the checked size words blanked, so the number guard does
    not read "normal in size" as an LV-function grade)."""

    reasons: tuple[str, ...]
    matched: tuple[str, ...]
    masked: str


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def _words(sentence: str) -> list[str]:
    return _WORD.findall(sentence.lower())


def _negated(sentence: str, start: int) -> bool:
    before = sentence[:start].split()[-3:]
    return any(_NEGATION.search(w) for w in before)


def repeated_sentences(text: str, *, contained: bool = True) -> tuple[str, ...]:
    """Each sentence that repeats an earlier one: word for word, or (``contained``) with every
    one of its (at least ``MIN_CONTAINED_WORDS``) words already in one earlier sentence. A
    structured report repeats words on purpose ("LVEF not measurable: ..." then "LVEF (AI
    regression) not measurable: ..."), so the guard of report text checks exact repeats only."""
    seen: list[tuple[str, ...]] = []
    repeats = []
    for sentence in sentences(text):
        words = tuple(_words(sentence))
        if not words:
            continue
        inside = contained and len(set(words)) >= MIN_CONTAINED_WORDS
        if any(words == earlier or (inside and set(words) <= set(earlier)) for earlier in seen):
            repeats.append(sentence)
        seen.append(words)
    return tuple(repeats)


def claim_findings(text: str, lv_size: str | None, rhythm: str | None) -> ClaimFindings:
    """The claim checks on ``text`` for a study whose LV size is ``lv_size`` ("normal",
    "enlarged", "small", None: not graded) and whose cycle lengths are ``rhythm``
    ("regular", "irregular", None: not judged)."""
    reasons = [f"repeated sentence: {s!r}" for s in repeated_sentences(text, contained=False)]
    matched: list[str] = []
    masked = text
    for sentence in sentences(text):
        quoted = f"(in: {sentence!r})"
        if _LV_SUBJECT.search(sentence):
            for size, pattern in _SIZE_WORDS:
                for mt in pattern.finditer(sentence):
                    negated = _negated(sentence, mt.start())
                    said = (_SIZES - {size}) if negated else {size}
                    phrase = f"{'not ' if negated else ''}{mt.group(0)}"
                    if lv_size is None:
                        reasons.append(f"{phrase!r}: LV size was not graded on this study "
                                       f"{quoted}")  # fmt: skip
                    elif lv_size not in said:
                        reasons.append(f"{phrase!r}: the left ventricle is {lv_size} by "
                                       f"its sex-specific EDV range {quoted}")  # fmt: skip
                    else:
                        matched.append(phrase)
                        masked = masked.replace(mt.group(0), " " * len(mt.group(0)), 1)
        if _RHYTHM_SUBJECT.search(sentence):
            for mt in _REGULARITY.finditer(sentence):
                word = "irregular" if mt.group(1) else "regular"
                negated = _negated(sentence, mt.start())
                said = {"regular", "irregular"} - {word} if negated else {word}
                phrase = f"{'not ' if negated else ''}{mt.group(0)}"
                if rhythm is None:
                    reasons.append(f"{phrase!r}: the regularity of the beats could not be "
                                   f"judged on this loop {quoted}")  # fmt: skip
                elif rhythm not in said:
                    reasons.append(f"{phrase!r}: the cycle lengths on the loop were {rhythm} "
                                   f"{quoted}")  # fmt: skip
                else:
                    matched.append(phrase)
        named = _NAMED_RHYTHM.search(sentence)
        if named and not _ECG_HEDGE.search(sentence):
            reasons.append(f"{named.group(0)!r}: naming a rhythm needs an ECG, which the node "
                           f"does not read {quoted}")  # fmt: skip
        structure = _UNASSESSED.search(sentence)
        if structure and not _HEDGE.search(sentence):
            reasons.append(f"{structure.group(0)!r}: the node does not assess it, and the "
                           f"sentence does not say so {quoted}")  # fmt: skip
        anatomy = _ANATOMY.search(sentence)
        if anatomy:
            reasons.append(f"{anatomy.group(0)!r}: anatomy is stated only in the knowledge "
                           f"base's words {quoted}")  # fmt: skip
        equipment = _EQUIPMENT.search(sentence)
        if equipment:
            reasons.append(f"{equipment.group(0)!r}: describes the equipment, not this study "
                           f"{quoted}")  # fmt: skip
    return ClaimFindings(tuple(reasons), tuple(matched), masked)


def _normalised(sentence: str) -> str:
    return " ".join(_words(sentence))


def vetted_sentences(
    sheet: FactSheet, entries: Sequence[KnowledgeEntry] | None = None
) -> frozenset[str]:
    """The fact sheet's sentences and those of the knowledge entries that apply to the study
    (all of them when ``entries`` is None), normalised: the guard accepts these verbatim."""
    from llm.compose import FIXED_SENTENCES
    from llm.knowledge import applicable_entries

    chosen = applicable_entries(sheet) if entries is None else entries
    texts = [*sheet.sentences, *(e.text for e in chosen), *FIXED_SENTENCES]
    return frozenset(_normalised(s) for text in texts for s in sentences(text))


def check_claims(
    text: str, sheet: FactSheet, entries: Sequence[KnowledgeEntry] | None = None
) -> GroundingResult:
    """The whole guard on an answer: vetted sentences pass as they are; every other sentence
    goes through the claim checks and the number guard; repeats and empty answers fail."""
    from llm.grounding import GroundingResult, check_grounding

    vetted = vetted_sentences(sheet, entries)
    said = sentences(text)
    own = [s for s in said if _normalised(s) not in vetted]
    # a vetted sentence may share its words with another (each withheld value's statement);
    # the model's own may not restate one in part
    reasons = [
        f"repeated sentence: {s!r}"
        for s in repeated_sentences(text)
        if _normalised(s) not in vetted or s in repeated_sentences(text, contained=False)
    ]
    matched = [s for s in said if _normalised(s) in vetted]
    result = check_grounding(" ".join(own), sheet.measurements, sheet.sex, sheet=sheet)
    reasons += [r for r in result.reasons if not r.startswith("repeated sentence")]
    reasons += rate_claims(" ".join(own), sheet)
    matched += list(result.matched)
    if said and not matched and not reasons:
        reasons.append("the answer states nothing about this study")
    if not said:
        reasons.append("the answer is empty")
    verdict = Verdict.FAIL if reasons else Verdict.PASS
    return GroundingResult(verdict, tuple(dict.fromkeys(reasons)), tuple(matched))
