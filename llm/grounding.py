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
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from inference.types import Measurements
from llm.types import Verdict
from reporting.interpretation import (
    GRADE_ABOVE,
    GRADE_BELOW,
    GRADE_MILD,
    GRADE_MODERATE,
    GRADE_NORMAL,
    GRADE_SEVERE,
    lvef_grade,
    range_grade,
)
from reporting.values import (
    KEY_HEART_RATE,
    KEY_LV_EDV,
    KEY_LV_ESV,
    KEY_LV_SV,
    KEY_LVEF_DISKS,
    KEY_LVEF_REGRESSION,
    NOT_MEASURABLE,
    QUALITY_DECIMALS,
    QUALITY_LABEL,
    QUALITY_THRESHOLD,
    WithheldValue,
    loop_quality,
    withheld_ef,
    withheld_values,
)

if TYPE_CHECKING:
    from llm.facts import FactSheet

EF_TOLERANCE_POINTS = 0.5
VOLUME_TOLERANCE_ML = 0.5
HEART_RATE_TOLERANCE_BPM = 1.0

KIND_EF = "ef"
KIND_VOLUME = "volume"
KIND_HEART_RATE = "heart_rate"
KIND_UNMEASURED = "unmeasured"
KIND_QUALITY = "quality"
QUALITY_TOLERANCE = 0.005
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

ALL_GRADES = frozenset({GRADE_NORMAL, GRADE_ABOVE, GRADE_MILD, GRADE_MODERATE, GRADE_SEVERE})
REDUCED = frozenset({GRADE_MILD, GRADE_MODERATE, GRADE_SEVERE})
SEVERITIES = (frozenset({GRADE_MILD}), frozenset({GRADE_MODERATE}), frozenset({GRADE_SEVERE}))
# the facts that have a reference range, and their keys in ``reporting.values``
_RANGE_KEYS = {"edv": KEY_LV_EDV, "esv": KEY_LV_ESV, "heart_rate": KEY_HEART_RATE}


@dataclass(frozen=True)
class Fact:
    """One measured value a text may quote: ``text`` is how prompts print it."""

    key: str  # "ef_regression" | "ef_disks" | "ef_sd" | "edv" | "esv" | "sv" | "heart_rate"
    label: str
    kind: str
    value: float
    unit: str
    tolerance: float
    decimals: int = 1

    @property
    def text(self) -> str:
        return f"{self.value:.{self.decimals}f} {self.unit}".strip()

    def matches(self, number: float) -> bool:
        return abs(number - self.value) <= self.tolerance + 1e-9


def measured_facts(m: Measurements) -> tuple[Fact, ...]:
    """The numbers a text may state, from the measurements alone (nulls and withheld values
    are left out)."""
    withheld = {w.key for w in withheld_values(m)}
    keys = {"ef_regression": KEY_LVEF_REGRESSION, "ef_disks": KEY_LVEF_DISKS, "edv": KEY_LV_EDV,
            "esv": KEY_LV_ESV, "sv": KEY_LV_SV, "heart_rate": KEY_HEART_RATE}  # fmt: skip
    stroke = None if m.edv_ml is None or m.esv_ml is None else m.edv_ml - m.esv_ml
    rows = (
        ("ef_regression", "LVEF (AI regression)", KIND_EF, m.ef_percent, "%",
         EF_TOLERANCE_POINTS),
        ("ef_disks", "LVEF (method of disks)", KIND_EF, m.ef_disks_percent, "%",
         EF_TOLERANCE_POINTS),
        ("edv", "LV end-diastolic volume", KIND_VOLUME, m.edv_ml, "mL", VOLUME_TOLERANCE_ML),
        ("esv", "LV end-systolic volume", KIND_VOLUME, m.esv_ml, "mL", VOLUME_TOLERANCE_ML),
        ("sv", "LV stroke volume", KIND_VOLUME, stroke, "mL", VOLUME_TOLERANCE_ML),
        ("heart_rate", "Heart rate", KIND_HEART_RATE, m.heart_rate_bpm, "/min",
         HEART_RATE_TOLERANCE_BPM),
    )  # fmt: skip
    return tuple(
        Fact(key, label, kind, float(value), unit, tol)
        for key, label, kind, value, unit, tol in rows
        if value is not None and keys[key] not in withheld
    )


def quality_facts(m: Measurements) -> tuple[Fact, ...]:
    """The loop's quality score and the threshold its sentence names ("below 0.50 values are
    withheld"), which a text quoting the report may repeat; none for measurements from before
    the validity gate."""
    if m.quality_score is None:
        return ()
    return tuple(
        Fact(key, label, KIND_QUALITY, value, "", QUALITY_TOLERANCE, QUALITY_DECIMALS)
        for key, label, value in (
            ("quality_score", QUALITY_LABEL, float(m.quality_score)),
            ("quality_threshold", f"{QUALITY_LABEL} threshold", QUALITY_THRESHOLD),
        )
    )


def _sd_fact(m: Measurements) -> Fact | None:
    if m.ef_sd_percent is None:
        return None
    return Fact("ef_sd", "LVEF SD over beats", KIND_EF, float(m.ef_sd_percent), "%",
                EF_TOLERANCE_POINTS)  # fmt: skip


@dataclass(frozen=True)
class LvGrade:
    """The ASE/EACVI 2015 grade of the primary EF. ``grade`` is None when there is no EF, or
    when the sex is unknown and the two sexes' grades differ (then no grade may be stated)."""

    ef: Fact | None
    grade: str | None
    candidates: frozenset[str]
    withheld: WithheldValue | None = None  # the LVEF the node does not stand behind

    @property
    def phrase(self) -> str:
        """The words prompts give the model, so it never has to grade anything itself."""
        if self.ef is None and self.withheld is not None:
            return f"not graded: LVEF {NOT_MEASURABLE} ({self.withheld.reason}); state no grade"
        if self.ef is None:
            return "not assessed (no LVEF measured)"
        if self.grade is None:
            return (
                "not graded: the reference range depends on sex, which is unknown; state no grade"
            )
        return {
            GRADE_NORMAL: "normal LV systolic function",
            GRADE_ABOVE: "LVEF above the normal range (hyperdynamic)",
            GRADE_MILD: "mildly reduced LV systolic function (mildly abnormal LVEF)",
            GRADE_MODERATE: "moderately reduced LV systolic function (moderately abnormal LVEF)",
            GRADE_SEVERE: "severely reduced LV systolic function (severely abnormal LVEF)",
        }[self.grade]


def lv_grade(m: Measurements, sex: str | None) -> LvGrade:
    """The primary EF (regression, else method of disks) graded for ``sex`` ("M"/"F"/other)."""
    facts = {f.key: f for f in measured_facts(m)}
    ef = facts.get("ef_regression") or facts.get("ef_disks")
    if ef is None:
        return LvGrade(None, None, frozenset(), withheld_ef(withheld_values(m)))
    sexes = (sex,) if sex in ("M", "F") else ("M", "F")
    grades = frozenset(lvef_grade(ef.value, s) for s in sexes)
    return LvGrade(ef, next(iter(grades)) if len(grades) == 1 else None, grades)


@dataclass(frozen=True)
class GroundingResult:
    verdict: str  # "pass" | "fail"
    reasons: tuple[str, ...]  # why it failed, one line per unmatched number or word
    matched: tuple[str, ...]  # what was checked and found true, for the reviewer

    @property
    def passed(self) -> bool:
        return self.verdict == Verdict.PASS

    def to_json(self) -> dict[str, object]:
        return {"verdict": self.verdict, "reasons": list(self.reasons)}


# --- what the text says ------------------------------------------------------------------------

# cited guideline names are not measurements
_CITATIONS = re.compile(r"\b(?:ASE/EACVI|ASE|EACVI)\s+(?:19|20)\d\d\b")
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
# findings the node cannot make from an A4C LV segmentation; naming one is a claim it never made
_FINDINGS = re.compile(
    r"hypertroph\w*|regurgita\w*|stenos\w*|dilat\w*|thromb\w*|aneurysm\w*|effusion\w*|"
    r"infarct\w*|isch(?:a)?emi\w*|cardiomyopath\w*|heart failure|amyloid\w*|"
    r"wall motion abnormalit\w*|akine\w*|hypokine\w*|dyskine\w*",
    re.I,
)
# the loop is a 2D transthoracic A4C cine; naming another view or modality describes an
# acquisition that did not happen
_ACQUISITION = re.compile(
    r"\b(?:two|three|2|3)[- ]chamber\b|\b3D\b|three-dimensional|\bCT\b|computed tomography|"
    r"\bMRI\b|magnetic resonance|\bDoppler\b|trans-?o?esophageal|\bTEE\b|"
    r"parasternal|subcostal|short[- ]axis",
    re.I,
)
# what the node never sees: the patient and the room. The embedded model, asked to describe
# the video, wrote "The patient is lying on the table with the patient's head positioned in
# front of the patient's chest" (passed by the number checks)
_SCENE = re.compile(
    r"\blying (?:on|down|flat)\b|\bsupine\b|\bprone\b|decubitus|"
    r"\bon (?:the|a) (?:table|bed|couch)\b|\bpatient'?s (?:head|arm|body|chest|face)\b",
    re.I,
)
_NOT_ASSESSED = re.compile(r"\bnot (?:be )?(?:assessed|measured|evaluated|assessable)\b", re.I)
_SPELLED = re.compile(
    r"\b(ten|eleven|twelve|thirteen|fourteen|fifteen|sixteen|seventeen|eighteen|nineteen|"
    r"twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety|hundred)\b",
    re.I,
)
_SD_BEFORE = re.compile(r"(±|\+/-|\+-|\bSD\b|standard deviation|variation)[^.]*$", re.I)

_LABELS = (
    (KIND_UNMEASURED, None, re.compile(
        r"right ventric\w*|\bRV\b|valv\w*|mitral|aortic|tricuspid|pulmonary|regurgita\w*|"
        r"stenos\w*|wall motion|wall thickness|hypertroph\w*|atri(?:um|al|a)\b|pericardi\w*|"
        r"diastolic function|rhythm|blood pressure|dilat\w*|chamber size", re.I)),
    (KIND_VOLUME, "edv", re.compile(r"end[- ]?diastolic|\bLVEDV\b|\bEDV\b|diastolic volume",
                                    re.I)),
    (KIND_VOLUME, "esv", re.compile(r"end[- ]?systolic|\bLVESV\b|\bESV\b|systolic volume",
                                    re.I)),
    (KIND_VOLUME, "sv", re.compile(r"stroke volume|\bSV\b", re.I)),
    (KIND_VOLUME, None, re.compile(r"\bvolumes?\b", re.I)),
    (KIND_QUALITY, None, re.compile(r"quality score|\bquality\b|\bscore\b", re.I)),
    (KIND_HEART_RATE, None, re.compile(
        r"heart rate|\bHR\b|pulse|tachycardi\w*|bradycardi\w*", re.I)),
    # the method an EF is named with: its number must be that method's EF (issue #15)
    (KIND_EF, "ef_disks", re.compile(
        r"method[- ]of[- ]dis[ck]s|\bdis[ck]s?\b|\bSimpson'?s?\b|\bMOD\b", re.I)),
    (KIND_EF, "ef_regression", re.compile(
        r"\b(?:AI[- ])?regression\b|video (?:regression )?(?:network|model)", re.I)),
    (KIND_EF, None, re.compile(
        r"\bLVEF\b|\bEF\b|ejection fraction|systolic function|systolic dysfunction|"
        r"(?:LV|left ventricular|ventricular) function|contractil\w*|pump function", re.I)),
)  # fmt: skip

# grade words; the phrases come first and mask what they cover
_GRADE_WORDS = (
    (frozenset({GRADE_ABOVE}), re.compile(r"\btachycardi\w*|\belevated\b", re.I)),
    (REDUCED, re.compile(r"\bbradycardi\w*", re.I)),
    (REDUCED, re.compile(r"below (?:the )?(?:lower limit of )?normal(?: range| limits?)?", re.I)),
    (frozenset({GRADE_ABOVE}), re.compile(
        r"above (?:the )?(?:upper limit of )?(?:normal|reference)(?: range| limits?)?|"
        r"hyperdynamic|supra-?normal|hypercontractil\w*", re.I)),
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
# what may stand between a number and the method named after it: "47.0 % (method of disks)",
# "39.4 % by AI regression"
_METHOD_AFTER = re.compile(r"\s*(?:[(,;:-]\s*)?(?:(?:by|with|using|from|on|per)\s+)?(?:the\s+)?",
                           re.I)
_NEGATION = re.compile(r"\b(?:not|no|without|never|nor)\b|n't\b", re.I)
_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+|\n+")


@dataclass(frozen=True)
class _Label:
    start: int
    end: int
    kind: str
    key: str | None


def _labels(sentence: str) -> list[_Label]:
    """Context words in order; where two overlap, the one that starts first wins (so "right
    ventricular function" is about the right ventricle, not the LV)."""
    found = [
        _Label(mt.start(), mt.end(), kind, key)
        for kind, key, pattern in _LABELS
        for mt in pattern.finditer(sentence)
    ]
    found.sort(key=lambda lab: (lab.start, -(lab.end - lab.start)))
    kept: list[_Label] = []
    for lab in found:
        if kept and lab.start < kept[-1].end:
            continue
        kept.append(lab)
    return kept


def _sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(text) if s.strip()]


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
    sd = _sd_fact(m)
    grade = lv_grade(m, sex)
    text = _without_node_sentences(text, m, withheld)
    ranges = {f.key: range_grade(_RANGE_KEYS[f.key], f.value, sex)
              for f in facts if f.key in _RANGE_KEYS}  # fmt: skip
    reasons: list[str] = list(claims.reasons)
    matched: list[str] = list(claims.matched)
    subject: str | None = None  # what the previous sentences were about
    for sentence in _sentences(_CITATIONS.sub("", text)):
        labels = _labels(sentence)
        for spelled in _SPELLED.finditer(sentence):
            reasons.append(f"number written in words ({spelled.group(0)!r}) in: {sentence!r}")
        if not _NOT_ASSESSED.search(sentence):
            for finding in _FINDINGS.finditer(sentence):
                reasons.append(
                    f"{finding.group(0)!r} is a finding the node does not make "
                    f"(in: {sentence.strip()!r})"
                )
        for scene in _SCENE.finditer(sentence):
            reasons.append(
                f"{scene.group(0)!r}: the node sees the LV on the loop, not the patient or the "
                f"room (in: {sentence.strip()!r})"
            )
        for other in _ACQUISITION.finditer(sentence):
            reasons.append(
                f"{other.group(0)!r}: the loop is a 2D apical four-chamber view "
                f"(in: {sentence.strip()!r})"
            )
        _check_numbers(sentence, labels, facts, sd, m, withheld, reasons, matched)
        _check_grades(sentence, labels, subject, grade, ranges, reasons, matched)
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


def _unit_at(sentence: str, end: int) -> tuple[str | None, str, int]:
    """(unit kind, unit text, end) right after a number; kind None when there is no unit."""
    for kind, pattern in _UNITS:
        mt = pattern.match(sentence, end)
        if mt:
            return kind, mt.group(1), mt.end()
    return None, "", end


def _check_numbers(
    sentence: str,
    labels: list[_Label],
    facts: tuple[Fact, ...],
    sd: Fact | None,
    m: Measurements,
    withheld: list[WithheldValue],
    reasons: list[str],
    matched: list[str],
) -> None:
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


def _is_method(label: _Label) -> bool:
    return label.kind == KIND_EF and label.key is not None


def _method_after(sentence: str, end: int, labels: list[_Label]) -> _Label | None:
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
    near: list[_Label],
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


def _check_grades(
    sentence: str,
    labels: list[_Label],
    subject: str | None,
    grade: LvGrade,
    ranges: dict[str, str | None],
    reasons: list[str],
    matched: list[str],
) -> None:
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


def _range_subject(position: int, labels: list[_Label], about: str) -> tuple[str, ...]:
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
        if key not in _RANGE_KEYS:
            return "the node has no reference range for that value"
        if key not in ranges:
            return "that value was not measured"
        measured = ranges[key]
        if measured is None:
            return "its reference range depends on sex, which is unknown, so no grade may be stated"
        if measured not in allowed:
            return f"the measured value is {measured} ({key.replace('_', ' ')})"
    return None


def _subject_of(position: int, labels: list[_Label], carried: str | None) -> str:
    before = [lab for lab in labels if lab.end <= position]
    if before:
        return before[-1].kind
    after = [lab for lab in labels if lab.start >= position]
    if after:
        return after[0].kind
    return carried or KIND_EF
