"""The questions of the stage-2 question-answer set (``llm.qa_dataset``), as templates: a core
phrase per topic times several framings gives hundreds of paraphrases per question type.

The phrasings differ from those ``echo-agent evaluate chat`` asks
(``llm.evaluate_chat_questions``; ``tests/test_qa_dataset.py`` checks that none is shared), so
the evaluation measures whether the adapter learnt the task, not the sentences.
"""

from __future__ import annotations

from functools import cache

INTENTS = ("descriptive", "explanatory", "advisory", "measurement", "out_of_scope")

_DESCRIBE_CORES = (
    "describe this echo", "tell me what the video shows", "summarise this study",
    "explain what I am looking at in this clip", "give an overview of the echocardiogram",
    "describe what you see in this ultrasound loop", "describe the cine loop",
    "summarize the findings of this scan", "tell me about this recording",
    "describe my heart scan",
)  # fmt: skip
_DESCRIBE_FRAMES = ("Could you {}?", "Please {}.", "Can you {} for me?", "I would like you to {}.",
                    "Would you {}?", "{}, please.")  # fmt: skip

_EXPLAIN_CORES = (
    "what this result means", "why my ejection fraction matters", "what my LVEF number means",
    "what an ejection fraction like mine means", "what the function grade means",
    "what the size of my ventricle means", "what these numbers mean",
    "why the heart rate matters", "what could cause a result like this",
    "what the ejection fraction measures",
)  # fmt: skip
_EXPLAIN_FRAMES = ("Can you explain {}?", "Help me understand {}.", "I don't understand {}.",
                   "Please explain {}.", "Could you tell me {}?",
                   "I'd like to know {}.")  # fmt: skip

_ADVISE_CORES = (
    "what should I do now", "which lifestyle changes would you recommend",
    "should I see a cardiologist", "what symptoms should I watch out for",
    "should I change my diet or exercise", "what treatment would you suggest",
    "should I stop smoking", "what can I do to improve my heart",
    "do I need a follow-up appointment", "what should I avoid",
)  # fmt: skip
_ADVISE_FRAMES = ("{}?", "Given these results, {}?", "Based on this echo, {}?",
                  "Doctor, {}?", "After this scan, {}?", "With these numbers, {}?")  # fmt: skip

_MEASURE_NOUNS = (
    "the ejection fraction", "the LVEF", "my EF", "the left ventricular ejection fraction",
    "the end-diastolic volume", "the EDV", "the end-systolic volume", "the ESV",
    "the stroke volume", "my heart rate", "the pulse rate", "the rhythm",
    "the number of frames", "the frame rate", "the quality of the loop",
    "the size of the left ventricle",
)  # fmt: skip
_MEASURE_FRAMES = ("What is {} in this study?", "Tell me {}.", "Can you give me {}?",
                   "What was {} on this scan?", "I want to know {}.", "How about {}?",
                   "Report {}, please.")  # fmt: skip
_MEASURE_EXTRA = (
    "Is the rhythm regular?", "Was the heartbeat irregular?", "Are the valves normal?",
    "How is the wall motion?", "Is the right ventricle OK?", "Is my left ventricle dilated?",
    "Is the heart too big?", "How well does my heart pump?", "How many beats were recorded?",
    "How long is the video?", "Is the ventricle swollen?", "How fast was the heart going?",
)  # fmt: skip

_OUT_OF_SCOPE = (
    "What's a good recipe for pancakes?", "How do I fix my car's brakes?", "Tell me a joke.",
    "What is the stock price of Apple?", "Translate 'good morning' into Spanish.",
    "Who is the president of the United States?", "How tall is Mount Everest?",
    "Write a limerick about cats.", "What movie should I watch tonight?",
    "Can you help me with my maths homework?", "What is the price of bitcoin today?",
    "Where should I go on holiday this summer?", "Write some Python code to sort a list.",
    "Sing me a song.", "What's the latest news?", "Tell me a story about dragons.",
)  # fmt: skip
_OUT_FRAMES = ("{}", "Quick question: {}", "Off topic, but {}", "By the way, {}")

# question type -> (type of the opening question, follow-ups that point back at it)
FOLLOW_UPS: dict[str, tuple[str, tuple[str, ...]]] = {
    "explanatory": ("measurement", ("What does this imply?", "Could you explain that?",
                                    "Why is that important?", "How bad is that?",
                                    "What does this number say about my heart?")),
    "advisory": ("explanatory", ("And what do you recommend?", "What next, then?",
                                 "So should I do anything about it?",
                                 "Do I need to see someone about this?")),
    "measurement": ("descriptive", ("How about the volumes?", "And the ejection fraction?",
                                    "What about the rate?", "And the end-diastolic volume?")),
    "descriptive": ("measurement", ("Can you describe the whole loop now?",
                                    "And could you summarise the video?")),
}  # fmt: skip


def _fill(frames: tuple[str, ...], cores: tuple[str, ...]) -> list[str]:
    out = []
    for frame in frames:
        for core in cores:
            text = frame.format(core)
            if frame.startswith("{}") and frame != "{}":
                text = text[0].upper() + text[1:]
            elif frame != "{}" and frame.index("{}") > 0 and frame[frame.index("{}") - 2] in ":,":
                text = frame.format(core[0].lower() + core[1:])
            out.append(text)
    return out


@cache
def _banks() -> dict[str, tuple[str, ...]]:
    banks = {
        "descriptive": _fill(_DESCRIBE_FRAMES, _DESCRIBE_CORES),
        "explanatory": _fill(_EXPLAIN_FRAMES, _EXPLAIN_CORES),
        "advisory": _fill(_ADVISE_FRAMES, _ADVISE_CORES),
        "measurement": _fill(_MEASURE_FRAMES, _MEASURE_NOUNS) + list(_MEASURE_EXTRA),
        "out_of_scope": _fill(_OUT_FRAMES, _OUT_OF_SCOPE),
    }
    return {k: tuple(dict.fromkeys(v)) for k, v in banks.items()}


def questions_for(intent: str) -> tuple[str, ...]:
    """Every question of one type the set draws from (opening questions, not follow-ups)."""
    if intent not in INTENTS:
        raise ValueError(f"unknown question type {intent!r}")
    return _banks()[intent]


def all_questions() -> frozenset[str]:
    """Every question the set may contain, follow-ups included."""
    follow = {q for _, qs in FOLLOW_UPS.values() for q in qs}
    return frozenset({q for bank in _banks().values() for q in bank} | follow)
