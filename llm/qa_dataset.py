"""EchoGPT stage 2 data for the study chat: question-answer pairs generated from fact sheets
and knowledge entries, with a fixed seed (issue #19 item 4).

Why generated: the answers the chat may give are fixed by the study's facts
(``llm.facts``) and the vetted knowledge entries (``llm.knowledge_entries``), so a correct
answer to any question can be written without a person, for as many studies and phrasings as
training needs. Each pair is one synthetic study (sex, EF across every ASE/EACVI 2015 grade,
EDV small to enlarged for that sex, regular or irregular beats, some values withheld by the
validity gate, height and weight for some), one question (paraphrased from templates, all
three EchoGPT types plus measurement and out-of-scope questions) and, for a quarter of the
pairs, the conversation before it (multi-turn follow-ups: "Could you explain that?"). The
answer is what the chat shows (``llm.chat.answer_question``): the composed core of fact and
entry sentences, then the model's part, one plain-words sentence (``addition_targets``) that
the guard passed in the real chat path; the prompt the chat gave the model for it is kept
with the pair, so the adapter trains on exactly the prompt it meets.

None of the questions of ``echo-agent evaluate chat`` (``llm.evaluate_chat_questions``) is
generated here: the adapter is evaluated on phrasings it never saw.

File format (JSON, UTF-8)::

    {"format": "echo-agent-qa-dataset", "version": 1, "seed": 0,
     "pairs": [{"id": "qa000001",
                "study": {"measurements": {...Measurements.to_json()}, "sex": "F",
                          "height_cm": null, "weight_kg": null},
                "intent": "advisory", "history": [["user", "..."], ["assistant", "..."]],
                "question": "...", "answer": "...", "fact_keys": [...], "entry_ids": [...],
                "meta": {"routed": "advisory", "addition": " your cardiologist ...",
                         "prompt": [["system", "..."], ["user", "..."], ["assistant", "..."]]}}]}
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inference.types import Beat, Measurements, Validity, ValueValidity
from llm.qa_dataset_questions import FOLLOW_UPS, INTENTS, questions_for
from llm.qa_targets import REFERRAL_TARGET, addition_targets

FORMAT = "echo-agent-qa-dataset"
VERSION = 1
FOLLOW_UP_SHARE = 0.25
WITHHELD_SHARE = 0.1
WITHHELD_REASONS = (
    "LV not identified on 18 of 40 frames",
    "segmentation confidence below the threshold",
    "the beats could not be timed on this loop",
)


@dataclass(frozen=True)
class QaStudy:
    """One synthetic study: measurements and what picks its reference ranges."""

    measurements: Measurements
    sex: str | None
    height_cm: float | None = None
    weight_kg: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"measurements": self.measurements.to_json(), "sex": self.sex,
                "height_cm": self.height_cm, "weight_kg": self.weight_kg}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> QaStudy:
        return cls(Measurements.from_json(data["measurements"]), data.get("sex"),
                   data.get("height_cm"), data.get("weight_kg"))  # fmt: skip


@dataclass(frozen=True)
class QaPair:
    id: str
    study: QaStudy
    intent: str  # the question's type as written (descriptive ... out_of_scope)
    history: tuple[tuple[str, str], ...]  # (role, content), oldest first
    question: str
    answer: str
    fact_keys: tuple[str, ...] = ()
    entry_ids: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "study": self.study.to_json(), "intent": self.intent,
                "history": [list(t) for t in self.history], "question": self.question,
                "answer": self.answer, "fact_keys": list(self.fact_keys),
                "entry_ids": list(self.entry_ids), "meta": self.meta}  # fmt: skip

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> QaPair:
        return cls(d["id"], QaStudy.from_json(d["study"]), d["intent"],
                   tuple((str(r), str(c)) for r, c in d["history"]), d["question"], d["answer"],
                   tuple(d.get("fact_keys", ())), tuple(d.get("entry_ids", ())),
                   dict(d.get("meta", {})))  # fmt: skip


# --- synthetic studies ------------------------------------------------------------------------

# EF bands across the ASE/EACVI 2015 grades (severe .. above normal), drawn evenly
_EF_BANDS = ((15.0, 29.5), (30.0, 40.5), (41.0, 51.5), (55.0, 71.0), (75.0, 82.0))
# EDV bands (mL) per sex: small, normal, enlarged (ASE/EACVI 2015: M 62-150, F 46-106)
_EDV_BANDS = {"M": ((45.0, 60.0), (70.0, 145.0), (155.0, 260.0)),
              "F": ((32.0, 44.0), (50.0, 104.0), (110.0, 200.0))}  # fmt: skip


def synthetic_study(rng: random.Random) -> QaStudy:
    """One study with a plausible combination of values (see the module docstring)."""
    sex = rng.choice(("M", "F", "M", "F", None))
    ef = round(rng.uniform(*rng.choice(_EF_BANDS)), 1)
    bands = _EDV_BANDS[sex or rng.choice(("M", "F"))]
    edv = round(rng.uniform(*bands[rng.choices((0, 1, 2), (1, 3, 2))[0]]), 1)
    esv = round(edv * (1 - ef / 100), 1)
    hr = round(rng.uniform(42.0, 125.0), 1)
    frame_time_ms = rng.choice((16.7, 20.0, 26.0, 33.3))
    cycle = 60000.0 / hr / frame_time_ms
    irregular = rng.random() < 0.2
    beats, start = [], rng.randrange(0, 6)
    while True:
        length = cycle * (rng.uniform(0.65, 1.35) if irregular else rng.uniform(0.97, 1.03))
        if start + length >= 140:
            break
        beats.append((start, start + int(0.35 * length), start + round(length)))
        start += round(length)
    n_frames = max(start + rng.randrange(2, 8), 40)
    withheld = {}
    if rng.random() < WITHHELD_SHARE:
        reason = rng.choice(WITHHELD_REASONS)
        keys = rng.choice((("ef_percent", "ef_disks_percent"), ("heart_rate_bpm",),
                           ("edv_ml", "esv_ml", "ef_disks_percent")))  # fmt: skip
        withheld = {k: ValueValidity(Validity.NOT_MEASURABLE, reason) for k in keys}
    validity = {k: withheld.get(k, ValueValidity(Validity.MEASURED))
                for k in ("ef_percent", "ef_disks_percent", "edv_ml", "esv_ml",
                          "heart_rate_bpm")}  # fmt: skip
    beat_rows = tuple(
        Beat(ed_frame=ed, es_frame=es, next_ed_frame=nxt, ef_percent=ef, clip_start_frame=None,
             edv_ml=edv, esv_ml=esv, ef_disks_percent=ef, ed_area_cm2=None, es_area_cm2=None)
        for ed, es, nxt in beats
    )  # fmt: skip
    m = Measurements(
        ef_percent=ef, ef_sd_percent=None, ef_source="beats", ef_clips_mean_percent=None,
        ef_disks_percent=ef, edv_ml=edv, esv_ml=esv, heart_rate_bpm=hr,
        heart_rate_source="beats", beats=beat_rows, flags=(), n_frames=n_frames,
        frame_time_ms=frame_time_ms, spacing_cm=None, ed_frames=tuple(b[0] for b in beats),
        es_frames=tuple(b[1] for b in beats), lv_area_px=(), lv_area_cm2=None,
        validity=validity, quality_score=round(rng.uniform(0.55, 0.98), 2),
    )  # fmt: skip
    height = weight = None
    if rng.random() < 0.3:
        height, weight = round(rng.uniform(150, 195)), round(rng.uniform(48, 120))
    return QaStudy(m, sex, height, weight)


# --- pairs ------------------------------------------------------------------------------------

# The model's part of an answer (``llm.chat``): one sentence of plain words after the composed
# core, no numbers, no new facts: the first plain sentence the chat shows the model, restated in
# lay words (``llm.qa_targets``). Each target is kept only if the guard passes it in the real
# chat path (``_Recorder``), so the adapter never learns a sentence the guard would drop.
_ANSWER_IN_PROMPT = re.compile(r"\nAnswer: (.*)", re.S)
_PLAIN_SENTENCE_END = re.compile(r"(?<=\.)\s+")


def first_plain_sentence(prompt: Sequence[Any]) -> str:
    """The first of the plain sentences in the chat's prompt for the model's part
    (``llm.chat.addition_messages``: "Question: ...\nAnswer: <plain sentences>")."""
    for message in prompt:
        found = _ANSWER_IN_PROMPT.search(str(message.content))
        if message.role == "user" and found:
            return _PLAIN_SENTENCE_END.split(found.group(1).strip(), maxsplit=1)[0]
    return ""


@dataclass
class _Recorder:
    """A stand-in model for the real chat path: records the prompt the chat gives the model
    and writes ``sentence`` after the prompt's opening words."""

    sentence: str
    prompts: list[Any] = field(default_factory=list)
    name: str = "qa-dataset"

    def stream(self, messages: Sequence[Any], limits: Any = None, on_done: Any = None) -> Any:
        self.prompts.append(list(messages))
        yield " " + self.sentence


def _answer(
    question: str, study: QaStudy, history: Sequence[tuple[str, str]], sentence: str | None
) -> tuple[Any, list[Any]]:
    """(the chat's ``ChatAnswer``, the prompts it gave the model) with ``sentence`` as the
    model's part (None: no model)."""
    from llm.chat import ChatTurn, StudyContext, answer_question

    context = StudyContext(study.measurements, study.sex, height_cm=study.height_cm,
                           weight_kg=study.weight_kg)  # fmt: skip
    turns = [ChatTurn(r, c) for r, c in history]
    recorder = None if sentence is None else _Recorder(sentence)
    answer = answer_question(question, context, recorder, turns)  # type: ignore[arg-type]
    return answer, ([] if recorder is None else recorder.prompts)


def _pair(pair_id: str, turn: int, intent: str, study: QaStudy,
          history: tuple[tuple[str, str], ...], question: str) -> QaPair:  # fmt: skip
    from llm.chat import ChatTurn
    from llm.intents import route_question

    route = route_question(question, [ChatTurn(r, c) for r, c in history])
    answer, _ = _answer(question, study, history, None)
    meta: dict[str, Any] = {"routed": str(route.intent), "addition": ""}
    _, probed = _answer(question, study, history, REFERRAL_TARGET)  # the prompt, if any
    if not probed:  # the chat does not ask the model here (out of scope, descriptive, ...)
        return QaPair(pair_id, study, intent, history, question, answer.text,
                      tuple(answer.fact_keys), tuple(answer.entry_ids), meta)  # fmt: skip
    for target in addition_targets(first_plain_sentence(probed[0]), turn):
        with_model, prompts = _answer(question, study, history, target)
        if with_model.model_verdict == "pass":
            answer, meta["addition"] = with_model, " " + target
            meta["prompt"] = [[m.role, m.content] for m in prompts[0]]
            break
    return QaPair(pair_id, study, intent, history, question, answer.text,
                  tuple(answer.fact_keys), tuple(answer.entry_ids), meta)  # fmt: skip


def study_sheet(study: QaStudy) -> Any:
    from llm.facts import build_fact_sheet

    return build_fact_sheet(study.measurements, study.sex, height_cm=study.height_cm,
                            weight_kg=study.weight_kg)  # fmt: skip


def study_pair(pair_id: str, turn: int, intent: str, study: QaStudy,
               rng: random.Random) -> QaPair:  # fmt: skip
    """One pair about ``study``: a question of type ``intent`` paraphrased from the bank, a
    follow-up after an opener of the right type for a share of them (``FOLLOW_UP_SHARE``,
    never out of scope), and the chat's answer. ``turn`` picks the wording of the model's part
    (``llm.qa_targets``). The video-text stage 2 (``llm.dataset``) asks its loops through this
    too, so both paths learn the same pairs."""
    history: tuple[tuple[str, str], ...] = ()
    if intent != "out_of_scope" and rng.random() < FOLLOW_UP_SHARE:
        opener_intent, follow_ups = FOLLOW_UPS[intent]
        opener = rng.choice(questions_for(opener_intent))
        history = (("user", opener), ("assistant", _answer(opener, study, (), None)[0].text))
        question = rng.choice(follow_ups)
    else:
        question = rng.choice(questions_for(intent))
    return _pair(pair_id, turn, intent, study, history, question)


def generate_pairs(n_pairs: int, seed: int = 0) -> list[QaPair]:
    """``n_pairs`` pairs, the five question types in equal shares (in turn), a quarter of them
    follow-ups after an earlier question; the same ``seed`` gives the same pairs. A pair's
    ``meta`` holds the prompt the chat gives the model and the model's part (``addition``,
    empty where no target passed the guard, and for out-of-scope questions, which the model
    never continues)."""
    if n_pairs < 1:
        raise ValueError("n_pairs must be at least 1")
    rng = random.Random(seed)
    pairs: list[QaPair] = []
    for i in range(n_pairs):
        intent = INTENTS[i % len(INTENTS)]
        study = synthetic_study(rng)
        pairs.append(study_pair(f"qa{i + 1:06d}", i // len(INTENTS), intent, study, rng))
    return pairs


def write_qa_dataset(pairs: Sequence[QaPair], path: Path, seed: int) -> Path:
    payload = {"format": FORMAT, "version": VERSION, "seed": seed,
               "pairs": [p.to_json() for p in pairs]}  # fmt: skip
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(payload) + "\n")
    return Path(path)


def read_qa_dataset(path: Path) -> list[QaPair]:
    data = json.loads(Path(path).read_text())
    if data.get("format") != FORMAT or data.get("version") != VERSION:
        raise ValueError(f"{path}: not an {FORMAT} version {VERSION} file")
    return [QaPair.from_json(p) for p in data["pairs"]]
