"""The core of every answer, composed from the fact sheet and the knowledge base only.

Why deterministic: the answer's substance (the asked value with its range and grade, the
description of the loop, the explanation, the advice and the referral) must be right every
time and must start streaming at once; a 135M model on two CPU cores needs about a second
before its first token and writes four to ten tokens a second. So the question's route picks
the facts and entries, and the answer is their sentences in a fixed order; the language model
may then add one short sentence of its own, shown only when it passes the guard
(``llm.chat``). Every advisory and explanatory answer ends by deferring to the treating
cardiologist; none prescribes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from llm.facts import FactSheet, StudyFact
from llm.intents import Intent, Route, _Turn, route_question
from llm.knowledge import entry, retrieve
from llm.knowledge_entries import KnowledgeEntry

OUT_OF_SCOPE_SENTENCE = (
    "I can only answer questions about this echocardiogram: what was measured on the left "
    "ventricle, what the results mean, and general advice to discuss with your cardiologist."
)
NO_PRESCRIPTION_SENTENCE = (
    "This answer gives general information only and is no prescription: your treating "
    "cardiologist decides on tests and treatment."
)
FIXED_SENTENCES = (OUT_OF_SCOPE_SENTENCE, NO_PRESCRIPTION_SENTENCE)
REFERRAL_ENTRY = "see-cardiologist"
RED_FLAGS_ENTRY = "red-flags"

# the facts each topic asks for, in the order an answer states them
_TOPIC_FACTS: dict[str, tuple[str, ...]] = {
    "size": ("lv_size", "bsa"),  # lv_size states the EDV index when there is one
    "volume": ("lv_edv", "lv_esv", "lv_sv", "lv_size", "lv_esv_index", "bsa"),
    "function": ("lvef", "lvef_disks", "lv_function"),
    "rate": ("heart_rate",),
    "rhythm": ("rhythm", "heart_rate"),
    "image": ("view", "frames"),
    "quality": ("quality", "quality_flags"),
    "not_assessed": ("not_assessed",),
}
_SUMMARY_FACTS = ("lv_function", "lv_size", "heart_rate")
_DESCRIPTION_FACTS = ("view", "frames", "lv_function", "lv_size", "heart_rate", "rhythm",
                      "quality", "not_assessed")  # fmt: skip
_ENTRY_LIMIT = {Intent.EXPLANATORY: 2, Intent.ADVISORY: 2, Intent.MEASUREMENT: 1}


@dataclass(frozen=True)
class Composition:
    """An answer's core: ``sentences`` in order (each a fact's sentence, an entry's text or a
    fixed sentence), and the fact keys and entry ids they came from."""

    route: Route
    sentences: tuple[str, ...]
    fact_keys: tuple[str, ...]
    entry_ids: tuple[str, ...]
    entries: tuple[KnowledgeEntry, ...] = ()

    @property
    def text(self) -> str:
        return " ".join(self.sentences)


def _facts(sheet: FactSheet, keys: Sequence[str]) -> list[StudyFact]:
    found = (sheet.get(k) for k in dict.fromkeys(keys))
    return [f for f in found if f is not None]


def _topic_facts(sheet: FactSheet, topics: Sequence[str]) -> list[StudyFact]:
    keys = [k for t in topics for k in _TOPIC_FACTS.get(t, ())]
    return _facts(sheet, keys)


def _with(entries: list[KnowledgeEntry], entry_id: str, sheet: FactSheet) -> list[KnowledgeEntry]:
    wanted = entry(entry_id)
    if wanted in entries or not wanted.applies_to(sheet.conditions):
        return entries
    return [*entries, wanted]


def composed_ids(entries: Sequence[KnowledgeEntry]) -> tuple[str, ...]:
    return tuple(e.id for e in entries)


def compose_answer(question: str, sheet: FactSheet, history: Sequence[_Turn] = ()) -> Composition:
    """The answer's core for ``question`` about the study of ``sheet``; ``history`` (oldest
    first) routes a follow-up."""
    route = route_question(question, history)
    if route.intent == Intent.OUT_OF_SCOPE:
        return Composition(route, (OUT_OF_SCOPE_SENTENCE,), (), ())
    facts: list[StudyFact]
    entries: list[KnowledgeEntry] = []
    limit = _ENTRY_LIMIT.get(route.intent, 0)
    retrieved = list(retrieve(question, route, sheet, limit)) if limit else []
    if route.intent == Intent.DESCRIPTIVE:
        facts = _facts(sheet, _DESCRIPTION_FACTS)
    elif route.intent == Intent.MEASUREMENT:
        facts = _topic_facts(sheet, route.topics) or _facts(sheet, _SUMMARY_FACTS)
        entries = [e for e in retrieved if e.topics & set(route.topics)]
    elif route.intent == Intent.EXPLANATORY:
        facts = _topic_facts(sheet, route.topics) or _facts(sheet, _SUMMARY_FACTS[:2])
        entries = _with(retrieved, REFERRAL_ENTRY, sheet)
    else:  # advisory: the finding in one or two sentences, the advice, the red flags, referral
        facts = _facts(sheet, _SUMMARY_FACTS[:2])
        entries = _with(_with(retrieved, RED_FLAGS_ENTRY, sheet), REFERRAL_ENTRY, sheet)
    demo = sheet.get("demo")
    if demo is not None:
        facts.append(demo)
    sentences = [f.sentence for f in facts if f.key != "demo"]
    sentences += [e.text for e in entries]
    if route.intent == Intent.ADVISORY and "treatment-by-cardiologist" not in composed_ids(entries):
        sentences.append(NO_PRESCRIPTION_SENTENCE)
    if demo is not None:
        sentences.append(demo.sentence)
    return Composition(route, tuple(dict.fromkeys(sentences)), tuple(f.key for f in facts),
                       tuple(e.id for e in entries), tuple(entries))  # fmt: skip
