"""What a question asks: one of EchoGPT's three question types (descriptive, explanatory,
advisory), a measurement question, or a question outside the study, and which topics it names.

Why rules and keywords, not the model: routing decides which facts and knowledge entries the
answer is built from, so it must be deterministic, instant and testable with a table of
paraphrases; a 135M model classifies worse than a word list and costs a second per question.
A follow-up that names no topic of its own ("and what should I do about it?") keeps the topics
of the previous question in the conversation.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class Intent(StrEnum):
    DESCRIPTIVE = "descriptive"
    EXPLANATORY = "explanatory"
    ADVISORY = "advisory"
    MEASUREMENT = "measurement"
    OUT_OF_SCOPE = "out_of_scope"


# fact topics (``llm.facts.StudyFact.topic``) plus "symptoms" and "causes" for the knowledge base
TOPIC_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (topic, re.compile(pattern, re.I))
    for topic, pattern in (
        ("not_assessed", r"\bvalves?\b|\bmitral\b|\baortic\b|\btricuspid\b|\bpulmonary\b|"
                         r"wall motion|wall thickness|\bright ventricle\b|\bRV\b|\batri(?:um|a)\b|"
                         r"\bleft atrial\b|pericardi\w*|hypertroph\w*|diastolic function|"
                         r"regurgita\w*|stenos\w*|\bleak\w*"),
        ("rhythm", r"\brhythm\w*|\bregular\b|\birregular\w*|arrhythmi\w*|fibrillation|"
                   r"palpitation\w*|\bskipp\w*"),
        ("rate", r"heart ?rate|\bpulse\b|\bbpm\b|\brate\b|\bhow fast\b|tachycardi\w*|"
                 r"bradycardi\w*|beats? per minute"),
        ("size", r"enlarg\w*|\bsize\b|\bbig\b|\bbigger\b|\blarge\b|dilat\w*|\bsmall\b|"
                 r"\bswollen\b|\bstretched\b"),
        ("volume", r"\bvolumes?\b|\bEDV\b|\bESV\b|stroke volume|end[- ]?diastolic|"
                   r"end[- ]?systolic"),
        ("function", r"\bEF\b|\bLVEF\b|ejection|\bfraction\b|systolic function|\bfunction\w*|"
                     r"\bpump\w*|contract\w*|squeez\w*|\bweak\w*|\bstrong\b"),
        ("quality", r"\bquality\b|reliab\w*|\bflags?\b|\bconfiden\w*|\btrust\w*|\baccura\w*"),
        ("image", r"\bview\b|\bframes?\b|frame rate|\bvideo\b|\bloop\b|\bclip\b|\bimages?\b|"
                  r"\bduration\b|\bhow long\b"),
        ("symptoms", r"symptom\w*|chest pain|breath\w*|\bdizz\w*|faint\w*|swell\w*|tired\w*|"
                     r"fatigue|emergency|\burgent\w*"),
        ("causes", r"\bcause[sd]?\b|\bwhy\b|\breason\w*|\bdue to\b"),
    )
)

# "should", "recommend", "suggest", "advice" alone ask for advice about anything: they make a
# question advisory only when it is about the study (or follows one), else it is out of scope
_ADVISORY_GENERIC = re.compile(r"\bshould\b|suggest\w*|recommend\w*|\badvi[cs]e\w*", re.I)
_ASKS_TO_UNDERSTAND = re.compile(
    r"\bunderstand\w*|\bmeans?\b|\bmeaning\b|\bexplain\w*|\binterpret\w*", re.I
)
_ADVISORY = re.compile(
    r"what should I do|lifestyle|treatment\w*|\btreat\b|"
    r"medication\w*|medicine\w*|\bdrugs?\b|\bpills?\b|exercis\w*|\bdiet\w*|\bsport\w*|"
    r"what (?:can|could|do) I do|what to do|next steps?|\bprevent\w*|\bimprove\w*|\bavoid\b|"
    r"\bsee a (?:doctor|cardiologist|specialist)\b|follow[- ]?up|\bsmok\w*|\balcohol\b|"
    r"\bsalt\b|\bweight loss\b|\blose weight\b|\bsurgery\b|\bcure\b|\bhelp my\b",
    re.I,
)
_EXPLANATORY = re.compile(
    r"\bmeans?\b|\bmeaning\b|\bexplain\w*|\bwhy\b|\bwhat is an?\b|\bwhat are\b|"
    r"\bwhat does\b|significan\w*|implication\w*|\bhealth\b|\bserious\b|\bdangerous\b|"
    r"\bworr(?:y|ied)\b|\bbad\b|\bcauses?\b|\bunderstand\b|\bconcern\w*|\bprognosis\b|"
    r"\bimportant\b|\blife expectancy\b",
    re.I,
)
_DESCRIPTIVE = re.compile(
    r"\bdescri\w*|\bsummar\w*|\boverview\b|what (?:does|do) (?:the|this|my) (?:video|loop|"
    r"clip|echo\w*|image|scan) show|\bwalk me through\b|\btell me about\b|"
    r"\bwhat (?:can|do) you see\b|\bfindings\b|\bresults? of\b",
    re.I,
)
# the words of the study's domain: a question with none of them is about something else
_DOMAIN = re.compile(
    r"\bheart\w*|cardi\w*|ventric\w*|\bLV\b|\bechos?\b|echocardiogra\w*|ultrasound|"
    r"\bscan\b|\bstudy\b|\bresults?\b|\breport\b|\bmeasure\w*|\bvalues?\b|\bnumbers?\b|"
    r"\bnormal\b|\babnormal\b|\bdoctor\b|\bchamber\w*|\bblood\b|\bbeat\w*|\bfindings?\b|"
    r"\btest\b|\bthis\b|\bit\b|\bmy\b",
    re.I,
)
# topics that, on their own, make a question about the study; "this"/"my" alone do not
_OFF_TOPIC = re.compile(
    r"\bweather\b|\bpoem\b|\bjoke\b|\brecipe\w*|\bstock\w*|\bfootball\b|\bsoccer\b|"
    r"\bcapital of\b|\bpython\b|\bjavascript\b|\bcode\b|\bmovie\w*|\bsong\w*|\belection\w*|"
    r"\btranslate\b|\bhomework\b|\bbitcoin\b|\bprice\b|\bnews\b|\bholiday\w*|\bvacation\b|"
    r"\bwho (?:won|is the president)\b|\bstory\b",
    re.I,
)


class _Turn(Protocol):
    role: str
    content: str


@dataclass(frozen=True)
class Route:
    """Where a question goes: its ``intent`` and the ``topics`` it names (fact topics, plus
    "symptoms" and "causes"), in the order of ``TOPIC_PATTERNS``."""

    intent: Intent
    topics: tuple[str, ...]


def question_topics(question: str) -> tuple[str, ...]:
    """The topics ``question`` names, in the order of ``TOPIC_PATTERNS``."""
    return tuple(topic for topic, pattern in TOPIC_PATTERNS if pattern.search(question))


def _intent_of(question: str, topics: tuple[str, ...], follow_up: bool = False) -> Intent | None:
    """The intent the words say, None when they say none (a follow-up, or off topic).
    ``follow_up``: the question points back at an earlier one, so it needs no domain words."""
    if _OFF_TOPIC.search(question) and not topics:
        return Intent.OUT_OF_SCOPE
    if _ADVISORY.search(question):
        return Intent.ADVISORY
    generic_advice = _ADVISORY_GENERIC.search(question)
    # a short request ("what do you recommend?", "should I worry?") is about the study; a
    # longer one names its own subject, and when no word of it is ours it is about something
    # else ("can you recommend a good restaurant nearby?")
    names_own_subject = len(question.split()) > 4
    if generic_advice and names_own_subject and not (topics or _DOMAIN.search(question)
                                                     or follow_up):
        return Intent.OUT_OF_SCOPE
    if generic_advice and not _ASKS_TO_UNDERSTAND.search(question):
        return Intent.ADVISORY  # "how should I understand this result?" is explanatory
    if _DESCRIPTIVE.search(question):
        return Intent.DESCRIPTIVE
    if _EXPLANATORY.search(question):
        return Intent.EXPLANATORY
    if topics:
        return Intent.MEASUREMENT
    if _DOMAIN.search(question) and re.search(r"\b(?:video|loop|echo\w*)\b", question, re.I):
        return Intent.DESCRIPTIVE
    if _DOMAIN.search(question):
        return Intent.MEASUREMENT
    return None


def route_question(question: str, history: Sequence[_Turn] = ()) -> Route:
    """The route of ``question``; ``history`` (oldest first, ``ChatTurn``s) lends the topics
    of the last user question to a follow-up that names none, and its intent when the
    follow-up's words name no intent either."""
    topics = question_topics(question)
    previous = next((t.content for t in reversed(history) if t.role == "user"), None)
    intent = _intent_of(question, topics, previous is not None and _is_follow_up(question))
    if previous is not None and not topics and intent != Intent.OUT_OF_SCOPE:
        earlier = route_question(previous)
        if intent is None or _is_follow_up(question):
            topics = earlier.topics
            if intent is None:
                intent = earlier.intent
    if intent is None:
        intent = Intent.OUT_OF_SCOPE
    if intent == Intent.OUT_OF_SCOPE:
        topics = ()
    return Route(intent, topics)


_FOLLOW_UP = re.compile(r"\b(?:it|that|this|those|these|them)\b|^\s*(?:and|so|but|what about)\b",
                        re.I)


def _is_follow_up(question: str) -> bool:
    """Short questions that point back ("what does that mean?", "and what should I do?")."""
    return len(question.split()) <= 8 and bool(_FOLLOW_UP.search(question))
