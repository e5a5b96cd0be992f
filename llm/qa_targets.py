"""The model's part in the stage-2 question-answer set: the study's standing, restated for a
patient in a short sentence of lay words (``llm.qa_dataset``).

Why restatements: the chat shows the model the study's standing in plain words without numbers
(``llm.plain_context``: "The pumping strength of the left ventricle (LVEF) is mildly
reduced."), the question's topic first, and asks for one sentence after "In plain words,". A
target that says that first sentence again in other words carries what the study showed and
can be learnt by reading the prompt, whereas one fixed referral sentence (the first adapter's
target) taught the model to write the same sentence after every answer (104 of 120). The
wording varies a little (two restatements per standing, chosen in turn), and the pumping is
restated with the words the guard checks against the grade ("mildly reduced", "less strongly
than usual"), so a wrong restatement is refused, not shown. None holds a number, and
``llm.qa_dataset`` keeps a target only when the guard passes the whole answer with it in the
real chat path.
"""

from __future__ import annotations

REFERRAL_TARGET = "your cardiologist can explain what this means for you."

# plain_context's sentences (exactly as written there) -> lay restatements, lower-case start
_RESTATEMENTS: dict[str, tuple[str, ...]] = {
    "The pumping strength of the left ventricle (LVEF) is normal.": (
        "your heart pumps with normal strength.",
        "the pumping of your left ventricle is normal.",
    ),
    "The pumping strength of the left ventricle (LVEF) is above the normal range.": (
        "your heart pumps more strongly than usual.",
        "the pumping of your left ventricle is above the normal range.",
    ),
    "The pumping strength of the left ventricle (LVEF) is mildly reduced.": (
        "the pumping of your left ventricle is mildly reduced.",
        "your heart pumps a little less strongly than usual, a mild reduction.",
    ),
    "The pumping strength of the left ventricle (LVEF) is moderately reduced.": (
        "the pumping of your left ventricle is moderately reduced.",
        "your heart pumps less strongly than usual, a moderate reduction.",
    ),
    "The pumping strength of the left ventricle (LVEF) is severely reduced.": (
        "the pumping of your left ventricle is severely reduced.",
        "your heart pumps much less strongly than usual, a severe reduction.",
    ),
    "The LVEF could not be measured on this loop.": (
        "the pumping strength could not be measured on this video.",
        "this video did not allow the pumping strength to be measured.",
    ),
    "The LVEF was measured but is not graded, because the sex is not known.": (
        "the pumping strength was measured, but it cannot be graded without knowing the sex.",
        "without the sex on record, the pumping strength is not graded.",
    ),
    "The left ventricle is normal in size.": (
        "your left ventricle is normal in size.",
        "your left ventricle is the usual size.",
    ),
    "The left ventricle is enlarged.": (
        "your left ventricle is enlarged.",
        "your left ventricle is larger than usual.",
    ),
    "The left ventricle is smaller than usual.": (
        "your left ventricle is smaller than usual.",
        "your left ventricle is a bit smaller than the usual size.",
    ),
    "The size of the left ventricle is not graded on this study.": (
        "the size of your left ventricle was not graded here.",
        "this study does not grade the size of your left ventricle.",
    ),
    "The heart rate was within the usual adult resting range.": (
        "your heart rate was in the usual range for rest.",
        "your heart was beating at a usual resting pace.",
    ),
    "The heart rate was above the usual adult resting range.": (
        "your heart rate was higher than usual for rest.",
        "your heart was beating faster than usual at rest.",
    ),
    "The heart rate was below the usual adult resting range.": (
        "your heart rate was lower than usual for rest.",
        "your heart was beating slower than usual at rest.",
    ),
    "The heart rate could not be measured on this loop.": (
        "the heart rate could not be measured on this video.",
        "this video did not allow the heart rate to be measured.",
    ),
    "The regularity of the beats could not be judged on this loop.": (
        "whether your heartbeats were regular could not be judged on this video.",
        "this video did not show whether the beats were regular.",
    ),
    "The beats on the loop were regular.": (
        "your heartbeats on this video came at a regular pace.",
        "your heart was beating regularly on this video.",
    ),
    "The beats on the loop were irregular.": (
        "your heartbeats on this video did not come at a regular pace.",
        "your heart was beating irregularly on this video.",
    ),
    "The loop is an ultrasound video of the heart showing the left ventricle.": (
        "this is an ultrasound video of your heart's main pumping chamber.",
        "the video is an ultrasound of your heart.",
    ),
    "This analysis does not assess the heart valves or the other heart chambers.": (
        "this analysis looks only at the main pumping chamber, not at the heart valves.",
        "the heart valves and the other chambers were not assessed here.",
    ),
}
_VIEW_PROBLEM = ("the left ventricle could not be followed on all of this video.",)


def restatements(plain_sentence: str) -> tuple[str, ...]:
    """The lay restatements of one of ``llm.plain_context``'s sentences (empty for a sentence
    it does not know, so a new plain sentence gets the referral until it has its own)."""
    if plain_sentence in _RESTATEMENTS:
        return _RESTATEMENTS[plain_sentence]
    if plain_sentence.startswith("The loop was selected as an apical four-chamber view"):
        return _VIEW_PROBLEM
    return ()


def known_plain_sentences() -> tuple[str, ...]:
    """The plain sentences with restatements (for the test that keeps both modules in step)."""
    return tuple(_RESTATEMENTS)


def addition_targets(first_plain_sentence: str, turn: int) -> list[str]:
    """Candidate sentences for the model's part, best first (the caller keeps the first the
    guard passes): the restatements of the first plain sentence the model is shown, starting
    at ``turn`` (so consecutive pairs use different wordings), then the referral."""
    options = restatements(first_plain_sentence)
    if options:
        k = turn % len(options)
        options = options[k:] + options[:k]
    return list(dict.fromkeys([*options, REFERRAL_TARGET]))
