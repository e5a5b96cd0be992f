"""Training data for the video-text model, generated from measurements.

Stage 1 pairs each loop with a short report; stage 2 asks descriptive, explanatory and advisory
questions about it (EchoGPT's three kinds). Each instruction is the prompt the node itself gives
a language model for that task -- the drafting prompt (``llm.drafting.draft_messages``)
for a report, the chat prompt with the study data and report (``llm.chat.chat_messages``)
for a question -- flattened as the video-text backend flattens it, so the model learns to copy
the measured values it is given rather than to guess numbers from pixels. The wording grades
LVEF by ASE/EACVI 2015 (``reporting.interpretation``, the same code the reports use) and states
only the loop's own values, so every answer passes the grounding guard: the model is never
taught to write a number the guard would reject. Sex is unknown for phantoms and
EchoNet-Dynamic; where the two sexes' grades differ the answer says the grade depends on sex
rather than picking one.

File format (JSON, UTF-8)::

    {"format": "echo-agent-llm-dataset", "version": 1, "stage": 1,
     "samples": [{"id": "case0001/report",
                  "video": "/data/case0001.dcm",    # absolute, or relative to the JSON file
                  "video_format": "dicom",          # "dicom" | "avi" (EchoNet layout, 112x112)
                  "kind": "report",                 # stage 1: "report"; stage 2: "descriptive",
                                                    #   "explanatory", "advisory"
                  "instruction": "You write the narrative paragraph ... Measurements: ...",
                  "answer": "...",
                  "measurements": {"ef_percent": 55.2, "edv_ml": 120.3, "esv_ml": 54.1,
                                   "heart_rate_bpm": 72.0}}]}
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reporting.interpretation import (
    GRADE_ABOVE,
    GRADE_MILD,
    GRADE_MODERATE,
    GRADE_NORMAL,
    GRADE_SEVERE,
    lvef_grade,
)

if TYPE_CHECKING:
    from inference.types import Measurements

FORMAT = "echo-agent-llm-dataset"
VERSION = 1
STAGES = (1, 2)
KINDS = {1: ("report",), 2: ("descriptive", "explanatory", "advisory")}
DESCRIBE_QUESTION = "Could you describe this echocardiogram video for me?"
# why a value the data set does not give is not measurable (EchoNet-Dynamic has no heart rate)
MISSING_REASON = "not recorded for this loop"
ADVICE_QUESTION = "My LVEF is not in the normal range, what should I do for this case?"

_GRADE_WORDS = {
    GRADE_NORMAL: "normal LV systolic function",
    GRADE_ABOVE: "an LVEF above the normal range (hyperdynamic)",
    GRADE_MILD: "mildly reduced LV systolic function",
    GRADE_MODERATE: "moderately reduced LV systolic function",
    GRADE_SEVERE: "severely reduced LV systolic function",
}


@dataclass(frozen=True)
class LlmSample:
    id: str
    video: str
    video_format: str
    kind: str
    instruction: str
    answer: str
    measurements: Mapping[str, float | None]

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "measurements": dict(self.measurements)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LlmSample:
        missing = {f for f in cls.__dataclass_fields__ if f not in data}
        if missing:
            raise ValueError(f"dataset sample lacks {', '.join(sorted(missing))}")
        return cls(**{f: data[f] for f in cls.__dataclass_fields__})


def _grade_sentence(ef: float) -> str:
    grades = {lvef_grade(ef, sex) for sex in ("M", "F")}
    if len(grades) > 1:
        return (
            f"The LVEF is {ef:.1f} %; its grade depends on sex, which is not recorded, so it is "
            "not graded here."
        )
    return f"The LVEF is {ef:.1f} %, which means {_GRADE_WORDS[grades.pop()]} (ASE/EACVI 2015)."


def _values_sentence(values: Mapping[str, float | None]) -> str:
    parts = []
    if values.get("edv_ml") is not None:
        parts.append(f"the LV end-diastolic volume is {values['edv_ml']:.1f} mL")
    if values.get("esv_ml") is not None:
        parts.append(f"the LV end-systolic volume is {values['esv_ml']:.1f} mL")
    if values.get("heart_rate_bpm") is not None:
        parts.append(f"the heart rate is {values['heart_rate_bpm']:.1f} /min")
    if not parts:
        return ""
    text = "; ".join(parts)
    return text[0].upper() + text[1:] + "."


def report_text(values: Mapping[str, float | None]) -> str:
    """Stage 1 target: what a short A4C LV report says about these values."""
    ef = values.get("ef_percent")
    lines = ["Apical four-chamber view of the left ventricle."]
    lines.append(
        f"LVEF not measurable: {MISSING_REASON}; manual measurement required."
        if ef is None
        else _grade_sentence(float(ef))
    )
    lines.append(_values_sentence(values))
    lines.append("Regional wall motion and the valves were not assessed.")
    return " ".join(line for line in lines if line)


def qa_pairs(values: Mapping[str, float | None]) -> list[tuple[str, str, str]]:
    """Stage 2 targets: (kind, question, answer) for the three kinds of question."""
    ef = values.get("ef_percent")
    if ef is None:
        return []
    ef = float(ef)
    grades = {lvef_grade(ef, sex) for sex in ("M", "F")}
    grade = grades.pop() if len(grades) == 1 else None
    describe = (
        "This is an apical four-chamber view showing the left ventricle through the cardiac "
        f"cycle. {_grade_sentence(ef)} {_values_sentence(values)}"
    ).strip()
    explain = (
        "LVEF is the share of the end-diastolic volume that the left ventricle ejects with each "
        f"beat. {_grade_sentence(ef)}"
    )
    if grade == GRADE_NORMAL:
        advice = (
            f"On this study your LVEF of {ef:.1f} % is within the normal range (ASE/EACVI 2015). "
            "If you were told otherwise, ask your cardiologist to compare the studies."
        )
    elif grade is None:
        advice = (
            f"Your LVEF of {ef:.1f} % lies where the reference range differs between men and "
            "women. Your cardiologist can interpret it with your other findings."
        )
    else:
        advice = (
            f"Your LVEF of {ef:.1f} % shows {_GRADE_WORDS[grade]}. Please see your cardiologist, "
            "who can look for the cause and discuss further tests and treatment with you."
        )
    return [
        ("descriptive", DESCRIBE_QUESTION, describe),
        ("explanatory", f"What does an LVEF of {ef:.1f} % mean?", explain),
        ("advisory", ADVICE_QUESTION, advice),
    ]


def values_measurements(values: Mapping[str, float | None]) -> Measurements:
    """A loop's values as the node's measurements (no beats, no flags; sex unknown): what the
    prompts are built from. Both EFs are the one EF, as for phantom truth. A value the data set
    lacks is not measurable, with ``MISSING_REASON``: the prompt then says so as it says it for
    a value the node's validity gate withheld (``llm.drafting.measurement_lines``), so
    the model learns to state no number for it."""
    from inference.types import GATED_KEYS, Measurements, Validity, ValueValidity

    ef = values.get("ef_percent")
    given = {"ef_disks_percent": ef, **{k: values.get(k) for k in GATED_KEYS if k in values}}
    validity = {
        key: ValueValidity(Validity.MEASURED)
        if given.get(key) is not None
        else ValueValidity(Validity.NOT_MEASURABLE, MISSING_REASON)
        for key in GATED_KEYS
    }
    return Measurements(
        ef_percent=ef, ef_sd_percent=None, ef_source="beats" if ef is not None else "none",
        ef_clips_mean_percent=None, ef_disks_percent=ef, edv_ml=values.get("edv_ml"),
        esv_ml=values.get("esv_ml"), heart_rate_bpm=values.get("heart_rate_bpm"),
        heart_rate_source="beats" if values.get("heart_rate_bpm") is not None else "none",
        beats=(), flags=(), n_frames=0, frame_time_ms=None, spacing_cm=None, ed_frames=(),
        es_frames=(), lv_area_px=(), lv_area_cm2=None, validity=validity,
    )  # fmt: skip


def report_instruction(values: Mapping[str, float | None]) -> str:
    """Stage 1 instruction: the drafting prompt for these values."""
    from llm.drafting import draft_request
    from llm.video_text import instruction_from_messages

    # the request without the worked example and the answer opening that drafting adds: the
    # shipped adapter was trained on this instruction
    return instruction_from_messages(draft_request(values_measurements(values), None))


def question_instruction(question: str, values: Mapping[str, float | None]) -> str:
    """Stage 2 instruction: the chat prompt with the stage 1 report as the study's report
    (the node's chat also passes its structured text, which repeats the measurement lines with
    method and beat counts that these values do not carry)."""
    from llm.chat import StudyContext, chat_messages
    from llm.video_text import instruction_from_messages

    context = StudyContext(values_measurements(values), None, report_text(values))
    return instruction_from_messages(chat_messages(question, context))


def samples_for(
    case_id: str, video: str, video_format: str, values: Mapping[str, float | None], stage: int
) -> list[LlmSample]:
    if stage == 1:
        instruction = report_instruction(values)
        return [LlmSample(f"{case_id}/report", video, video_format, "report", instruction,
                          report_text(values), dict(values))]  # fmt: skip
    if stage == 2:
        return [LlmSample(f"{case_id}/{kind}", video, video_format, kind,
                          question_instruction(q, values), a, dict(values))
                for kind, q, a in qa_pairs(values)]  # fmt: skip
    raise ValueError(f"stage must be 1 or 2, got {stage}")


def _values(data: Mapping[str, Any], keys: Mapping[str, str]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for ours, theirs in keys.items():
        raw = data.get(theirs)
        out[ours] = None if raw in (None, "") else float(raw)
    return out


def samples_from_phantoms(folder: Path, stage: int) -> list[LlmSample]:
    """Every A4C phantom loop (``NAME.dcm`` with truth ``NAME.json``) in ``folder``."""
    folder = Path(folder)
    samples: list[LlmSample] = []
    keys = {k: k for k in ("ef_percent", "edv_ml", "esv_ml", "heart_rate_bpm")}
    for truth_path in sorted(folder.glob("*.json")):
        dicom = truth_path.with_suffix(".dcm")
        truth = json.loads(truth_path.read_text())
        if not dicom.is_file() or truth.get("view", "A4C") != "A4C":
            continue
        values = _values(truth, keys)
        samples += samples_for(truth_path.stem, str(dicom.resolve()), "dicom", values, stage)
    return samples


def samples_from_echonet(
    filelist_csv: Path, stage: int, splits: Iterable[str] = ("TRAIN",)
) -> list[LlmSample]:
    """EchoNet-Dynamic's ``FileList.csv`` (EF, EDV, ESV per video; no heart rate); videos are
    ``Videos/<FileName>.avi`` beside it."""
    filelist_csv = Path(filelist_csv)
    wanted = {s.upper() for s in splits}
    keys = {"ef_percent": "EF", "edv_ml": "EDV", "esv_ml": "ESV"}
    samples: list[LlmSample] = []
    with filelist_csv.open(newline="") as fh:
        for row in csv.DictReader(fh):
            if wanted and row.get("Split", "").upper() not in wanted:
                continue
            name = row["FileName"] if row["FileName"].endswith(".avi") else row["FileName"] + ".avi"
            values = {**_values(row, keys), "heart_rate_bpm": None}
            video = str((filelist_csv.parent / "Videos" / name).resolve())
            samples += samples_for(Path(name).stem, video, "avi", values, stage)
    return samples


def write_dataset(samples: Iterable[LlmSample], path: Path, stage: int) -> Path:
    items = [s.to_json() for s in samples]
    payload = {"format": FORMAT, "version": VERSION, "stage": stage, "samples": items}
    Path(path).write_text(json.dumps(payload, indent=1) + "\n")
    return Path(path)


def read_dataset(path: Path) -> tuple[int, list[LlmSample]]:
    """(stage, samples); ValueError for anything that is not this format."""
    data = json.loads(Path(path).read_text())
    if data.get("format") != FORMAT or data.get("version") != VERSION:
        raise ValueError(f"{path}: not an {FORMAT} version {VERSION} file")
    stage = int(data.get("stage", 0))
    if stage not in STAGES:
        raise ValueError(f"{path}: stage must be 1 or 2")
    return stage, [LlmSample.from_json(s) for s in data["samples"]]
