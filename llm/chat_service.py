"""The interface between the chat panel and whatever answers: a callable that takes the study's
context, the conversation so far and the question, and yields the answer in chunks.

The language-model backend plugs in here (``create_app(..., chat_backend=...)``;
``language_model_backend(model)`` wraps ``llm.chat.stream_answer`` for a loaded
``llm`` text model). Without one, ``measurements_backend`` answers deterministically
from the stored measurements only, quoting their values and saying so, so the panel never shows
a number the node did not measure.

A backend yields ``str`` pieces, or richer pieces with ``text``, ``replace`` (drop what was
shown and show ``text`` instead: the grounding guard replaced the answer) and ``answer`` (the
finished answer: its ``text`` is what is stored, its ``grounding_json()`` goes with it).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from llm.chat import ChatTurn
from reporting.types import DEMO_LABEL

FALLBACK_LABEL = "[Measurements only: no language model is connected; stored values quoted]"


@dataclass(frozen=True)
class StoredStudy:
    """What a backend may know about the study: the stored measurements (``Measurements.to_json``
    plus provenance), the reported values as the table shows them, the current report text."""

    study_id: int
    measurements: dict[str, Any] | None
    table: list[dict[str, Any]] = field(default_factory=list)
    report_text: str = ""
    demo_models: bool = False
    patient_sex: str = ""
    height_cm: float | None = None  # from the header, when known: indexes the LV volumes
    weight_kg: float | None = None


ChatBackend = Callable[[StoredStudy, Sequence[ChatTurn], str], Iterable[Any]]


def language_model_backend(model: Any, *, addition_time_s: float | None = None) -> ChatBackend:
    """The guarded chat of ``llm.chat`` on ``model`` (an ``llm.backend.TextModel``): the
    answer composed from the study's facts and the knowledge base streams at once, and the
    model's one added sentence follows only when it passes the claim guard.

    ``model`` may also be a function that loads the model: it is called on the first question
    (once), so the node starts serving before a slow model load finishes.
    ``addition_time_s`` (evaluation only) replaces the model sentence's time budget."""
    lock = threading.Lock()
    loaded: list[Any] = [model] if hasattr(model, "stream") else []

    def get_model() -> Any:
        with lock:
            if not loaded:
                loaded.append(model())
            return loaded[0]

    answer = _guarded(get_model, addition_time_s)
    answer.__name__ = f"language_model:{getattr(model, 'name', type(model).__name__)}"
    return answer


def composed_backend() -> ChatBackend:
    """The same guarded answers without a language model: the composed core from the study's
    facts and the knowledge base only (for a node whose model is switched off, and tests)."""
    answer = _guarded(None)
    answer.__name__ = "composed"
    return answer


def _guarded(
    get_model: Callable[[], Any] | None, addition_time_s: float | None = None
) -> Callable[..., Iterator[Any]]:
    from inference.types import Measurements
    from llm import chat as guarded

    def answer(context: StoredStudy, history: Sequence[ChatTurn], question: str) -> Iterator[Any]:
        if not context.measurements:
            yield from measurements_backend(context, history, question)
            return
        study = guarded.StudyContext(
            measurements=Measurements.from_json(context.measurements),
            sex=context.patient_sex or None,
            report_text=context.report_text,
            demo_models=context.demo_models,
            height_cm=context.height_cm,
            weight_kg=context.weight_kg,
        )
        # the composed core streams before the model is asked for (or loaded)
        yield from guarded.stream_answer(
            question, study, get_model, history, addition_time_s=addition_time_s
        )

    return answer


def _fmt(value: Any, unit: str) -> str:
    return "not measured" if value is None else f"{float(value):.1f} {unit}".strip()


_TOPICS: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("ef", "ejection", "fraction", "function", "systolic"), ("lvef_regression", "lvef_disks")),
    (("volume", "edv", "esv", "diastolic", "stroke", "sv"), ("lv_edv", "lv_esv", "lv_sv")),
    (("heart", "rate", "hr", "bpm", "pulse"), ("heart_rate",)),
)


def measurements_backend(
    context: StoredStudy, history: Sequence[ChatTurn], question: str
) -> Iterator[str]:
    """Answers by quoting stored values; it never interprets beyond what the table states."""
    del history  # a deterministic answer depends on the question alone
    lines = [FALLBACK_LABEL]
    if context.demo_models:
        lines.append(DEMO_LABEL + ".")
    if not context.measurements:
        lines.append("This study has no measurements yet, so there is nothing to quote.")
        yield from _chunks("\n".join(lines))
        return
    words = {w.strip("?.,!:;()").lower() for w in question.split()}
    by_key = {row["key"]: row for row in context.table}
    wanted: list[str] = []
    for keys, rows in _TOPICS:
        if words & set(keys):
            wanted += [r for r in rows if r not in wanted]
    m = context.measurements
    asks_flags = bool(words & {"flag", "flags", "quality", "warning", "warnings", "reliable"})
    asks_beats = bool(words & {"beat", "beats", "cycle", "cycles"})
    withheld = _withheld(m)
    if not wanted and not asks_flags and not asks_beats:
        wanted = list(dict.fromkeys([*by_key, *withheld]))
        lines.append("I can only quote the stored measurements. All of them:")
    for key in wanted:
        row = by_key.get(key)
        if key in withheld:  # never its number, even if a stored table row had one
            lines.append(f"- {withheld[key].statement}")
        elif row is None:
            lines.append(f"- {key.replace('_', ' ')}: not measured on this loop.")
        else:
            lines.append(f"- {row['label']}: {row['text']} ({row['method']}).")
    if "lvef_regression" in wanted and "lvef_disks" in wanted:
        ef, disks = m.get("ef_percent"), m.get("ef_disks_percent")
        both = ef is not None and disks is not None
        if both and not {"lvef_regression", "lvef_disks"} & set(withheld):
            lines.append(f"- Regression minus disks: {float(ef) - float(disks):+.1f} points.")
    if asks_beats or asks_flags:
        beats = m.get("beats") or []
        lines.append(f"- Beats found: {len(beats)}.")
        for i, beat in enumerate(beats, 1):
            regression = _beat_value(beat.get("ef_percent"), "lvef_regression" in withheld)
            disks = _beat_value(beat.get("ef_disks_percent"), "lvef_disks" in withheld)
            lines.append(
                f"  Beat {i}: ED frame {beat.get('ed_frame')}, ES frame {beat.get('es_frame')}, "
                f"EF {regression} (regression), {disks} (disks)."
            )
    quality = _quality(m)
    if quality and (asks_flags or not wanted or "lvef_regression" in wanted):
        lines.append(f"- {quality}")
    if asks_flags or not wanted:
        flags = _shown_flags(m)
        if flags:
            lines += [f"- Quality flag: {f.get('message', f.get('code', ''))}" for f in flags]
        else:
            lines.append("- No quality flags were raised.")
    yield from _chunks("\n".join(lines))


def _beat_value(value: Any, withheld: bool) -> str:
    return "not measurable" if withheld else _fmt(value, "%")


def _quality(measurements: dict[str, Any]) -> str:
    """The loop quality score's sentence, "" for analyses from before the validity gate."""
    from inference.types import Measurements
    from reporting.values import loop_quality

    quality = loop_quality(Measurements.from_json(measurements))
    return "" if quality is None else quality.statement


def _shown_flags(measurements: dict[str, Any]) -> list[dict[str, str]]:
    """The stored flags but any that quotes a withheld value's number."""
    from inference.types import Measurements
    from reporting.values import shown_flags

    return [f.to_json() for f in shown_flags(Measurements.from_json(measurements))]


def _withheld(measurements: dict[str, Any]) -> dict[str, Any]:
    """The stored values the node does not stand behind, by ``reporting.values`` key."""
    from inference.types import Measurements
    from reporting.values import withheld_by_key

    return withheld_by_key(Measurements.from_json(measurements))


def _chunks(text: str, size: int = 24) -> Iterator[str]:
    """Small pieces, so the panel streams the same way it will for a language model."""
    for start in range(0, len(text), size):
        yield text[start : start + size]
