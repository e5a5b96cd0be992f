"""What a generated text talks about: its sentences, the context words in each (what a number
or a grade word is about), and the words the node never says at all.

Why a module of its own: the number checks (``llm.grounding_numbers``) and the grade checks
(``llm.grounding_grades``) both read a sentence through the same labels; keeping the word lists
in one place keeps the two from disagreeing about what a sentence is about.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from llm.grounding_facts import (
    KIND_EF,
    KIND_HEART_RATE,
    KIND_QUALITY,
    KIND_UNMEASURED,
    KIND_VOLUME,
)

# cited guideline names are not measurements
CITATIONS = re.compile(r"\b(?:ASE/EACVI|ASE|EACVI)\s+(?:19|20)\d\d\b")
# findings the node cannot make from an A4C LV segmentation; naming one is a claim it never made
_FINDINGS = re.compile(
    r"hypertroph\w*|regurgita\w*|stenos\w*|dilat\w*|thromb\w*|aneurysm\w*|effusion\w*|"
    r"infarct\w*|isch(?:a)?emi\w*|cardiomyopath\w*|heart failure|amyloid\w*|"
    r"wall motion abnormalit\w*|akine\w*|hypokine\w*|dyskine\w*",
    re.I,
)
# the loop is a 2D transthoracic A4C cine; naming another view or modality describes an
# acquisition that did not happen
_ACQUISITION = re.compile(
    r"\b(?:two|three|2|3)[- ]chamber\b|\b3D\b|three-dimensional|\bCT\b|computed tomography|"
    r"\bMRI\b|magnetic resonance|\bDoppler\b|trans-?o?esophageal|\bTEE\b|"
    r"parasternal|subcostal|short[- ]axis",
    re.I,
)
# what the node never sees: the patient and the room. The embedded model, asked to describe
# the video, wrote "The patient is lying on the table with the patient's head positioned in
# front of the patient's chest" (passed by the number checks)
_SCENE = re.compile(
    r"\blying (?:on|down|flat)\b|\bsupine\b|\bprone\b|decubitus|"
    r"\bon (?:the|a) (?:table|bed|couch)\b|\bpatient'?s (?:head|arm|body|chest|face)\b",
    re.I,
)
_NOT_ASSESSED = re.compile(r"\bnot (?:be )?(?:assessed|measured|evaluated|assessable)\b", re.I)
_SPELLED = re.compile(
    r"\b(ten|eleven|twelve|thirteen|fourteen|fifteen|sixteen|seventeen|eighteen|nineteen|"
    r"twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety|hundred)\b",
    re.I,
)

_LABELS = (
    (KIND_UNMEASURED, None, re.compile(
        r"right ventric\w*|\bRV\b|valv\w*|mitral|aortic|tricuspid|pulmonary|regurgita\w*|"
        r"stenos\w*|wall motion|wall thickness|hypertroph\w*|atri(?:um|al|a)\b|pericardi\w*|"
        r"diastolic function|rhythm|blood pressure|dilat\w*|chamber size", re.I)),
    (KIND_VOLUME, "edv", re.compile(r"end[- ]?diastolic|\bLVEDV\b|\bEDV\b|diastolic volume",
                                    re.I)),
    (KIND_VOLUME, "esv", re.compile(r"end[- ]?systolic|\bLVESV\b|\bESV\b|systolic volume",
                                    re.I)),
    (KIND_VOLUME, "sv", re.compile(r"stroke volume|\bSV\b", re.I)),
    (KIND_VOLUME, None, re.compile(r"\bvolumes?\b", re.I)),
    (KIND_QUALITY, None, re.compile(r"quality score|\bquality\b|\bscore\b", re.I)),
    (KIND_HEART_RATE, None, re.compile(
        r"heart rate|\bHR\b|pulse|tachycardi\w*|bradycardi\w*", re.I)),
    # the method an EF is named with: its number must be that method's EF (issue #15)
    (KIND_EF, "ef_disks", re.compile(
        r"method[- ]of[- ]dis[ck]s|\bdis[ck]s?\b|\bSimpson'?s?\b|\bMOD\b", re.I)),
    (KIND_EF, "ef_regression", re.compile(
        r"\b(?:AI[- ])?regression\b|video (?:regression )?(?:network|model)", re.I)),
    (KIND_EF, None, re.compile(
        r"\bLVEF\b|\bEF\b|ejection fraction|systolic function|systolic dysfunction|"
        r"(?:LV|left ventricular|ventricular) function|contractil\w*|pump function", re.I)),
)  # fmt: skip
_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+|\n+")


@dataclass(frozen=True)
class Label:
    """A context word of a sentence: where it stands, the kind of value it names, and which
    value (``key``) when it names one."""

    start: int
    end: int
    kind: str
    key: str | None


def labels_of(sentence: str) -> list[Label]:
    """Context words in order; where two overlap, the one that starts first wins (so "right
    ventricular function" is about the right ventricle, not the LV)."""
    found = [
        Label(mt.start(), mt.end(), kind, key)
        for kind, key, pattern in _LABELS
        for mt in pattern.finditer(sentence)
    ]
    found.sort(key=lambda lab: (lab.start, -(lab.end - lab.start)))
    kept: list[Label] = []
    for lab in found:
        if kept and lab.start < kept[-1].end:
            continue
        kept.append(lab)
    return kept


def sentences(text: str) -> list[str]:
    """The sentences of ``text``: a number or grade word is read with its own sentence's words."""
    return [s for s in _SENTENCE_END.split(text) if s.strip()]


def word_problems(sentence: str) -> list[str]:
    """Why ``sentence`` fails for its words alone, in order: numbers written in words, findings
    the node does not make, the patient or the room, another view or modality."""
    reasons: list[str] = []
    for spelled in _SPELLED.finditer(sentence):
        reasons.append(f"number written in words ({spelled.group(0)!r}) in: {sentence!r}")
    if not _NOT_ASSESSED.search(sentence):
        for finding in _FINDINGS.finditer(sentence):
            reasons.append(
                f"{finding.group(0)!r} is a finding the node does not make "
                f"(in: {sentence.strip()!r})"
            )
    for scene in _SCENE.finditer(sentence):
        reasons.append(
            f"{scene.group(0)!r}: the node sees the LV on the loop, not the patient or the "
            f"room (in: {sentence.strip()!r})"
        )
    for other in _ACQUISITION.finditer(sentence):
        reasons.append(
            f"{other.group(0)!r}: the loop is a 2D apical four-chamber view "
            f"(in: {sentence.strip()!r})"
        )
    return reasons
