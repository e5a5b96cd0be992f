"""Retrieval from the vetted knowledge base (``llm.knowledge_entries``): BM25 over each entry's
title, keywords and text, among the entries that serve the question's intent and apply to the
study's findings.

Why BM25 and not embeddings: a few dozen entries, a deterministic ranking a test can pin, and
nothing to load. Entries that speak to this study's own findings ("an enlarged left ventricle"
for a study whose LV is enlarged) get a fixed bonus, so "what does this mean for me?" retrieves
the explanation of the finding rather than a general one.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from functools import lru_cache

from llm.facts import FactSheet
from llm.intents import Route
from llm.knowledge_entries import ENTRIES, SOURCES, KnowledgeEntry

__all__ = ["ENTRIES", "SOURCES", "KnowledgeEntry", "applicable_entries", "entry", "retrieve"]

BM25_K1 = 1.2
BM25_B = 0.75
FINDING_BONUS = 1.5  # for an entry about one of this study's own findings
TOPIC_BONUS = 1.0  # for an entry on a topic the question names
KEYWORD_WEIGHT = 2  # keywords count as if written twice

_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset({
    "a", "an", "the", "is", "are", "was", "were", "be", "of", "to", "in", "on", "for", "and",
    "or", "with", "my", "me", "i", "you", "your", "this", "that", "it", "what", "how", "do",
    "does", "did", "can", "could", "would", "should", "will", "there", "their", "about", "any",
    "at", "by", "from", "as", "please", "tell",
})


def _tokens(text: str) -> list[str]:
    """Lower-case words without stop words, a plural "s" taken off (crude, deterministic)."""
    out = []
    for word in _WORD.findall(text.lower()):
        if word in _STOP:
            continue
        if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
            word = word[:-1]
        out.append(word)
    return out


def _document(e: KnowledgeEntry) -> list[str]:
    return _tokens(e.title) + _tokens(" ".join(e.keywords)) * KEYWORD_WEIGHT + _tokens(e.text)


@lru_cache(maxsize=1)
def _index() -> tuple[tuple[Counter[str], ...], dict[str, float], float]:
    docs = tuple(Counter(_document(e)) for e in ENTRIES)
    n = len(docs)
    df: Counter[str] = Counter()
    for doc in docs:
        df.update(doc.keys())
    idf = {t: math.log(1 + (n - c + 0.5) / (c + 0.5)) for t, c in df.items()}
    mean_len = sum(sum(d.values()) for d in docs) / n
    return docs, idf, mean_len


def entry(entry_id: str) -> KnowledgeEntry:
    """The entry with ``entry_id`` (KeyError when there is none)."""
    for e in ENTRIES:
        if e.id == entry_id:
            return e
    raise KeyError(entry_id)


def applicable_entries(sheet: FactSheet) -> tuple[KnowledgeEntry, ...]:
    """The entries that may be said of this study (the guard accepts their sentences)."""
    return tuple(e for e in ENTRIES if e.applies_to(sheet.conditions))


def bm25_scores(question: str) -> dict[str, float]:
    docs, idf, mean_len = _index()
    query = _tokens(question)
    scores = {}
    for e, doc in zip(ENTRIES, docs, strict=True):
        length = sum(doc.values())
        score = 0.0
        for term in query:
            tf = doc.get(term, 0)
            if tf:
                norm = tf + BM25_K1 * (1 - BM25_B + BM25_B * length / mean_len)
                score += idf[term] * tf * (BM25_K1 + 1) / norm
        scores[e.id] = score
    return scores


def retrieve(
    question: str, route: Route, sheet: FactSheet, limit: int = 2
) -> tuple[KnowledgeEntry, ...]:
    """Up to ``limit`` entries for ``question``: those serving ``route.intent`` and applying to
    the study, best first (ties in the order of ``ENTRIES``); none scoring zero."""
    scores = bm25_scores(question)
    ranked = []
    for position, e in enumerate(ENTRIES):
        if route.intent not in e.intents or not e.applies_to(sheet.conditions):
            continue
        score = scores[e.id]
        if e.requires_any:
            score += FINDING_BONUS
        if e.topics & set(route.topics):
            score += TOPIC_BONUS
        if score > 0:
            ranked.append((-score, position, e))
    ranked.sort(key=lambda item: (item[0], item[1]))
    return tuple(e for _, _, e in ranked[:limit])
