"""The patient's height and weight from the DICOM header, and the body surface area from them.

Why: the ASE/EACVI 2015 normal ranges for LV volumes are tighter indexed to body surface area
(BSA) than absolute, so a small woman's dilated ventricle is not hidden inside the wide absolute
range. DICOM carries Patient's Size (0010,1020, metres) and Patient's Weight (0010,1030, kg) in
the Patient Study module, but both are Type 3: often absent, often 0 (the modality's empty
default) and sometimes entered in the wrong unit (175 typed as metres, 0.07 as tonnes). A value
outside a plausible adult-or-child range is therefore treated as absent, with its reason logged
and kept, never corrected or guessed: an index from a wrong height is a wrong number.

BSA formula: Mosteller (N Engl J Med 1987;317:1098), sqrt(height_cm x weight_kg / 3600), the
one every surface of the node uses (``body_surface_area_m2``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("echo_agent.reporting.body_size")

BSA_FORMULA = "Mosteller"
# plausible values; outside them the header value is a unit mistake or a placeholder
HEIGHT_RANGE_M = (0.5, 2.5)
WEIGHT_RANGE_KG = (2.0, 400.0)
HEIGHT_KEYWORD = "PatientSize"
WEIGHT_KEYWORD = "PatientWeight"
NOT_IN_HEADER = "not in the DICOM header"


@dataclass(frozen=True)
class BodySize:
    """Height and weight as the node uses them: each a plausible header value or None, with
    ``reasons`` saying why a value is not used ("weight 0 kg is outside 2-400 kg")."""

    height_cm: float | None = None
    weight_kg: float | None = None
    reasons: tuple[str, ...] = ()

    @property
    def known(self) -> bool:
        return self.height_cm is not None and self.weight_kg is not None

    @property
    def bsa_m2(self) -> float | None:
        """Mosteller BSA, or None unless both values are known."""
        if self.height_cm is None or self.weight_kg is None:
            return None
        return body_surface_area_m2(self.height_cm, self.weight_kg)

    @property
    def withheld_reason(self) -> str:
        """Why no BSA: "height not in the DICOM header; weight 0 kg is outside 2-400 kg"."""
        return "; ".join(self.reasons) if self.reasons else ""


UNKNOWN_BODY_SIZE = BodySize(None, None, (f"height {NOT_IN_HEADER}", f"weight {NOT_IN_HEADER}"))


def body_surface_area_m2(height_cm: float, weight_kg: float) -> float:
    """Mosteller: sqrt(height_cm x weight_kg / 3600), in m2."""
    if not (height_cm > 0 and weight_kg > 0):
        raise ValueError(f"height {height_cm} cm and weight {weight_kg} kg must be positive")
    return math.sqrt(height_cm * weight_kg / 3600.0)


def _number(value: Any) -> tuple[float | None, str]:
    """A DS value as a float, or (None, why): absent, empty, several values, not a number."""
    if value is None:
        return None, NOT_IN_HEADER
    if isinstance(value, list | tuple):  # a MultiValue: which one was meant is unknown
        if len(value) != 1:
            return None, f"has {len(value)} values"
        value = value[0]
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    text = str(value).strip(" \x00")
    if not text:
        return None, "empty in the DICOM header"
    try:
        number = float(text)
    except ValueError:
        return None, f"{text[:20]!r} is not a number"
    if not math.isfinite(number):
        return None, f"{text[:20]!r} is not a finite number"
    return number, ""


def _plausible(value: Any, bounds: tuple[float, float], unit: str) -> tuple[float | None, str]:
    """A header number inside ``bounds``, or (None, why)."""
    number, why = _number(value)
    if number is not None and not bounds[0] <= number <= bounds[1]:
        return None, f"{number:g} {unit} is outside {bounds[0]:g}-{bounds[1]:g} {unit}"
    return number, why


def body_size_from_values(height_m: Any, weight_kg: Any) -> BodySize:
    """The header's Patient's Size (m) and Patient's Weight (kg), as read by pydicom or as
    text, checked: absent, zero, unparsable or outside ``HEIGHT_RANGE_M`` /
    ``WEIGHT_RANGE_KG`` is None with its reason (logged)."""
    height, height_why = _plausible(height_m, HEIGHT_RANGE_M, "m")
    weight, weight_why = _plausible(weight_kg, WEIGHT_RANGE_KG, "kg")
    reasons = [
        f"{name} {why}" for name, why in (("height", height_why), ("weight", weight_why)) if why
    ]
    if reasons:
        log.info("body surface area not computed: %s", "; ".join(reasons))
    height_cm = None if height is None else round(height * 100.0, 1)
    return BodySize(height_cm, weight, tuple(reasons))


def body_size_from_dataset(ds: Any) -> BodySize:
    """``body_size_from_values`` on a pydicom dataset's header; a malformed element (pydicom
    raising on an invalid DS) is absent with its reason, not a failed job."""
    values = []
    for keyword in (HEIGHT_KEYWORD, WEIGHT_KEYWORD):
        try:
            values.append(ds.get(keyword))
        except Exception as exc:  # an optional value must not make the loop unusable
            values.append(f"unreadable: {type(exc).__name__}")
    return body_size_from_values(*values)
