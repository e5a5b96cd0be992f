"""The questions ``echo-agent evaluate chat`` asks (``llm.evaluate_chat``): every type of
EchoGPT question (descriptive, explanatory, advisory) plus measurement and out-of-scope ones,
several paraphrases each, and follow-ups asked in the same conversation. The issue's four
questions are among them verbatim. None is in the stage-2 training set (``llm.qa_dataset``;
``tests/test_qa_dataset.py`` keeps the two apart), so the adapter is scored on questions it
never saw.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from llm.evaluate_chat_checks import REQ_ADVISE, REQ_DESCRIBE, REQ_EXPLAIN, REQ_SCOPE, REQ_SIZE


@dataclass(frozen=True)
class Ask:
    """One question of a conversation and what its answer must contain."""

    text: str
    intent: str  # descriptive | explanatory | advisory | measurement | out_of_scope
    requires: tuple[str, ...]


# A conversation: an opening question and its follow-ups, asked in one chat.
Conversation = tuple[Ask, ...]


def _asks(intent: str, requires: tuple[str, ...], *texts: str) -> tuple[Ask, ...]:
    return tuple(Ask(t, intent, requires) for t in texts)


DESCRIBE = _asks("descriptive", (REQ_DESCRIBE,), "Please describe the echocardiogram video.",
                 "Could you describe this echocardiogram video for me?",
                 "What does this loop show?", "Can you walk me through this echo clip?",
                 "Give me a short description of the study.")  # fmt: skip
EXPLAIN = _asks("explanatory", (REQ_EXPLAIN,), "What does this result mean for my heart health?",
                "What does the ejection fraction tell us?", "Can you explain what LVEF means?",
                "Why does the ejection fraction matter?",
                "How should I understand this result?")  # fmt: skip
ADVISE = _asks("advisory", (REQ_ADVISE,), "What lifestyle changes or treatment would you suggest?",
               "My LVEF is not in the normal range, what should I do for this case?",
               "What should I do next?", "Should I see a specialist about this?",
               "Is there anything I should change in my daily life?")  # fmt: skip
OUT_OF_SCOPE = _asks("out_of_scope", (REQ_SCOPE,), "What is the capital of France?",
                     "Can you write me a poem about the sea?", "What will the weather be tomorrow?",
                     "Who won the football match yesterday?",
                     "Can you recommend a good restaurant nearby?")  # fmt: skip
SIZE = _asks("measurement", (REQ_SIZE,), "Is the left ventricle enlarged?",
             "Is my heart chamber bigger than normal?", "Is the LV dilated?")  # fmt: skip
MEASURE = (
    *_asks("measurement", ("value:ef",), "What is the ejection fraction?", "What's my LVEF?",
           "How much blood does the ventricle eject, in percent?"),
    *_asks("measurement", ("value:edv",), "What is the end-diastolic volume?",
           "How large is the LV volume at end-diastole?"),
    *_asks("measurement", ("value:esv",), "What is the end-systolic volume?"),
    *_asks("measurement", ("value:heart_rate",), "What was the heart rate?",
           "How fast was my heart beating during the scan?"),
    *_asks("measurement", ("value:sv",), "What is the stroke volume?"),
)  # fmt: skip
FOLLOW_EXPLAIN = _asks("explanatory", (REQ_EXPLAIN,), "What does that mean?",
                       "Is that something to worry about?")  # fmt: skip
FOLLOW_ADVISE = _asks("advisory", (REQ_ADVISE,), "And what should I do about it?",
                      "So what are my next steps?")  # fmt: skip
FOLLOW_RATE = _asks("measurement", ("value:heart_rate",), "And the heart rate?",
                    "What about my pulse?")  # fmt: skip

ALL_QUESTIONS = (*DESCRIBE, *EXPLAIN, *ADVISE, *OUT_OF_SCOPE, *SIZE, *MEASURE,
                 *FOLLOW_EXPLAIN, *FOLLOW_ADVISE, *FOLLOW_RATE)  # fmt: skip


def conversations_for(study_index: int, seed: int) -> list[Conversation]:
    """The study's conversations, in the order a question budget takes them: every type
    within the first three (8 questions in all, three follow-ups). The paraphrases rotate over
    the studies so each is asked, and ``seed`` picks among them."""
    rng = random.Random(seed * 1_000_003 + study_index)

    def pick(bank: Sequence[Ask]) -> Ask:
        return bank[(study_index + rng.randrange(len(bank))) % len(bank)]

    return [
        (pick(DESCRIBE), pick(FOLLOW_RATE)),
        (pick(EXPLAIN), pick(FOLLOW_ADVISE)),
        (pick(OUT_OF_SCOPE),),
        (pick(SIZE if study_index % 2 == 0 else MEASURE), pick(FOLLOW_EXPLAIN)),
        (pick(ADVISE),),
    ]
