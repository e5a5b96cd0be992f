"""The fact sheet of one study: every statement an answer about it may make, as exact sentences.

Why: a 135M model asked an open question invents anatomy or repeats itself, and a guard that
only checks numbers lets "the left ventricle is not enlarged" through for a ventricle above its
range. So the node works out what is true first (values with their validity, sex-specific
ranges and grades, size, rate and rhythm regularity, the loop itself, and what it did not
assess), writes each as a sentence, and answers are built from those sentences. The guard
(``llm.claims``) accepts a fact sentence verbatim and checks anything else against the sheet.

Ranges: ASE/EACVI 2015 (``reporting.interpretation``): LVEF Table 4, LV volumes Table 1
(absolute, and indexed to body surface area: EDV/BSA men 34-74, women 29-61 mL/m2; ESV/BSA men
11-31, women 8-24 mL/m2). BSA by the Mosteller formula (``reporting.body_size``), only when the
header's height and weight are known and plausible; LV size is then judged on the indexed EDV,
and without them the sheet says the volumes are not indexed and why.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from inference.types import Measurements
from llm.facts_loop import cycle_lengths_ms as cycle_lengths_ms
from llm.facts_loop import image_facts, rate_facts
from llm.facts_loop import view_sentence as view_sentence
from llm.grounding import lv_grade, measured_facts
from llm.study_fact import STATE_INFO as STATE_INFO
from llm.study_fact import STATE_MEASURED as STATE_MEASURED
from llm.study_fact import STATE_NOT_ASSESSED as STATE_NOT_ASSESSED
from llm.study_fact import STATE_NOT_MEASURABLE as STATE_NOT_MEASURABLE
from llm.study_fact import StudyFact as StudyFact
from reporting.body_size import BSA_FORMULA, body_size_from_values
from reporting.body_size import body_surface_area_m2 as body_surface_area_m2
from reporting.indexed_volumes import index_ml_per_m2
from reporting.interpretation import (
    GRADE_ABOVE,
    GRADE_BELOW,
    GRADE_MILD,
    GRADE_MODERATE,
    GRADE_NORMAL,
    GRADE_SEVERE,
    INDEXED_VOLUME_NORMAL_ML_PER_M2,
    indexed_range_grade,
    range_grade,
)
from reporting.values import (
    KEY_HEART_RATE,
    KEY_LV_EDV,
    KEY_LV_ESV,
    KEY_LVEF_DISKS,
    KEY_LVEF_REGRESSION,
    withheld_values,
)

SIZE_NORMAL = "normal"
SIZE_ENLARGED = "enlarged"
SIZE_SMALL = "small"

ASE_SHORT = "ASE/EACVI 2015"
# ASE/EACVI 2015 Table 1, 2D biplane, mean +- 2 SD (``reporting.interpretation``), mL/m2
_EDV_INDEX_NORMAL = INDEXED_VOLUME_NORMAL_ML_PER_M2[KEY_LV_EDV]
NOT_INDEXED_SENTENCE = (
    "The LV volumes are not indexed to body surface area, because the patient's height and "
    "weight are not available from the DICOM header; LV size is judged on the absolute volume."
)
_EDV_NORMAL = {"M": (62.0, 150.0), "F": (46.0, 106.0)}
_LVEF_NORMAL = {"M": (52.0, 72.0), "F": (54.0, 74.0)}
_WHO = {"M": "men", "F": "women"}

NOT_ASSESSED_SENTENCE = (
    "This analysis does not assess the heart valves, regional wall motion, wall thickness, "
    "the right ventricle or the atria: it measures the left ventricle on one apical "
    "four-chamber loop, so these need the full echocardiogram and your cardiologist's reading."
)
DEMO_SENTENCE = "These results come from demo models trained on phantoms, not for clinical use."


# what the review page calls each fact under an answer ("Based on: ...")
FACT_LABELS = {
    "lvef": "LVEF (AI regression)",
    "lvef_disks": "LVEF (method of disks)",
    "lvef_sd": "LVEF spread over beats",
    "lv_function": "LV systolic function grade (ASE/EACVI 2015)",
    "lv_edv": "LV end-diastolic volume",
    "lv_esv": "LV end-systolic volume",
    "lv_sv": "LV stroke volume",
    "lv_size": "LV size (ASE/EACVI 2015 range by sex)",
    "bsa": "body surface area",
    "lv_edv_index": "LV end-diastolic volume index",
    "lv_esv_index": "LV end-systolic volume index",
    "volume_index": "LV volumes not indexed (no height and weight)",
    "heart_rate": "heart rate",
    "rhythm": "beat-to-beat regularity",
    "view": "view (A4C)",
    "frames": "frames, frame rate and duration",
    "quality": "image quality score",
    "quality_flags": "quality notes",
    "not_assessed": "what was not assessed",
    "demo": "demo models",
}


@dataclass(frozen=True)
class FactSheet:
    """Everything true about one study that an answer may say, and the study's standing
    (grade, size, rhythm) as words the guard and the knowledge base filter on."""

    facts: tuple[StudyFact, ...]
    sex: str | None
    ef_grade: str | None
    lv_size: str | None
    rhythm: str | None
    conditions: frozenset[str]
    measurements: Measurements = field(repr=False, compare=False)

    def get(self, key: str) -> StudyFact | None:
        return next((f for f in self.facts if f.key == key), None)

    def by_topic(self, *topics: str) -> tuple[StudyFact, ...]:
        return tuple(f for f in self.facts if f.topic in topics)

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(f.key for f in self.facts)

    @property
    def sentences(self) -> tuple[str, ...]:
        return tuple(f.sentence for f in self.facts)


def _bsa_m2(height_cm: float | None, weight_kg: float | None) -> float | None:
    """Mosteller BSA from values that pass the header's plausibility checks, else None."""
    if height_cm is None or weight_kg is None:
        return None
    return body_size_from_values(height_cm / 100.0, weight_kg).bsa_m2


def _index_facts(
    measured: dict, sex: str | None, height_cm: float | None, weight_kg: float | None
) -> list[StudyFact]:
    """The BSA and the EDV and ESV indices graded against the indexed ranges; without a BSA
    one not-measurable fact saying why (only when there is a volume to index)."""
    volumes = [(key, measured[name], words) for key, name, words in
               ((KEY_LV_EDV, "edv", "end-diastolic"), (KEY_LV_ESV, "esv", "end-systolic"))
               if name in measured]  # fmt: skip
    if not volumes:
        return []
    bsa = _bsa_m2(height_cm, weight_kg)
    if bsa is None:
        return [StudyFact("volume_index", "size", STATE_NOT_MEASURABLE, NOT_INDEXED_SENTENCE)]
    out = [StudyFact("bsa", "size", STATE_INFO,
                     f"The body surface area is {bsa:.2f} m2 ({BSA_FORMULA} formula, from the "
                     f"height of {height_cm:g} cm and weight of {weight_kg:g} kg in the DICOM "
                     "header).", round(bsa, 2), "m2")]  # fmt: skip
    where = {GRADE_NORMAL: "within", GRADE_ABOVE: "above", GRADE_BELOW: "below"}
    for key, fact, words in volumes:
        index = index_ml_per_m2(round(fact.value, 1), bsa)
        ranges = _range_words(INDEXED_VOLUME_NORMAL_ML_PER_M2[key], sex, "mL/m2")
        grade = indexed_range_grade(key, index, sex)
        judged = (f"{where[grade]} the reference range of {ranges}" if grade else
                  f"not graded against {ranges}, as the sex is not known")  # fmt: skip
        out.append(StudyFact(f"{key}_index", "size", STATE_MEASURED,
                             f"Indexed to body surface area the LV {words} volume is "
                             f"{index:.1f} mL/m2, {judged} ({ASE_SHORT}).", index,
                             "mL/m2"))  # fmt: skip
    return out


def _sex(sex: str | None) -> str | None:
    return sex if sex in ("M", "F") else None


def _range_words(table: dict[str, tuple[float, float]], sex: str | None, unit: str) -> str:
    sexes = (sex,) if sex else ("M", "F")
    return " and ".join(f"{table[s][0]:g}-{table[s][1]:g} {unit} for {_WHO[s]}" for s in sexes)


def _ef_facts(m: Measurements, sex: str | None) -> list[StudyFact]:
    measured = {f.key: f for f in measured_facts(m)}
    withheld = {w.key: w for w in withheld_values(m)}
    out: list[StudyFact] = []
    rows = (("lvef", "ef_regression", KEY_LVEF_REGRESSION, "(AI regression)"),
            ("lvef_disks", "ef_disks", KEY_LVEF_DISKS, "(method of disks)"))  # fmt: skip
    for key, fact_key, value_key, how in rows:
        fact = measured.get(fact_key)
        if fact is not None:
            out.append(StudyFact(key, "function", STATE_MEASURED,
                                 f"The LVEF is {fact.text} {how}.", fact.value, "%"))  # fmt: skip
        elif value_key in withheld:
            out.append(StudyFact(key, "function", STATE_NOT_MEASURABLE,
                                 withheld[value_key].statement))  # fmt: skip
    if m.ef_sd_percent is not None and "ef_regression" in measured:
        out.append(StudyFact("lvef_sd", "function", STATE_MEASURED,
                             f"Over the beats the LVEF varied with an SD of "
                             f"{m.ef_sd_percent:.1f} %.", float(m.ef_sd_percent), "%"))  # fmt: skip
    grade = lv_grade(m, sex)
    if grade.ef is None:
        why = "no LVEF was measured" if grade.withheld is None else "the LVEF is not measurable"
        text = f"LV systolic function is not graded, because {why}."
        out.append(StudyFact("lv_function", "function", STATE_NOT_MEASURABLE, text))
        return out
    if grade.grade is None:
        out.append(StudyFact("lv_function", "function", STATE_INFO,
                             "LV systolic function is not graded, because the normal LVEF range "
                             f"differs for men and women ({_range_words(_LVEF_NORMAL, None, '%')}"
                             f"; {ASE_SHORT}) and the sex is not known."))  # fmt: skip
        return out
    words = {
        GRADE_NORMAL: "normal LV systolic function",
        GRADE_ABOVE: "an LVEF above the normal range (hyperdynamic)",
        GRADE_MILD: "mildly reduced LV systolic function",
        GRADE_MODERATE: "moderately reduced LV systolic function",
        GRADE_SEVERE: "severely reduced LV systolic function",
    }[grade.grade]
    normal = _range_words(_LVEF_NORMAL, _sex(sex), "%")
    out.append(StudyFact("lv_function", "function", STATE_MEASURED,
                         f"An LVEF of {grade.ef.text} means {words}: the normal LVEF is {normal} "
                         f"({ASE_SHORT}).", grade.ef.value, "%"))  # fmt: skip
    return out


def _volume_facts(
    m: Measurements, sex: str | None, height_cm: float | None, weight_kg: float | None
) -> tuple[list[StudyFact], str | None]:
    measured = {f.key: f for f in measured_facts(m)}
    withheld = {w.key: w for w in withheld_values(m)}
    out: list[StudyFact] = []
    names = (("lv_edv", "edv", KEY_LV_EDV, "LV end-diastolic volume"),
             ("lv_esv", "esv", KEY_LV_ESV, "LV end-systolic volume"),
             ("lv_sv", "sv", "lv_sv", "LV stroke volume"))  # fmt: skip
    for key, fact_key, value_key, label in names:
        fact = measured.get(fact_key)
        if fact is not None:
            out.append(StudyFact(key, "volume", STATE_MEASURED,
                                 f"The {label} is {fact.text} (method of disks, "
                                 "single plane).", fact.value, "mL"))  # fmt: skip
        elif value_key in withheld:
            out.append(StudyFact(key, "volume", STATE_NOT_MEASURABLE,
                                 withheld[value_key].statement))  # fmt: skip
    out += _index_facts(measured, sex, height_cm, weight_kg)
    edv = measured.get("edv")
    if edv is None:
        out.append(StudyFact("lv_size", "size", STATE_NOT_MEASURABLE,
                             "LV size is not graded, because the LV end-diastolic volume "
                             "is not measurable on this loop."))  # fmt: skip
        return out, None
    size: str | None
    indexed = next((f for f in out if f.key == "lv_edv_index"), None)
    what = "end-diastolic volume"
    if indexed is not None and indexed.value is not None:  # the indexed range is the tighter
        size = _size_of(indexed_range_grade(KEY_LV_EDV, indexed.value, sex))
        table, value_text, unit = _EDV_INDEX_NORMAL, f"{indexed.value:.1f} mL/m2", "mL/m2"
        what = "end-diastolic volume index"
    else:
        size = _size_of(range_grade(KEY_LV_EDV, edv.value, sex))
        table, value_text, unit = _EDV_NORMAL, edv.text, "mL"
    ranges = _range_words(table, _sex(sex), unit)
    source = f"{ASE_SHORT}, biplane reference; this volume is single plane"
    if size is None:
        text = (f"LV size is not graded: the {what} of {value_text} is judged "
                f"against {ranges} ({source}), and the sex is not known.")  # fmt: skip
    elif size == SIZE_ENLARGED:
        text = (f"The left ventricle is enlarged: its {what} of {value_text} is "
                f"above the reference range of {ranges} ({source}).")  # fmt: skip
    elif size == SIZE_SMALL:
        text = (f"The left ventricle is smaller than usual: its {what} of "
                f"{value_text} is below the reference range of {ranges} ({source}).")  # fmt: skip
    else:
        text = (f"The left ventricle is normal in size: its {what} of "
                f"{value_text} is within the reference range of {ranges} ({source}).")  # fmt: skip
    out.append(StudyFact("lv_size", "size", STATE_MEASURED if size else STATE_INFO, text))
    return out, size


def _size_of(range_word: str | None) -> str | None:
    if range_word is None:
        return None
    return {GRADE_NORMAL: SIZE_NORMAL, GRADE_ABOVE: SIZE_ENLARGED,
            GRADE_BELOW: SIZE_SMALL}[range_word]  # fmt: skip


def _conditions(ef_grade: str | None, withheld_ef: bool, size: str | None,
                rhythm: str | None, rate: str | None, demo: bool) -> frozenset[str]:  # fmt: skip
    found = set()
    if ef_grade in (GRADE_MILD, GRADE_MODERATE, GRADE_SEVERE):
        found.add("ef_reduced")
    elif ef_grade == GRADE_NORMAL:
        found.add("ef_normal")
    elif ef_grade == GRADE_ABOVE:
        found.add("ef_above")
    if withheld_ef:
        found.add("ef_withheld")
    found |= {f"lv_{size}"} if size else set()
    found |= {f"rhythm_{rhythm}"} if rhythm else set()
    if rate == GRADE_ABOVE:
        found.add("rate_high")
    elif rate == GRADE_BELOW:
        found.add("rate_low")
    if demo:
        found.add("demo")
    return frozenset(found)


def build_fact_sheet(
    m: Measurements,
    sex: str | None,
    *,
    height_cm: float | None = None,
    weight_kg: float | None = None,
    demo_models: bool = False,
) -> FactSheet:
    """The study's facts, built from the measurements alone (and the sex, height and weight
    only to pick and index the reference ranges)."""
    sex = _sex(sex)
    facts = _ef_facts(m, sex)
    volumes, size = _volume_facts(m, sex, height_cm, weight_kg)
    rates, rhythm = rate_facts(m)
    facts += volumes + rates + image_facts(m)
    facts.append(StudyFact("not_assessed", "not_assessed", STATE_NOT_ASSESSED,
                           NOT_ASSESSED_SENTENCE))  # fmt: skip
    if demo_models:
        facts.append(StudyFact("demo", "demo", STATE_INFO, DEMO_SENTENCE))
    grade = lv_grade(m, sex)
    hr = next((f for f in measured_facts(m) if f.key == "heart_rate"), None)
    rate = None if hr is None else range_grade(KEY_HEART_RATE, hr.value, None)
    conditions = _conditions(grade.grade, grade.withheld is not None, size, rhythm, rate,
                             demo_models)  # fmt: skip
    return FactSheet(tuple(facts), sex, grade.grade, size, rhythm, conditions, m)
