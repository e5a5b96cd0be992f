"""Advice on report text a person typed: the grounding guard runs on it as advice only.

Text a person types is theirs: it is never labelled as checked, and the guard never blocks its
signature. Yet a slip ("EF 80 % normal" where 39.4 % was measured) should be pointed out, so the
guard reads the lines the person wrote (those not in the node's own draft) and its findings are
stored beside the version as advice. The verdict stays ``not_checked``: the language model's
"pass" belonged to the model's words, and copying it onto a person's would claim a check that
never happened.
"""

from __future__ import annotations

from dataclasses import dataclass

from inference.types import Measurements
from llm.grounding import check_grounding
from llm.types import Verdict

ADVISORY_PREFIX = "advisory: "
# the first stored reason of a version whose text a person typed: it marks the version as such
TYPED_MARK = ADVISORY_PREFIX + "text typed by a person; the grounding guard's findings are advice"
NO_ANALYSIS = ADVISORY_PREFIX + "no analysed loop to compare the text with"


@dataclass(frozen=True)
class Advice:
    """What a version stores for a person's text: ``verdict`` is always ``not_checked``;
    ``reasons`` starts with ``TYPED_MARK`` and lists each finding of the guard."""

    verdict: str
    reasons: tuple[str, ...]


def typed_lines(text: str, node_text: str) -> str:
    """The lines of ``text`` that are not lines of the node's own draft: what a person wrote."""
    own = {line.strip() for line in node_text.splitlines() if line.strip()}
    return "\n".join(line for line in text.splitlines() if line.strip() and line.strip() not in own)


def advise(
    text: str, node_text: str, measurements: Measurements | None, sex: str | None
) -> Advice:
    """The guard's findings on the lines a person typed, as advice."""
    if measurements is None:
        return Advice(Verdict.NOT_CHECKED, (TYPED_MARK, NO_ANALYSIS))
    result = check_grounding(typed_lines(text, node_text), measurements, sex)
    findings = tuple(ADVISORY_PREFIX + r for r in result.reasons)
    return Advice(Verdict.NOT_CHECKED, (TYPED_MARK, *findings))


def typed_by_person(verdict: str, reasons: list[str] | tuple[str, ...]) -> bool:
    return verdict == Verdict.NOT_CHECKED and bool(reasons) and reasons[0] == TYPED_MARK


def grounding_label(verdict: str, reasons: list[str] | tuple[str, ...]) -> str:
    """The badge: a person's text says so and gives the advice; never "pass" for it."""
    if typed_by_person(verdict, reasons):
        advice = ("advisory: numbers differ from the measurements" if len(reasons) > 1 else
                  "advisory: no difference from the measurements found")  # fmt: skip
        if NO_ANALYSIS in reasons:
            advice = NO_ANALYSIS
        return f"Typed by a person (not the language model): not checked; {advice}"
    return f"Grounding check of the language model's text: {verdict}"


def shown_reasons(verdict: str, reasons: list[str] | tuple[str, ...]) -> list[str]:
    """The reasons a reader sees: the findings, without the mark."""
    if typed_by_person(verdict, reasons):
        return [r for r in reasons[1:] if r != NO_ANALYSIS]
    return list(reasons)
