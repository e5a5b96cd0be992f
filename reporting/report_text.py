"""The structured part of a report: sentences built only from measurements and quality flags,
so it is correct by construction. The language model's narrative (when present) sits beside it
and is checked against the same numbers; this text never depends on it."""

from __future__ import annotations

from inference.types import Measurements
from reporting.body_size import BodySize
from reporting.indexed_volumes import index_lines
from reporting.interpretation import lv_systolic_function
from reporting.types import DEMO_LABEL_ASCII, Algorithms
from reporting.values import (
    loop_quality,
    primary_ef,
    reported_values,
    shown_flags,
    withheld_ef,
    withheld_values,
)


def structured_text(
    measurements: Measurements,
    algorithms: Algorithms,
    sex: str | None = None,
    body: BodySize | None = None,
) -> str:
    """A few sentences: the conclusion on LV systolic function, the loop's quality score, each
    measured value with its method, each withheld value with its reason ("LV end-diastolic
    volume not measurable: <reason>; manual measurement required."), the quality flags, and the
    demo label where it applies. A withheld value is never stated as a number or graded.
    With ``body`` (the header's height and weight, ``reporting.body_size``) the volumes are
    followed by the BSA and their indices, or by why they are not indexed."""
    values = reported_values(measurements, algorithms)
    withheld = withheld_values(measurements)
    lines = [lv_systolic_function(primary_ef(values), sex, withheld_ef(withheld)).text]
    quality = loop_quality(measurements)
    if quality is not None:
        lines.append(quality.statement)
    lines += [f"{v.label}: {v.text} ({v.method_text})." for v in values]
    lines += index_lines(values, body, sex)
    lines += [w.statement for w in withheld]
    flags = shown_flags(measurements)
    if flags:
        lines.append("Quality notes: " + " ".join(f.message for f in flags))
    if algorithms.demo_models:
        lines.append(f"{DEMO_LABEL_ASCII}.")
    return "\n".join(lines)
