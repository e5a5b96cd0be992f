"""The fact sheet's statements about the loop itself (``llm.facts``): the heart rate and the
regularity of the beats' cycle lengths, the view, the frames, the image quality.

Why apart: these come from the loop's beats, header and validity gate, not from the LV volumes
and reference ranges the rest of the sheet grades; moved out of ``llm.facts`` unchanged.
"""

from __future__ import annotations

from inference.gate import FLAG_LV_NOT_IDENTIFIED
from inference.types import Measurements
from llm.grounding import measured_facts
from llm.study_fact import STATE_INFO, STATE_MEASURED, STATE_NOT_MEASURABLE, StudyFact
from reporting.interpretation import GRADE_ABOVE, GRADE_BELOW, GRADE_NORMAL, range_grade
from reporting.values import KEY_HEART_RATE, loop_quality, shown_flags, withheld_values

RHYTHM_REGULAR = "regular"
RHYTHM_IRREGULAR = "irregular"
# spread of the complete cycles' lengths, (longest - shortest) / mean, above which the
# intervals are called irregular; two complete cycles are the fewest that can be compared
RHYTHM_SPREAD_LIMIT = 0.15
MIN_CYCLES_FOR_RHYTHM = 2


def cycle_lengths_ms(m: Measurements) -> tuple[float, ...]:
    """The complete beats' cycle lengths (ED to next ED), from the frame time."""
    if not m.frame_time_ms:
        return ()
    return tuple((b.next_ed_frame - b.ed_frame) * m.frame_time_ms
                 for b in m.beats if b.next_ed_frame is not None)  # fmt: skip


def rate_facts(m: Measurements) -> tuple[list[StudyFact], str | None]:
    measured = {f.key: f for f in measured_facts(m)}
    withheld = {w.key: w for w in withheld_values(m)}
    out: list[StudyFact] = []
    rate = measured.get("heart_rate")
    if rate is not None:
        where = {GRADE_NORMAL: "within", GRADE_ABOVE: "above", GRADE_BELOW: "below"}[
            range_grade(KEY_HEART_RATE, rate.value, None) or GRADE_NORMAL
        ]
        source = {"ecg": "from the ECG trace", "beats": "from the beats on the loop",
                  "header": "from the DICOM header"}.get(m.heart_rate_source, "")  # fmt: skip
        out.append(StudyFact("heart_rate", "rate", STATE_MEASURED,
                             f"The heart rate was {rate.text}{' ' + source if source else ''}, "
                             f"{where} the usual adult resting range of 60-100 /min (AHA).",
                             rate.value, "/min"))  # fmt: skip
    elif KEY_HEART_RATE in withheld:
        out.append(StudyFact("heart_rate", "rate", STATE_NOT_MEASURABLE,
                             withheld[KEY_HEART_RATE].statement))  # fmt: skip
    cycles = cycle_lengths_ms(m)
    rhythm: str | None = None
    if KEY_HEART_RATE in withheld:  # the gate distrusts the beats' timing: so does the rhythm
        out.append(StudyFact("rhythm", "rhythm", STATE_NOT_MEASURABLE,
                             "The regularity of the rhythm is not judged, because the heart "
                             "rate is not measurable on this loop."))  # fmt: skip
        return out, None
    if len(cycles) < MIN_CYCLES_FOR_RHYTHM:
        text = ("The regularity of the rhythm could not be judged: the loop holds fewer than "
                "two complete cardiac cycles.")  # fmt: skip
        out.append(StudyFact("rhythm", "rhythm", STATE_NOT_MEASURABLE, text))
        return out, None
    mean = sum(cycles) / len(cycles)
    spread = (max(cycles) - min(cycles)) / mean if mean > 0 else 0.0
    rhythm = RHYTHM_IRREGULAR if spread > RHYTHM_SPREAD_LIMIT else RHYTHM_REGULAR
    text = (f"The cycle lengths of the {len(cycles)} complete beats on the loop were {rhythm} "
            f"(they differ by {spread * 100:.0f} % of their mean); naming the rhythm, such as "
            "sinus rhythm, needs an ECG.")  # fmt: skip
    out.append(StudyFact("rhythm", "rhythm", STATE_MEASURED, text, round(spread, 3), ""))
    return out, rhythm


def view_sentence(m: Measurements) -> str:
    """The view as far as the loop bears it out. The loop was selected as A4C (its header or
    the view classifier); when the validity gate found no left ventricle on any frame (a real
    SonoSite loop does this), "is an A4C view" would be a claim the images do not support, so
    the sentence says it was selected as one and that the LV could not be identified."""
    evidence = m.gate
    lost = FLAG_LV_NOT_IDENTIFIED in m.flag_codes
    selected = "The loop was selected for analysis as an apical four-chamber (A4C) view"
    if evidence is not None and evidence.n_frames and evidence.lv_frames == 0:
        return (
            f"{selected}, but the left ventricle could not be identified on any of its "
            f"{evidence.n_frames} frames, so the images do not confirm that view."
        )
    if evidence is not None and evidence.n_frames and lost:
        return (
            f"{selected}; the left ventricle was identified on only {evidence.lv_frames} "
            f"of its {evidence.n_frames} frames."
        )
    if lost:
        return f"{selected}, but the left ventricle could not be identified on enough frames."
    return (
        "The loop is a 2D transthoracic echocardiogram in the apical four-chamber (A4C) "
        "view, on which the node outlines the left ventricle frame by frame."
    )


def image_facts(m: Measurements) -> list[StudyFact]:
    out = [StudyFact("view", "image", STATE_INFO, view_sentence(m))]
    parts = [f"The loop has {m.n_frames} frames"]
    if m.frame_time_ms:
        rate = 1000.0 / m.frame_time_ms
        parts.append(f" at {rate:.1f} frames per second, {m.n_frames * m.frame_time_ms / 1000:.1f}"
                     " seconds in all")  # fmt: skip
    complete = sum(b.complete for b in m.beats)
    parts.append(f", with {len(m.beats)} beats found ({complete} complete).")
    out.append(StudyFact("frames", "image", STATE_INFO, "".join(parts), float(m.n_frames)))
    quality = loop_quality(m)
    if quality is not None:
        out.append(StudyFact("quality", "quality", STATE_MEASURED, quality.statement,
                             quality.score))  # fmt: skip
    flags = shown_flags(m)
    if flags:
        out.append(StudyFact("quality_flags", "quality", STATE_INFO,
                             "Quality notes: " + " ".join(f.message for f in flags)))  # fmt: skip
    else:
        out.append(StudyFact("quality_flags", "quality", STATE_INFO,
                             "No quality flags were raised on this loop."))  # fmt: skip
    return out
