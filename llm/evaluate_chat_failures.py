"""Why the raw guard failed, per answer of ``echo-agent evaluate chat`` (``llm.evaluate_chat``):
the refused sentence(s) and the guard's reasons, counted by kind of reason and written as
markdown below the table, so anyone can read what the model wrote and why it was left out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from llm.evaluate_chat_checks import sentences

if TYPE_CHECKING:
    from llm.evaluate_chat import TurnResult


def passed_raw(answer: Any) -> bool:
    """The model's own text passed the guard before any replacement: the answer was not
    replaced, and its model sentence (when the backend reports one) was not dropped."""
    if answer is None:
        return True  # a backend without a guard: nothing was replaced
    if str(getattr(answer, "verdict", "pass")) != "pass":
        return False
    return str(getattr(answer, "model_verdict", "pass")) != "fail"


_QUOTED_SENTENCE = re.compile(r"\(in: (['\"])(.+?)\1\)")


def raw_failure(answer: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Why the raw guard failed: (the refused sentences, the guard's reasons); both empty when
    it passed. A refused model sentence is the one the guard read (``model_sentence``, else
    the first of what the model wrote); a replaced answer's sentences are the ones its reasons
    quote."""
    if answer is None or passed_raw(answer):
        return (), ()
    if str(getattr(answer, "verdict", "pass")) != "pass":
        reasons = tuple(str(r) for r in getattr(answer, "reasons", ()))
        quoted = tuple(dict.fromkeys(m.group(2) for r in reasons
                                     for m in _QUOTED_SENTENCE.finditer(r)))  # fmt: skip
        return quoted, reasons
    checked = str(getattr(answer, "model_sentence", ""))
    if not checked:
        written = sentences(str(getattr(answer, "model_text", "")))
        checked = written[0] if written else ""
    reasons = tuple(str(r) for r in getattr(answer, "model_reasons", ()))
    return ((checked,) if checked else ()), reasons


def reason_kind(reason: str) -> str:
    """A guard reason without what it quotes (the phrase, the sentence) and without its
    numbers, so failures can be counted by cause."""
    kind = _QUOTED_SENTENCE.sub("", reason)
    kind = re.sub(r"^\s*(['\"]).*?\1:?\s*", "", kind)
    kind = re.sub(r"\bin: (['\"]).*\1\s*$", "", kind)
    kind = re.sub(r"\d+(?:\.\d+)?", "N", kind)
    return " ".join(kind.split()).rstrip(" :;,.") or reason


def raw_fail_reason_counts(results: Iterable[TurnResult]) -> dict[str, int]:
    """How many raw failures each kind of guard reason caused (an answer counts once per kind),
    most frequent first."""
    counts: dict[str, int] = {}
    for r in results:
        for kind in dict.fromkeys(reason_kind(x) for x in r.raw_fail_reasons):
            counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _md(text: str) -> str:
    """One line of quoted text for a markdown list (no line breaks, no emphasis)."""
    return " ".join(text.split()).replace("*", "\\*").replace("_", "\\_")


def markdown_failures(label: str, results: Sequence[TurnResult]) -> str:
    """Every raw guard failure of one configuration: the question, the refused sentence(s) and
    the guard's reasons, after the failures counted by kind of reason."""
    failed = [r for r in results if not r.raw_pass]
    lines = [f"### Raw guard failures: {label} ({len(failed)} of {len(results)})", ""]
    if not failed:
        return "\n".join([*lines, "None."])
    lines += ["By kind of reason (an answer counts once per kind):", ""]
    lines += [f"- {n} x {_md(kind)}" for kind, n in raw_fail_reason_counts(failed).items()]
    lines.append("")
    for i, r in enumerate(failed, 1):
        lines.append(f'{i}. {r.study}, {r.ask.intent}: "{_md(r.ask.text)}"')
        refused = r.raw_failed_sentences or ("(no sentence recorded)",)
        lines += [f'   - refused: "{_md(s)}"' for s in refused]
        lines += [f"   - because: {_md(reason)}" for reason in r.raw_fail_reasons or ("-",)]
    return "\n".join(lines)
