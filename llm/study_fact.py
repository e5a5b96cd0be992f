"""One statement of a study's fact sheet (``llm.facts``) and its validity states.

Apart from ``llm.facts`` so that the modules that build parts of the sheet (``llm.facts_loop``)
and those that read it share the type without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass

STATE_MEASURED = "measured"
STATE_NOT_MEASURABLE = "not_measurable"
STATE_NOT_ASSESSED = "not_assessed"
STATE_INFO = "info"


@dataclass(frozen=True)
class StudyFact:
    """One statement about the study. ``sentence`` is what an answer quotes (one or more
    complete sentences, accepted by the guard verbatim); ``state`` says whether it is a measured
    value, a value the node does not stand behind, something not assessed, or plain
    information about the loop."""

    key: str
    topic: str  # "function" | "volume" | "size" | "rate" | "rhythm" | "image" | "quality" | ...
    state: str
    sentence: str
    value: float | None = None
    unit: str = ""
