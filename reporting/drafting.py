"""Report drafting: the structured part from the template (always correct), the narrative part
from a language model, checked by the grounding guard before anyone sees it.

The model sees only the measurements, formatted exactly as they may be quoted, and the
ASE/EACVI 2015 grade already worked out: it never grades, converts or rounds anything itself.
No DICOM header text enters the prompt (a Series Description is written by whoever sent the
study, and text in a prompt can steer a model); the patient's sex is the only header value
used, and only as "M", "F" or unknown, to pick the reference range. A draft that fails the
guard is regenerated once with the failures named; a second failure puts the structured text
in the narrative's place (verdict ``replaced``), and the reasons travel with the draft so the
reviewer sees what the model got wrong.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from inference.types import Measurements
from reporting.grounding import (
    VERDICT_FAIL,
    VERDICT_PASS,
    GroundingResult,
    lv_grade,
    measured_facts,
)
from reporting.grounding import check_grounding as _check
from reporting.report_text import structured_text as _structured_text
from reporting.types import AlgorithmInfo, Algorithms

if TYPE_CHECKING:
    from inference.llm.backend import GenerationLimits, Message, TextModel

VERDICT_REPLACED = "replaced"
VERDICT_NOT_CHECKED = "not_checked"  # no language model: there is no narrative to check
DRAFT_MAX_NEW_TOKENS = 160
DRAFT_MAX_TIME_S = 60.0
MAX_NARRATIVE_SENTENCES = 4
NO_SENTENCE = "the model wrote no complete sentence"
_DIGITS = re.compile(r"\d+(?:\.\d+)?")
_PROMPT_ECHO = re.compile(
    r"previous paragraph|rejected because|write the narrative|quote only|measurements:|"
    r"LV systolic function \(ASE/EACVI|^\s*-\s",
    re.IGNORECASE | re.MULTILINE,
)

SYSTEM_PROMPT = (
    "You write the narrative paragraph of an adult transthoracic echocardiography report "
    "(apical four-chamber view, left ventricle only). Rules: use only the measurements in the "
    "user's message; copy each number exactly as written there, with its unit; write no other "
    "number; use the LV systolic function grade exactly as given; do not describe valves, "
    "rhythm, the right heart or anything else that was not measured; write two or three short "
    "sentences in plain clinical English; no headings, no lists."
)


@dataclass(frozen=True)
class Draft:
    """One drafted report. ``verdict`` is what ``ReportVersion.grounding_verdict`` stores:
    ``pass`` (the narrative passed, on the first or second try), ``replaced`` (both tries
    failed; the narrative is the structured text) or ``not_checked`` (no model, no narrative).
    ``reasons`` lists every failure of every try, prefixed with the try."""

    structured_text: str
    narrative_text: str
    verdict: str
    reasons: tuple[str, ...]
    demo_models: bool
    attempts: int
    model_name: str

    def grounding_json(self) -> dict[str, object]:
        return {"verdict": self.verdict, "reasons": list(self.reasons)}


def measurement_lines(m: Measurements, sex: str | None) -> list[str]:
    """The measurements as the model may quote them: ``label: value unit`` lines, then the
    grade. Shared with the chat so both prompts state the numbers the same way."""
    lines = [f"- {f.label}: {f.text}" for f in measured_facts(m)]
    if m.ef_sd_percent is not None:
        lines.append(f"- LVEF SD over beats: {m.ef_sd_percent:.1f} %")
    # no beat count: the embedded model turned "2 beats" into "2 beats per minute"
    lines.append(f"- LV systolic function (ASE/EACVI 2015): {lv_grade(m, sex).phrase}")
    if m.flags:
        lines.append("- Quality notes: " + " ".join(f.message for f in m.flags))
    return lines


def draft_messages(m: Measurements, sex: str | None, feedback: Sequence[str] = ()) -> list[Message]:
    """The prompt; ``feedback`` names the previous try's failures for the one regeneration."""
    from inference.llm.backend import Message

    body = "Measurements:\n" + "\n".join(measurement_lines(m, sex))
    body += "\n\nWrite the narrative paragraph now."
    if feedback:
        body += (
            "\nYour previous paragraph was rejected because: "
            + "; ".join(feedback[:6])
            + ". Quote only the values listed above, exactly as written."
        )
    return [Message("system", SYSTEM_PROMPT), Message("user", body)]


def tidy_narrative(text: str, max_sentences: int = MAX_NARRATIVE_SENTENCES) -> str:
    """Small models loop and get cut off by the token limit: keep the first few distinct
    complete sentences. It only removes text; what remains is checked as usual."""
    kept: list[str] = []
    for sentence in re.split(r"(?<=[.!?])\s+", text.strip()):
        sentence = " ".join(sentence.split())
        if not sentence or sentence in kept:
            continue
        if not sentence.endswith((".", "!", "?")):
            break  # cut off mid-sentence
        kept.append(sentence)
        if len(kept) == max_sentences:
            break
    return " ".join(kept)


def prompt_echo(text: str) -> tuple[str, ...]:
    """A narrative that repeats the instructions (small models copy the regeneration feedback,
    which quotes the measured values, so it would pass the number checks) is not a report."""
    found = _PROMPT_ECHO.search(text)
    if found is None:
        return ()
    return (f"the narrative repeats the instructions ({found.group(0)!r})",)


def missing_essentials(
    matched: Sequence[str], measurements: Measurements, sex: str | None
) -> tuple[str, ...]:
    """What a narrative must say beyond being true: the LVEF and, when one applies, the LV
    systolic function grade. The guard checks every statement a text makes; a small model can
    also write true-but-empty text ("the measurements are not available", praise of the
    heart's performance) that states nothing wrong and nothing useful, and a reviewer should
    not sign that as a report. ``matched`` is what the guard found true in the text."""
    grade = lv_grade(measurements, sex)
    if grade.ef is None:
        return ()
    numbers = [float(n) for quoted in matched for n in _DIGITS.findall(quoted)]
    missing = []
    if not any(grade.ef.matches(n) for n in numbers):
        missing.append(f"the narrative does not state the LVEF ({grade.ef.text})")
    if grade.grade is not None and not any(not _DIGITS.search(q) for q in matched):
        missing.append(f"the narrative does not state the LV systolic function ({grade.phrase})")
    return tuple(missing)


def _placeholder_algorithms(demo_models: bool) -> Algorithms:
    """For callers without algorithm identification: the template text uses only the demo
    flag from it (labels and method texts come from the measurements)."""
    info = AlgorithmInfo("not recorded", "not recorded", demo_model=demo_models)
    return Algorithms(segmentation=info, ejection_fraction=info)


def draft_report(
    measurements: Measurements,
    backend: TextModel | None,
    sex: str | None,
    demo_models: bool,
    *,
    algorithms: Algorithms | None = None,
    limits: GenerationLimits | None = None,
) -> Draft:
    """The structured text and a guarded narrative. ``sex`` is "M", "F" or anything else for
    unknown; ``backend`` None drafts no narrative (verdict ``not_checked``)."""
    from inference.llm.backend import GenerationLimits

    if algorithms is None:
        algorithms = _placeholder_algorithms(demo_models)
    elif algorithms.demo_models != demo_models:
        raise ValueError("demo_models disagrees with the algorithms' demo flag")
    structured = _structured_text(measurements, algorithms, sex)
    if backend is None:
        return Draft(structured, "", VERDICT_NOT_CHECKED, (), demo_models, 0, "")
    limits = limits or GenerationLimits(DRAFT_MAX_NEW_TOKENS, DRAFT_MAX_TIME_S)
    reasons: list[str] = []
    feedback: tuple[str, ...] = ()
    for attempt in (1, 2):
        raw = backend.generate(draft_messages(measurements, sex, feedback), limits).text
        text = tidy_narrative(raw)
        result = _check(text, measurements, sex) if text else None
        if result is not None and result.verdict == VERDICT_PASS:
            missing = prompt_echo(text) + missing_essentials(result.matched, measurements, sex)
            if missing:
                result = GroundingResult(VERDICT_FAIL, missing, result.matched)
        if result is not None and result.verdict == VERDICT_PASS:
            return Draft(structured, text, VERDICT_PASS, tuple(reasons), demo_models, attempt,
                         backend.name)  # fmt: skip
        failures = result.reasons if result is not None else (NO_SENTENCE,)
        reasons += [f"attempt {attempt}: {r}" for r in dict.fromkeys(failures)]
        feedback = failures
    return Draft(structured, structured, VERDICT_REPLACED, tuple(reasons), demo_models, 2,
                 backend.name)  # fmt: skip
