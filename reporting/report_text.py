"""The structured part of a report: sentences built only from measurements and quality flags,
so it is correct by construction. The language model's narrative (when present) sits beside it
and is checked against the same numbers; this text never depends on it."""

from __future__ import annotations

from inference.types import Measurements
from reporting.interpretation import lv_systolic_function
from reporting.types import DEMO_LABEL_ASCII, Algorithms
from reporting.values import primary_ef, reported_values


def structured_text(
    measurements: Measurements, algorithms: Algorithms, sex: str | None = None
) -> str:
    """A few sentences: the conclusion on LV systolic function, each measured value with its
    method, the quality flags, and the demo label where it applies."""
    values = reported_values(measurements, algorithms)
    lines = [lv_systolic_function(primary_ef(values), sex).text]
    lines += [f"{v.label}: {v.text} ({v.method_text})." for v in values]
    if measurements.flags:
        lines.append("Quality notes: " + " ".join(f.message for f in measurements.flags))
    if algorithms.demo_models:
        lines.append(f"{DEMO_LABEL_ASCII}.")
    return "\n".join(lines)
