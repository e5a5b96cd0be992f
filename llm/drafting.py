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
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from inference.types import Measurements
from llm.claims import claim_findings
from llm.facts import SIZE_ENLARGED, SIZE_NORMAL, SIZE_SMALL, FactSheet, build_fact_sheet
from llm.grounding import (
    GroundingResult,
    lv_grade,
    measured_facts,
)
from llm.grounding import check_grounding as _check
from llm.types import Verdict
from reporting.body_size import BodySize
from reporting.interpretation import (
    GRADE_ABOVE,
    GRADE_MILD,
    GRADE_MODERATE,
    GRADE_NORMAL,
    GRADE_SEVERE,
)
from reporting.report_text import structured_text as _structured_text
from reporting.types import AlgorithmInfo, Algorithms
from reporting.values import MANUAL_MEASUREMENT, shown_flags, withheld_values

if TYPE_CHECKING:
    from llm.backend import GenerationLimits, Message, TextModel

DRAFT_MAX_NEW_TOKENS = 160
DRAFT_MAX_TIME_S = 60.0
MAX_NARRATIVE_SENTENCES = 3  # the system prompt asks for "two or three short sentences"
# the words the narrative starts with: the model continues them, so its first statement is the
# LVEF (a report must state it, and a small model otherwise opens with anything)
NARRATIVE_OPENING = "The left ventricular ejection fraction is"
# ... and when the LVEF is withheld: the model continues with the reason it was given
NARRATIVE_OPENING_WITHHELD = "The left ventricular ejection fraction is not measurable"
NO_SENTENCE = "the model wrote no complete sentence"
_DIGITS = re.compile(r"\d+(?:\.\d+)?")
# what the claim checks match that is no LV-function grade: size and regularity words
_NOT_A_GRADE = re.compile(r"size|sized|enlarg|dilat|large|big|small|regular", re.I)
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


def measurement_lines(
    m: Measurements, sex: str | None, sheet: FactSheet | None = None
) -> list[str]:
    """The measurements as the model may quote them: ``label: value unit`` lines, then
    ``label: not measurable (reason); manual measurement required`` for each withheld value,
    then the grade. Shared with the chat so both prompts state the numbers the same way.
    ``sheet`` (else built from ``m`` and ``sex``) gives the LV size, indexed to body surface
    area when the header had height and weight."""
    lines = [f"- {f.label}: {f.text}" for f in measured_facts(m)]
    # a withheld value is no number the model may quote: it is told why, in the words the
    # guard accepts when copied (``llm.grounding``)
    lines += [f"- {w.label}: {w.text} ({w.reason}); {MANUAL_MEASUREMENT}"
              for w in withheld_values(m)]  # fmt: skip
    if m.ef_sd_percent is not None:
        lines.append(f"- LVEF SD over beats: {m.ef_sd_percent:.1f} %")
    # no beat count: the embedded model turned "2 beats" into "2 beats per minute"
    lines.append(f"- LV systolic function (ASE/EACVI 2015): {lv_grade(m, sex).phrase}")
    size = size_statement(sheet or build_fact_sheet(m, sex))
    if size:
        lines.append(f"- LV size (ASE/EACVI 2015): {size}")
    flags = shown_flags(m)
    if flags:
        lines.append("- Quality notes: " + " ".join(f.message for f in flags))
    return lines


_SIZE_WORDS = {SIZE_ENLARGED: "enlarged", SIZE_SMALL: "smaller than usual",
               SIZE_NORMAL: "normal in size"}  # fmt: skip


def size_statement(sheet: FactSheet) -> str:
    """The LV size sentence every narrative carries when the size is graded, in words the
    number guard accepts ("The left ventricle is enlarged (end-diastolic volume 130.9 mL,
    above the reference range for women)."); "" when the size is not graded."""
    edv = sheet.get("lv_edv")
    if sheet.lv_size is None or edv is None or edv.value is None:
        return ""
    who = {"M": "men", "F": "women"}.get(sheet.sex or "", "men and women")
    where = {SIZE_ENLARGED: "above", SIZE_SMALL: "below", SIZE_NORMAL: "within"}[sheet.lv_size]
    # graded on the BSA index: said so, without the index's number (the guard checks mL)
    indexed = " indexed to body surface area" if sheet.get("lv_edv_index") else ""
    return (f"The left ventricle is {_SIZE_WORDS[sheet.lv_size]} (end-diastolic volume "
            f"{edv.value:.1f} mL, {where} the reference range for {who}{indexed}).")  # fmt: skip


def with_size(narrative: str, sheet: FactSheet) -> str:
    """``narrative`` with the size sentence appended when the LV is enlarged or small and the
    narrative does not say so itself (a normal size needs no sentence of its own)."""
    if sheet.lv_size not in (SIZE_ENLARGED, SIZE_SMALL):
        return narrative
    said = " ".join(claim_findings(narrative, sheet.lv_size, sheet.rhythm).matched)
    if re.search(r"enlarg|dilat|small|large", said, re.I):  # it said the size, truly
        return narrative
    return f"{narrative} {size_statement(sheet)}".strip()


def draft_request(
    m: Measurements, sex: str | None, feedback: Sequence[str] = (), sheet: FactSheet | None = None
) -> list[Message]:
    """The request alone (system rules, measurements); ``feedback`` names the previous try's
    failures for the one regeneration. The video-text training data is built on this."""
    from llm.backend import Message

    body = "Measurements:\n" + "\n".join(measurement_lines(m, sex, sheet))
    body += "\n\nWrite the narrative paragraph now."
    if feedback:
        body += (
            "\nYour previous paragraph was rejected because: "
            + "; ".join(feedback[:6])
            + ". Quote only the values listed above, exactly as written."
        )
    return [Message("system", SYSTEM_PROMPT), Message("user", body)]


def draft_messages(
    m: Measurements, sex: str | None, feedback: Sequence[str] = (), sheet: FactSheet | None = None
) -> list[Message]:
    """The whole drafting prompt: the request after one worked example, ending in the answer's
    opening words, which the model continues (``NARRATIVE_OPENING``).

    Why: asked zero-shot, the embedded 135M model passed the guard on none of 10 first drafts
    of phantom loops (it named other views, graded nothing, or left out the LVEF). With a
    worked example for other numbers in the study's grade band, the answer opening, and only
    the first paragraph kept (``tidy_narrative``), 19 of 20 first drafts passed. The example's
    numbers are made up, so a draft that copies them fails the guard like any other invented
    number (unless one happens to equal the study's value, which is then true)."""
    from llm.backend import Message

    request = draft_request(m, sex, feedback, sheet)
    example = _worked_example(m, sex)
    if example is None:
        withheld = lv_grade(m, sex).withheld is not None
        opening = NARRATIVE_OPENING_WITHHELD if withheld else NARRATIVE_OPENING
        return [*request, Message("assistant", opening)]
    example_request, example_answer = example
    return [
        request[0],
        Message("user", example_request),
        Message("assistant", example_answer),
        request[1],
        Message("assistant", NARRATIVE_OPENING),
    ]


# The worked example's LVEFs (regression, disks) and EDV, one set per grade band, graded alike
# for men and women (None: a borderline LVEF that is not graded while the sex is unknown). No
# value holds the digits "80", which the prompt-injection test looks for.
_EXAMPLE_VALUES: dict[str | None, tuple[float, float, float]] = {
    GRADE_NORMAL: (58.0, 57.6, 110.0),
    GRADE_ABOVE: (77.0, 76.4, 95.0),
    GRADE_MILD: (46.0, 45.2, 125.0),
    GRADE_MODERATE: (35.0, 34.1, 150.0),
    GRADE_SEVERE: (24.0, 23.5, 190.0),
    None: (53.0, 52.6, 105.0),
}
_EXAMPLE_HEART_RATE_BPM = 68.0
_EXAMPLE_EF_SD_PERCENT = 2.4
_EXAMPLE_GRADE_WORDS = {
    GRADE_NORMAL: "consistent with normal LV systolic function",
    GRADE_ABOVE: "above the normal range (hyperdynamic)",
    GRADE_MILD: "consistent with mildly reduced LV systolic function",
    GRADE_MODERATE: "consistent with moderately reduced LV systolic function",
    GRADE_SEVERE: "consistent with severely reduced LV systolic function",
}


def _worked_example(m: Measurements, sex: str | None) -> tuple[str, str] | None:
    """A request and its answer for made-up measurements with the study's shape (the same
    values present or missing, the same quality notes, which the answer leaves to the
    structured part) and grade band; None when the study has no LVEF. Without the SD and the
    notes in the example, the embedded model wrote about them in its own words ("SD 1.9 %,
    indicating a relatively normal heart function") and failed on demo studies."""
    grade = lv_grade(m, sex)
    if grade.ef is None:
        return None
    ef, disks, edv = _EXAMPLE_VALUES[grade.grade]
    volumes = m.edv_ml is not None and m.esv_ml is not None
    made_up = replace(
        m,
        ef_percent=ef if m.ef_percent is not None else None,
        ef_disks_percent=disks if m.ef_disks_percent is not None else None,
        ef_sd_percent=_EXAMPLE_EF_SD_PERCENT if m.ef_sd_percent is not None else None,
        edv_ml=edv if volumes else None,
        esv_ml=round(edv * (1 - ef / 100), 1) if volumes else None,
        heart_rate_bpm=_EXAMPLE_HEART_RATE_BPM if m.heart_rate_bpm is not None else None,
    )
    facts = {f.key: f for f in measured_facts(made_up)}
    request = draft_request(made_up, sex)[1].content
    methods = (("ef_regression", "AI regression"), ("ef_disks", "the method of disks"))
    efs = [f"{facts[key].text} by {how}" for key, how in methods if key in facts]
    if made_up.ef_sd_percent is not None:
        efs[0] += f" (SD {made_up.ef_sd_percent:.1f} % over beats)"
    if grade.grade is None:
        first = (f"{NARRATIVE_OPENING} {' and '.join(efs)}. No grade is stated, because its "
                 "reference range depends on the patient's sex, which is unknown.")  # fmt: skip
    else:
        first = f"{NARRATIVE_OPENING} {' and '.join(efs)}, {_EXAMPLE_GRADE_WORDS[grade.grade]}."
    sentences = [first]
    if volumes:
        sentences.append(f"The LV end-diastolic volume is {facts['edv'].text} and the "
                         f"end-systolic volume is {facts['esv'].text}.")  # fmt: skip
    if "heart_rate" in facts:
        sentences.append(f"The heart rate was {facts['heart_rate'].text}.")
    return request, " ".join(sentences)


def tidy_narrative(text: str, max_sentences: int = MAX_NARRATIVE_SENTENCES) -> str:
    """Small models loop and get cut off by the token limit: keep the first few distinct
    complete sentences of the first paragraph (the narrative is one paragraph; after a blank
    line the embedded model starts over, copying prompt lines). It only removes text; what
    remains is checked as usual."""
    kept: list[str] = []
    paragraph = re.split(r"\n\s*\n", text.strip(), maxsplit=1)[0]
    for sentence in re.split(r"(?<=[.!?])\s+", paragraph):
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
    grades = [q for q in matched if not _DIGITS.search(q) and not _NOT_A_GRADE.search(q)]
    if grade.grade is not None and not grades:
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
    body: BodySize | None = None,
) -> Draft:
    """The structured text and a guarded narrative. ``sex`` is "M", "F" or anything else for
    unknown; ``backend`` None drafts no narrative (verdict ``not_checked``). ``body`` (the
    header's checked height and weight) indexes the LV volumes in both."""
    from llm.backend import GenerationLimits

    if algorithms is None:
        algorithms = _placeholder_algorithms(demo_models)
    elif algorithms.demo_models != demo_models:
        raise ValueError("demo_models disagrees with the algorithms' demo flag")
    structured = _structured_text(measurements, algorithms, sex, body)
    if backend is None:
        return Draft(structured, "", Verdict.NOT_CHECKED, (), demo_models, 0, "")
    limits = limits or GenerationLimits(DRAFT_MAX_NEW_TOKENS, DRAFT_MAX_TIME_S)
    height_cm, weight_kg = (body.height_cm, body.weight_kg) if body else (None, None)
    sheet = build_fact_sheet(measurements, sex, height_cm=height_cm, weight_kg=weight_kg,
                             demo_models=demo_models)  # fmt: skip
    reasons: list[str] = []
    feedback: tuple[str, ...] = ()
    for attempt in (1, 2):
        messages = draft_messages(measurements, sex, feedback, sheet)
        raw = backend.generate(messages, limits).text
        text = tidy_narrative(messages[-1].content + raw)
        result = _check(text, measurements, sex, sheet=sheet) if text else None
        if result is not None and result.verdict == Verdict.PASS:
            missing = prompt_echo(text) + missing_essentials(result.matched, measurements, sex)
            if missing:
                result = GroundingResult(Verdict.FAIL, missing, result.matched)
        if result is not None and result.verdict == Verdict.PASS:
            return Draft(structured, with_size(text, sheet), Verdict.PASS, tuple(reasons),
                         demo_models, attempt, backend.name)  # fmt: skip
        failures = result.reasons if result is not None else (NO_SENTENCE,)
        reasons += [f"attempt {attempt}: {r}" for r in dict.fromkeys(failures)]
        feedback = failures
    return Draft(structured, with_size(structured, sheet), Verdict.REPLACED, tuple(reasons),
                 demo_models, 2, backend.name)  # fmt: skip
