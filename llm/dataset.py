"""Training data for the video-text model, generated from measurements.

Stage 1 pairs each loop with a short report; stage 2 asks descriptive, explanatory and advisory
questions about it (EchoGPT's three kinds). Each instruction is the prompt the node itself gives
a language model for that task -- the drafting prompt (``llm.drafting.draft_messages``)
for a report, the chat prompt with the study data, report and earlier turns
(``llm.chat.chat_messages``) for a question -- flattened as the video-text backend flattens it,
so the model learns to copy the measured values it is given rather than to guess numbers from
pixels. The report's wording grades LVEF by ASE/EACVI 2015 (``reporting.interpretation``, the
same code the reports use) and states only the loop's own values. Stage 2's questions and
answers come from the chat's question-answer generator (``llm.qa_dataset.study_pair``, the
chat adapter's data): for each loop a fact sheet built from its measurements, paraphrased
questions of each kind, follow-ups after an earlier question for a share of them, and the
answer the chat composes from that loop's facts and the knowledge entries, which passes the
claim guard for those facts. So the model is never taught a sentence the guard would reject,
and the video-text and text-only paths learn the same data. Sex is unknown for phantoms and
EchoNet-Dynamic; where the two sexes' grades differ the answers say so rather than pick one.

File format (JSON, UTF-8)::

    {"format": "echo-agent-llm-dataset", "version": 1, "stage": 1,
     "samples": [{"id": "case0001/report",
                  "video": "/data/case0001.dcm",    # absolute, or relative to the JSON file
                  "video_format": "dicom",          # "dicom" | "avi" (EchoNet layout, 112x112)
                  "kind": "report",                 # stage 1: "report"; stage 2: "descriptive",
                                                    #   "explanatory", "advisory" (id
                                                    #   "case0001/advisory/2")
                  "instruction": "You write the narrative paragraph ... Measurements: ...",
                  "answer": "...",
                  "measurements": {"ef_percent": 55.2, "edv_ml": 120.3, "esv_ml": 54.1,
                                   "heart_rate_bpm": 72.0}}]}
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from inference.types import Beat, Measurements
from reporting.interpretation import (
    GRADE_ABOVE,
    GRADE_MILD,
    GRADE_MODERATE,
    GRADE_NORMAL,
    GRADE_SEVERE,
    lvef_grade,
)

FORMAT = "echo-agent-llm-dataset"
VERSION = 1
STAGES = (1, 2)
KINDS = {1: ("report",), 2: ("descriptive", "explanatory", "advisory")}
QUESTIONS_PER_KIND = 2  # stage 2: questions of each kind per loop
DESCRIBE_QUESTION = "Could you describe this echocardiogram video for me?"
# why a value the data set does not give is not measurable (EchoNet-Dynamic has no heart rate)
MISSING_REASON = "not recorded for this loop"

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


def question_instruction(
    question: str,
    m: Measurements,
    values: Mapping[str, float | None],
    history: Sequence[tuple[str, str]] = (),
) -> str:
    """Stage 2 instruction: the chat prompt (the loop's measurement lines, the stage 1 report as
    the study's report, the earlier turns, the question). The node's chat also passes its
    structured text, which repeats the measurement lines with method and beat counts."""
    from llm.chat import ChatTurn, StudyContext, chat_messages
    from llm.video_text import instruction_from_messages

    context = StudyContext(m, None, report_text(values))
    turns = [ChatTurn(role, content) for role, content in history]
    return instruction_from_messages(chat_messages(question, context, turns))


def qa_samples(
    case_id: str,
    video: str,
    video_format: str,
    values: Mapping[str, float | None],
    m: Measurements,
) -> list[LlmSample]:
    """Stage 2: ``QUESTIONS_PER_KIND`` questions of each kind about one loop from the chat's
    question-answer generator, with the loop's measurements ``m`` as the study (sex unknown);
    the same ``case_id`` gives the same questions."""
    from llm.qa_dataset import QaStudy, study_pair

    study = QaStudy(m, None)
    rng = random.Random(case_id)
    out = []
    for j in range(QUESTIONS_PER_KIND):
        for kind in KINDS[2]:
            pair = study_pair(f"{case_id}/{kind}/{j + 1}", rng.randrange(6), kind, study, rng)
            instruction = question_instruction(pair.question, m, values, pair.history)
            out.append(LlmSample(pair.id, video, video_format, kind, instruction, pair.answer,
                                 dict(values)))  # fmt: skip
    return out


def samples_for(
    case_id: str,
    video: str,
    video_format: str,
    values: Mapping[str, float | None],
    stage: int,
    measurements: Measurements | None = None,
) -> list[LlmSample]:
    """The samples of one loop; ``measurements`` (stage 2: the study the questions are about)
    defaults to ``values_measurements(values)``."""
    if stage == 1:
        instruction = report_instruction(values)
        return [LlmSample(f"{case_id}/report", video, video_format, "report", instruction,
                          report_text(values), dict(values))]  # fmt: skip
    if stage == 2:
        m = measurements if measurements is not None else values_measurements(values)
        return qa_samples(case_id, video, video_format, values, m)
    raise ValueError(f"stage must be 1 or 2, got {stage}")


def _values(data: Mapping[str, Any], keys: Mapping[str, str]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for ours, theirs in keys.items():
        raw = data.get(theirs)
        out[ours] = None if raw in (None, "") else float(raw)
    return out


def measurements_from_truth(truth: dict[str, Any]) -> Measurements:
    """A phantom's truth as the node's measurements: its beats, volumes and heart rate, and
    its EF (from the true volumes, the method-of-disks definition) for both EFs."""
    ed = [int(b["ed_frame"]) for b in truth.get("beats") or []]
    beats = tuple(
        Beat(
            ed_frame=int(b["ed_frame"]), es_frame=int(b["es_frame"]),
            next_ed_frame=ed[i + 1] if i + 1 < len(ed) else None,
            ef_percent=b.get("ef_percent"), clip_start_frame=None, edv_ml=b.get("edv_ml"),
            esv_ml=b.get("esv_ml"), ef_disks_percent=b.get("ef_percent"), ed_area_cm2=None,
            es_area_cm2=None,
        )
        for i, b in enumerate(truth.get("beats") or [])
    )  # fmt: skip
    ef = truth.get("ef_percent")
    return Measurements(
        ef_percent=ef, ef_sd_percent=None, ef_source="beats" if ef is not None else "none",
        ef_clips_mean_percent=None, ef_disks_percent=ef, edv_ml=truth.get("edv_ml"),
        esv_ml=truth.get("esv_ml"), heart_rate_bpm=truth.get("heart_rate_bpm"),
        heart_rate_source="beats", beats=beats, flags=(), n_frames=int(truth.get("n_frames", 0)),
        frame_time_ms=truth.get("frame_time_ms"), spacing_cm=None,
        ed_frames=tuple(truth.get("ed_frames") or ()),
        es_frames=tuple(truth.get("es_frames") or ()), lv_area_px=(), lv_area_cm2=None,
    )  # fmt: skip


def _echonet_measurements(
    values: Mapping[str, float | None], row: Mapping[str, str]
) -> Measurements:
    """EchoNet-Dynamic's values as measurements, with the video's frame count and rate from
    ``FileList.csv`` (no beats: the file lists none)."""
    m = values_measurements(values)
    frames, fps = row.get("NumberOfFrames") or "", row.get("FPS") or ""
    frame_time_ms = 1000.0 / float(fps) if fps and float(fps) > 0 else None
    return replace(m, n_frames=int(float(frames)) if frames else 0, frame_time_ms=frame_time_ms)


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
        m = measurements_from_truth(truth) if stage == 2 else None
        samples += samples_for(truth_path.stem, str(dicom.resolve()), "dicom", values, stage, m)
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
            m = _echonet_measurements(values, row) if stage == 2 else None
            samples += samples_for(Path(name).stem, video, "avi", values, stage, m)
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
