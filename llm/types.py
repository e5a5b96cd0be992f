"""Data types that cross the ``llm`` package's boundary: what a guard decided about a text."""

from __future__ import annotations

from enum import StrEnum


class Verdict(StrEnum):
    """What the grounding guard decided about a text; the stored values are these strings.

    ``pass``: every claim matched the measurements. ``fail``: at least one did not (a draft
    that fails is regenerated once). ``replaced``: the model's text failed twice and the
    structured text stands in its place. ``not_checked``: there was no model text to check
    (no language model, or text a person typed: the guard's findings on it are advice only).
    """

    PASS = "pass"
    FAIL = "fail"
    REPLACED = "replaced"
    NOT_CHECKED = "not_checked"
