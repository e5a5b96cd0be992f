"""What ``echo-agent evaluate chat`` checks in one answer: repeated sentences, and whether the
answer contains what its question's intent requires.

The checks read the shown text only, against the study's own measurements (never against what
the answering code says it used), so a backend cannot pass by labelling its answer. What an
intent requires (issue #19): a measurement question the asked value (within the guard's
tolerance) or the statement that it is not measurable; a descriptive question a description of
the loop (the view, something about the loop itself, and the LVEF); an explanatory question a
sentence of an explanatory knowledge entry; an advisory question a sentence of an advisory
knowledge entry and a referral to the cardiologist; an out-of-scope question a statement of
what the assistant can answer. "Is the LV enlarged?" needs the sex-specific EDV verdict, the
EDV and the range it was judged against.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from inference.types import Measurements
from llm.grounding import measured_facts
from reporting.interpretation import GRADE_ABOVE, GRADE_NORMAL, range_grade
from reporting.values import KEY_LV_EDV, withheld_by_key

# what a question requires of its answer; "value:<fact key>" asks for one measured value
REQ_DESCRIBE = "describe"
REQ_EXPLAIN = "explain"
REQ_ADVISE = "advise"
REQ_SCOPE = "scope"
REQ_SIZE = "size"
VALUE_PREFIX = "value:"
# llm.grounding fact keys -> reporting.values keys (for "not measurable" statements)
_VALUE_KEYS = {
    "ef": ("ef_regression", "ef_disks"),
    "edv": ("edv",),
    "esv": ("esv",),
    "sv": ("sv",),
    "heart_rate": ("heart_rate",),
}
_WITHHELD_KEYS = {
    "ef": ("lvef_regression", "lvef_disks"),
    "edv": ("lv_edv",),
    "esv": ("lv_esv",),
    "sv": ("lv_sv",),
    "heart_rate": ("heart_rate",),
}
# the LV EDV reference ranges the size verdict quotes (ASE/EACVI 2015), by sex
EDV_RANGE_ML = {"M": (62, 150), "F": (46, 106)}

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_NUMBER = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)")
_VIEW = re.compile(r"apical four[- ]chamber|\bA4C\b", re.IGNORECASE)
_LOOP = re.compile(r"\bframes?\b|frame rate|\bseconds?\b|\bbeats?\b|\bloop\b|\bcine\b|\bclip\b",
                   re.IGNORECASE)  # fmt: skip
_REFERRAL = re.compile(r"\b(cardiologist|doctor|physician|specialist|care team)\b", re.IGNORECASE)
_SCOPE = re.compile(
    r"\bonly (answer|discuss|talk|help|speak)|\boutside\b|\bnot able\b|\bcannot\b|\bcan't\b|"
    r"\bcan not\b|\bunable\b|\bonly about\b|\bnot something\b",
    re.IGNORECASE,
)
_NOT_MEASURABLE = re.compile(r"not measur", re.IGNORECASE)
_ENLARGED = re.compile(r"\b(enlarged|dilated)\b", re.IGNORECASE)
_NEGATED_ENLARGED = re.compile(r"\bnot (enlarged|dilated)\b", re.IGNORECASE)
_NORMAL_SIZE = re.compile(r"\bnormal\b|\bnot (enlarged|dilated)\b|\bwithin\b", re.IGNORECASE)
_SMALL = re.compile(r"\b(small|below)\b", re.IGNORECASE)


def sentences(text: str) -> list[str]:
    """The text's sentences, stripped; empty pieces dropped."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def _normalised(sentence: str) -> str:
    return " ".join(re.sub(r"[^\w%./ ]+", " ", sentence.lower()).split()).rstrip(".")


def repeated_sentences(text: str) -> int:
    """How many sentences repeat an earlier sentence of the same text (case, spacing and
    punctuation ignored): the issue's "the same sentence three times" counts 2."""
    seen: set[str] = set()
    repeats = 0
    for sentence in sentences(text):
        key = _normalised(sentence)
        if not key:
            continue
        if key in seen:
            repeats += 1
        seen.add(key)
    return repeats


def numbers(text: str) -> list[float]:
    return [float(n) for n in _NUMBER.findall(text)]


@dataclass(frozen=True)
class KnowledgeSentences:
    """The sentences of the knowledge entries that serve each intent (``explanatory``,
    ``advisory``), normalised, for the explanation and advice checks."""

    by_intent: dict[str, frozenset[str]]

    def found(self, intent: str, text: str) -> bool:
        wanted = self.by_intent.get(intent, frozenset())
        return any(_normalised(s) in wanted for s in sentences(text))


def knowledge_sentences() -> KnowledgeSentences:
    """From the vetted knowledge base (``llm.knowledge_entries``)."""
    from llm.knowledge_entries import ENTRIES

    out: dict[str, set[str]] = {}
    for entry in ENTRIES:
        for intent in entry.intents:
            out.setdefault(str(intent), set()).update(
                _normalised(s) for s in sentences(entry.text)
            )
    return KnowledgeSentences({k: frozenset(v) for k, v in out.items()})


def _has_value(text: str, m: Measurements, name: str) -> bool:
    """The asked value within the guard's tolerance, or its not-measurable statement."""
    withheld = withheld_by_key(m)
    if any(k in withheld for k in _WITHHELD_KEYS[name]):
        return bool(_NOT_MEASURABLE.search(text))
    facts = [f for f in measured_facts(m) if f.key in _VALUE_KEYS[name]]
    if not facts:
        return bool(_NOT_MEASURABLE.search(text) or re.search(r"not measured", text, re.I))
    stated = numbers(text)
    return any(abs(n - f.value) <= f.tolerance for f in facts for n in stated)


def _size_verdict(text: str, m: Measurements, sex: str | None) -> bool:
    """The LV size word agrees with the sex-specific EDV range, and the EDV and that range are
    stated (unknown sex with disagreeing ranges: the EDV and no size word)."""
    if not _has_value(text, m, "edv"):
        return False
    if m.edv_ml is None or KEY_LV_EDV in withheld_by_key(m):
        return True
    grade = range_grade(KEY_LV_EDV, float(m.edv_ml), sex)
    if grade is None:
        return not _ENLARGED.search(text.replace("not enlarged", ""))
    low, high = EDV_RANGE_ML.get(sex or "", (None, None))
    stated = numbers(text)
    quotes_range = low is None or (float(low) in stated and float(high) in stated)
    enlarged = bool(_ENLARGED.search(_NEGATED_ENLARGED.sub("", text)))
    if grade == GRADE_ABOVE:
        word = enlarged
    elif grade == GRADE_NORMAL:
        word = not enlarged and bool(_NORMAL_SIZE.search(text))
    else:  # GRADE_BELOW
        word = not enlarged and bool(_SMALL.search(text))
    return word and quotes_range


def requirement_met(
    requirement: str,
    text: str,
    m: Measurements,
    sex: str | None,
    knowledge: KnowledgeSentences,
) -> bool:
    """Whether ``text`` holds what ``requirement`` asks for (see the module docstring)."""
    if requirement.startswith(VALUE_PREFIX):
        name = requirement[len(VALUE_PREFIX):]
        if name not in _VALUE_KEYS:
            raise ValueError(f"unknown value requirement {requirement!r}")
        return _has_value(text, m, name)
    if requirement == REQ_DESCRIBE:
        return bool(_VIEW.search(text) and _LOOP.search(text)) and _has_value(text, m, "ef")
    if requirement == REQ_EXPLAIN:
        return knowledge.found("explanatory", text)
    if requirement == REQ_ADVISE:
        return knowledge.found("advisory", text) and bool(_REFERRAL.search(text))
    if requirement == REQ_SCOPE:
        return bool(_SCOPE.search(text))
    if requirement == REQ_SIZE:
        return _size_verdict(text, m, sex)
    raise ValueError(f"unknown requirement {requirement!r}")


def all_met(
    requirements: Iterable[str],
    text: str,
    m: Measurements,
    sex: str | None,
    knowledge: KnowledgeSentences,
) -> bool:
    return all(requirement_met(r, text, m, sex, knowledge) for r in requirements)


__all__ = [
    "KnowledgeSentences",
    "all_met",
    "knowledge_sentences",
    "repeated_sentences",
    "requirement_met",
    "sentences",
]
