"""``echo-agent evaluate chat``: the study chat asked as a cardiologist would, on many phantom
studies, with every answer checked (issue #19 item 6).

Each study gets a fixed set of conversations drawn (seeded) from a bank of questions of every
type (descriptive, explanatory, advisory, measurement, out of scope), several paraphrases each
and multi-turn follow-ups ("What does that mean?" after a value), from
``llm.evaluate_chat_questions``. The questions are asked through the same ``ChatBackend``
the review page calls, so what is measured is what a user meets: time to first shown text and
to the whole answer, the text finally shown, and the answer's metadata. None of these
questions is in the stage-2 training set (``llm.qa_dataset``; a test keeps the two apart).

Figures per configuration (plain model, chat adapter): raw pass (the model's own text passed
the guard before any replacement), guarded pass (the shown text passes the guard), repeated
sentences, intent answered (``llm.evaluate_chat_checks``), time to first token and to the whole
answer (median and p95).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inference.types import Measurements
from llm.chat import ChatTurn
from llm.chat_service import ChatBackend, StoredStudy
from llm.dataset import measurements_from_truth
from llm.evaluate_chat_checks import KnowledgeSentences, all_met, repeated_sentences, sentences
from llm.evaluate_chat_failures import (
    markdown_failures,
    passed_raw,
    raw_fail_reason_counts,
    raw_failure,
)
from llm.evaluate_chat_questions import Ask, conversations_for

# targets of issue #19 ("must show")
TARGET_FIRST_TOKEN_S = 1.0
TARGET_WHOLE_ANSWER_S = 6.0
TARGET_RATE = 0.9


# --- studies ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalStudy:
    """A phantom study as the chat sees it: its truth as measurements, its sex."""

    name: str
    measurements: Measurements
    sex: str | None

    def stored(self, index: int) -> StoredStudy:
        return StoredStudy(index, self.measurements.to_json(), patient_sex=self.sex or "")


def load_phantom_studies(folder: Path, n: int) -> list[EvalStudy]:
    """The first ``n`` A4C phantoms in ``folder`` (``echo-agent phantom``): measurements from
    the truth JSON, sex from the loop's DICOM header (the truth file does not record it)."""
    import pydicom

    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder")
    out: list[EvalStudy] = []
    for path in sorted(folder.glob("*.json")):
        truth = json.loads(path.read_text())
        dicom = path.with_suffix(".dcm")
        if truth.get("view", "A4C") != "A4C" or truth.get("ef_percent") is None:
            continue
        sex = None
        if dicom.is_file():
            sex = str(pydicom.dcmread(dicom, stop_before_pixels=True).get("PatientSex", ""))
        out.append(EvalStudy(path.stem, measurements_from_truth(truth),
                             sex if sex in ("M", "F") else None))  # fmt: skip
        if len(out) == n:
            break
    if not out:
        raise ValueError(f"{folder}: no A4C truth file (run: echo-agent phantom {folder})")
    return out


# --- running ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TurnResult:
    study: str
    conversation: int
    ask: Ask
    text: str  # what was finally shown
    raw_pass: bool
    guarded_pass: bool
    repeats: int
    answered: bool
    routed: bool | None  # the answer's own intent matches (None: the backend records none)
    model_verdict: str  # the model's own sentence: pass (shown) | fail | not_checked (none)
    first_token_s: float | None
    whole_s: float
    model_first_token_s: float | None = None  # the model's own first token (None: not asked)
    model_sentence: str = ""  # the model's own sentence when it was shown
    # why the raw guard failed: the refused sentence(s) and the guard's reasons (empty: passed)
    raw_failed_sentences: tuple[str, ...] = ()
    raw_fail_reasons: tuple[str, ...] = ()
    model_written: str = ""  # all the model wrote (also when it finished no sentence in time)

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "ask": self.ask.__dict__,
                "raw_failed_sentences": list(self.raw_failed_sentences),
                "raw_fail_reasons": list(self.raw_fail_reasons)}  # fmt: skip


@dataclass
class TimedModel:
    """Delegates to a text model and keeps the timings of its generations, so the table can
    give the model's own first token beside the first text the user saw."""

    inner: Any
    generations: list[Any] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.inner.name)

    def stream(self, messages: Any, limits: Any = None, on_done: Any = None) -> Any:
        def done(g: Any) -> None:
            self.generations.append(g)
            if on_done is not None:
                on_done(g)

        if limits is None:
            return self.inner.stream(messages, on_done=done)
        return self.inner.stream(messages, limits, on_done=done)


# (text, measurements, sex) -> whether the shown text passes the guard
Guard = Callable[[str, Measurements, str | None], bool]


def default_guard(text: str, m: Measurements, sex: str | None) -> bool:
    """The chat's own guard (``llm.claims``: numbers, grades and claims) on the shown text."""
    from llm.claims import check_claims
    from llm.facts import build_fact_sheet

    return bool(check_claims(text, build_fact_sheet(m, sex)).passed)


def _shown_model_sentence(answer: Any) -> str:
    """The model's first sentence when the answer shows it (``model_verdict`` pass)."""
    if str(getattr(answer, "model_verdict", "")) != "pass":
        return ""
    checked = str(getattr(answer, "model_sentence", ""))
    if checked:
        return checked
    written = sentences(str(getattr(answer, "model_text", "")))
    return written[0] if written else ""


def ask_once(
    backend: ChatBackend, stored: StoredStudy, history: Sequence[ChatTurn], question: str
) -> tuple[str, Any, float | None, float]:
    """(shown text, the final answer object or None, first-text seconds, whole seconds)."""
    started = time.perf_counter()
    first: float | None = None
    shown = ""
    answer = None
    for chunk in backend(stored, history, question):
        text = chunk if isinstance(chunk, str) else getattr(chunk, "text", "")
        if getattr(chunk, "replace", False):
            shown = text
        else:
            shown += text
        if text and first is None:
            first = time.perf_counter() - started
        if getattr(chunk, "answer", None) is not None:
            answer = chunk.answer
    whole = time.perf_counter() - started
    if answer is not None and getattr(answer, "text", None) is not None:
        shown = answer.text
    return shown.strip(), answer, first, whole


def run_evaluation(
    backend: ChatBackend,
    studies: Sequence[EvalStudy],
    max_questions: int,
    seed: int,
    knowledge: KnowledgeSentences,
    guard: Guard = default_guard,
    progress: Callable[[str], None] | None = None,
    timed: TimedModel | None = None,
) -> list[TurnResult]:
    """Asks every study its conversations (at most ``max_questions`` questions in all, whole
    conversations, studies taken in turn) and checks each answer."""
    per_study = [conversations_for(i, seed) for i in range(len(studies))]
    plan = [(i, per_study[i][slot])  # round-robin: each slot over all studies, then the next
            for slot in range(len(per_study[0]) if per_study else 0)
            for i in range(len(studies))]  # fmt: skip
    results: list[TurnResult] = []
    for index, conversation in plan:
        if len(results) + len(conversation) > max_questions:
            continue
        study = studies[index]
        stored = study.stored(index + 1)
        history: list[ChatTurn] = []
        for ask in conversation:
            n_generations = 0 if timed is None else len(timed.generations)
            text, answer, first, whole = ask_once(backend, stored, history, ask.text)
            new = [] if timed is None else timed.generations[n_generations:]
            model_first = next((g.first_token_s for g in new if g.first_token_s is not None),
                               None)  # fmt: skip
            intent = getattr(answer, "intent", None)
            m, sex = study.measurements, study.sex
            failed, why = raw_failure(answer)
            results.append(TurnResult(
                study.name, index, ask, text, passed_raw(answer), guard(text, m, sex),
                repeated_sentences(text), all_met(ask.requires, text, m, sex, knowledge),
                None if intent is None else str(intent) == ask.intent,
                str(getattr(answer, "model_verdict", "not_checked")), first, whole, model_first,
                _shown_model_sentence(answer), failed, why,
                str(getattr(answer, "model_text", "")),
            ))  # fmt: skip
            history += [ChatTurn("user", ask.text), ChatTurn("assistant", text)]
            if progress is not None:
                r = results[-1]
                progress(f"[{len(results)}] {study.name} {ask.intent}: {ask.text!r} -> "
                         f"answered={r.answered} raw={r.raw_pass} {whole:.1f} s: "
                         f"{text[:160]!r}")  # fmt: skip
                if r.model_sentence:
                    progress(f"    added: {r.model_sentence!r}")
                elif r.model_verdict == "not_checked" and r.model_written:
                    progress(f"    no sentence in time: {r.model_written!r}")
                for sentence in r.raw_failed_sentences:
                    progress(f"    refused: {sentence!r}")
                for reason in r.raw_fail_reasons:
                    progress(f"    because: {reason}")
    return results


# --- summary ----------------------------------------------------------------------------------


def _p95(values: Sequence[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def summarize(results: Sequence[TurnResult]) -> dict[str, Any]:
    """The figures of one configuration."""
    n = len(results)
    if n == 0:
        raise ValueError("no answers to summarise")
    firsts = [r.first_token_s for r in results if r.first_token_s is not None]
    wholes = [r.whole_s for r in results]
    model_firsts = [r.model_first_token_s for r in results if r.model_first_token_s is not None]
    routed = [r.routed for r in results if r.routed is not None]
    checked = [r for r in results if r.model_verdict in ("pass", "fail")]
    by_intent: dict[str, list[TurnResult]] = {}
    for r in results:
        by_intent.setdefault(r.ask.intent, []).append(r)
    return {
        "questions": n,
        "studies": len({r.study for r in results}),
        "raw_pass_rate": sum(r.raw_pass for r in results) / n,
        "guarded_pass_rate": sum(r.guarded_pass for r in results) / n,
        "repeated_sentences": sum(r.repeats for r in results),
        "answers_with_repeats_rate": sum(r.repeats > 0 for r in results) / n,
        "intent_answered_rate": sum(r.answered for r in results) / n,
        "intent_answered_by_type": {
            k: sum(r.answered for r in v) / len(v) for k, v in sorted(by_intent.items())
        },
        "routed_rate": sum(routed) / len(routed) if routed else None,
        "model_sentence_shown_rate": sum(r.model_verdict == "pass" for r in results) / n,
        "model_sentence_checked_rate": len(checked) / n,
        "raw_pass_rate_of_checked": (
            sum(r.model_verdict == "pass" for r in checked) / len(checked) if checked else None
        ),
        "distinct_model_sentences": len({r.model_sentence for r in results if r.model_sentence}),
        "first_token_s_median": statistics.median(firsts) if firsts else None,
        "first_token_s_p95": _p95(firsts),
        "model_first_token_s_median": statistics.median(model_firsts) if model_firsts else None,
        "whole_answer_s_median": statistics.median(wholes),
        "whole_answer_s_p95": _p95(wholes),
        "raw_fail_reason_counts": raw_fail_reason_counts(results),
    }


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.0f} %"


def _secs(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f} s"


_ROWS: tuple[tuple[str, str, Callable[[Any], str], str], ...] = (
    ("questions (studies)", "questions", str, ""),
    ("intent answered", "intent_answered_rate", _pct, ">= 90 %"),
    ("raw guard pass", "raw_pass_rate", _pct, ">= 90 %"),
    ("guarded pass", "guarded_pass_rate", _pct, "100 %"),
    ("repeated sentences", "repeated_sentences", str, "0"),
    ("answers with a repeat", "answers_with_repeats_rate", _pct, "0 %"),
    ("intent routed as expected", "routed_rate", _pct, ""),
    ("model's sentence written in time (checked)", "model_sentence_checked_rate", _pct, ""),
    ("raw guard pass of the checked sentences", "raw_pass_rate_of_checked", _pct, ""),
    ("model's sentence shown", "model_sentence_shown_rate", _pct, ""),
    ("distinct model sentences shown", "distinct_model_sentences", str, ""),
    ("first token, median", "first_token_s_median", _secs, "<= 1 s"),
    ("first token, p95", "first_token_s_p95", _secs, "<= 1 s"),
    ("the model's own first token, median", "model_first_token_s_median", _secs, ""),
    ("whole answer, median", "whole_answer_s_median", _secs, "<= 6 s"),
    ("whole answer, p95", "whole_answer_s_p95", _secs, "<= 6 s"),
)


def markdown_table(summaries: dict[str, dict[str, Any]]) -> str:
    """One column per configuration, one row per figure, the issue's target beside it."""
    labels = list(summaries)
    lines = ["| figure | " + " | ".join(labels) + " | target |",
             "|---|" + "---|" * len(labels) + "---|"]  # fmt: skip
    for title, key, fmt, target in _ROWS:
        cells = []
        for label in labels:
            s = summaries[label]
            cell = fmt(s[key])
            if key == "questions":
                cell = f"{s['questions']} ({s['studies']})"
            cells.append(cell)
        lines.append(f"| {title} | " + " | ".join(cells) + f" | {target} |")
    intents = sorted({k for s in summaries.values() for k in s["intent_answered_by_type"]})
    for intent in intents:
        cells = [_pct(summaries[lb]["intent_answered_by_type"].get(intent)) for lb in labels]
        lines.append(f"| answered: {intent} | " + " | ".join(cells) + " | |")
    return "\n".join(lines)


def write_results(
    path: Path, summaries: dict[str, dict[str, Any]], results: dict[str, Sequence[TurnResult]]
) -> None:
    """The table (markdown) at ``path`` with every raw guard failure and why below it, and
    every answer beside it (``.json``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = [markdown_table(summaries)]
    parts += [markdown_failures(label, rs) for label, rs in results.items()]
    path.write_text("\n\n".join(parts) + "\n")
    detail = {label: {"summary": summaries[label], "answers": [r.to_json() for r in rs]}
              for label, rs in results.items()}  # fmt: skip
    path.with_suffix(".json").write_text(json.dumps(detail, indent=1) + "\n")
