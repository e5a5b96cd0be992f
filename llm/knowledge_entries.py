"""The vetted knowledge base: short explanations in the project's own words, each with its
source, the question types it serves and the study findings it applies to.

Why a fixed list: an explanation or a piece of advice reaches a patient only when a person
wrote and checked it. Entries explain and point to the treating cardiologist; none prescribes
a medicine, a dose or an amount of exercise. An entry that speaks of a finding ("an enlarged
left ventricle") carries ``requires_any`` so it is retrieved only for a study with that finding.
Numbers in entries are reference ranges, quoted from the source named.
"""

from __future__ import annotations

from dataclasses import dataclass

from llm.intents import Intent

ASE_EACVI_2015 = (
    "ASE/EACVI 2015 chamber quantification recommendations (Lang et al., J Am Soc Echocardiogr "
    "2015;28:1-39)"
)
ESC_HF_2021 = (
    "ESC 2021 heart failure guidelines (McDonagh et al., Eur Heart J 2021;42:3599-3726)"
)
AHA_PATIENT = "American Heart Association patient information (heart.org)"
SOURCES = (ASE_EACVI_2015, ESC_HF_2021, AHA_PATIENT)

_D, _E, _A, _M = Intent.DESCRIPTIVE, Intent.EXPLANATORY, Intent.ADVISORY, Intent.MEASUREMENT


@dataclass(frozen=True)
class KnowledgeEntry:
    """One vetted explanation. ``text`` is quoted verbatim (the guard accepts its sentences
    as they are); ``keywords`` and ``topics`` (``llm.intents`` topics) drive retrieval."""

    id: str
    title: str
    text: str
    source: str
    intents: frozenset[Intent]
    keywords: tuple[str, ...]
    topics: frozenset[str] = frozenset()
    requires_any: frozenset[str] = frozenset()  # ``FactSheet.conditions``; empty: any study

    def applies_to(self, conditions: frozenset[str]) -> bool:
        return not self.requires_any or bool(self.requires_any & conditions)

    def to_json(self) -> dict[str, str]:
        return {"id": self.id, "title": self.title, "source": self.source}


def _entry(id_: str, title: str, text: str, source: str, intents: tuple[Intent, ...],
           keywords: str, topics: str = "", requires_any: str = "") -> KnowledgeEntry:  # fmt: skip
    return KnowledgeEntry(id_, title, text, source, frozenset(intents), tuple(keywords.split()),
                          frozenset(topics.split()), frozenset(requires_any.split()))  # fmt: skip


ENTRIES: tuple[KnowledgeEntry, ...] = (
    _entry("lv-anatomy", "The left ventricle",
           "The left ventricle is the heart's main pumping chamber. It fills with blood that "
           "comes from the lungs and, with each beat, pumps it out through the aorta to the "
           "whole body.",
           AHA_PATIENT, (_D, _E), "left ventricle chamber pump anatomy heart what is",
           "function size image"),
    _entry("ef-meaning", "What the ejection fraction is",
           "The ejection fraction (EF) is the share of the blood in the left ventricle that is "
           "pumped out with each beat. It is worked out from the volume at the end of filling "
           "and the volume left at the end of the contraction.",
           ASE_EACVI_2015, (_E, _M), "ejection fraction ef lvef pump percent mean function",
           "function volume"),
    _entry("ef-categories", "How the LVEF is graded",
           "ASE/EACVI 2015 grade the LVEF against sex-specific normal ranges: 52-72 % is "
           "normal for men and 54-74 % for women, from 41 % up to the lower limit of normal "
           "is mildly abnormal, 30-40 % moderately abnormal and below 30 % severely abnormal.",
           ASE_EACVI_2015, (_E, _M), "grade categories normal range abnormal mild moderate "
           "severe ejection fraction", "function"),
    _entry("ef-reduced-meaning", "What a reduced LVEF means",
           "A reduced LVEF means the left ventricle pumps out less of its blood with each beat "
           "than a healthy one does. The ESC 2021 heart failure guidelines call an LVEF of "
           "40 % or less reduced and 41-49 % mildly reduced; whether there is heart failure "
           "depends on symptoms and other tests, which only your doctors can weigh.",
           ESC_HF_2021, (_E, _A), "reduced low weak ejection fraction mean health serious "
           "result", "function", "ef_reduced"),
    _entry("ef-normal-meaning", "What a normal LVEF means",
           "A normal LVEF means the pumping of the left ventricle at rest lies within the "
           "range seen in healthy adults. It does not rule out problems this analysis does not "
           "look at, such as valve disease.",
           ASE_EACVI_2015, (_E, _A), "normal ejection fraction mean health result good",
           "function", "ef_normal"),
    _entry("ef-above-meaning", "What an LVEF above the normal range means",
           "An LVEF above the normal range means the left ventricle empties more than usual. "
           "It can occur with a fast heart rate, a small ventricle or some muscle and valve "
           "conditions, and your cardiologist interprets it with the rest of the study.",
           ASE_EACVI_2015, (_E, _A), "high above hyperdynamic ejection fraction mean result",
           "function", "ef_above"),
    _entry("lv-enlarged", "What an enlarged left ventricle means",
           "An enlarged left ventricle holds more blood at the end of filling than the "
           "reference range for healthy adults of the same sex. It can follow long-standing "
           "extra work, for example from high blood pressure, a leaking valve or a weakened "
           "heart muscle, and it is judged together with the LVEF and the full echocardiogram.",
           ASE_EACVI_2015, (_E, _A, _M), "enlarged large big dilated size volume mean result "
           "health", "size volume", "lv_enlarged"),
    _entry("lv-size-normal", "A left ventricle of normal size",
           "A left ventricle of normal size holds, at the end of filling, a volume within the "
           "range of healthy adults of the same sex.",
           ASE_EACVI_2015, (_E, _M), "normal size volume enlarged big mean", "size volume",
           "lv_normal"),
    _entry("reduced-ef-causes", "Common causes to discuss",
           "Common causes of a reduced LVEF or an enlarged left ventricle that doctors look "
           "into include coronary artery disease or a past heart attack, long-standing high "
           "blood pressure, valve disease, diseases of the heart muscle (cardiomyopathies), "
           "some medicines and heavy alcohol use. Finding the cause needs your cardiologist "
           "and usually further tests.",
           ESC_HF_2021, (_E, _A), "cause causes why reason due disease result mean",
           "causes function size", "ef_reduced lv_enlarged"),
    _entry("lifestyle", "General heart-healthy habits",
           "General heart-healthy habits recommended for everyone include not smoking, regular "
           "physical activity, a diet low in salt and rich in vegetables, fruit and whole "
           "grains, little or no alcohol, and keeping a healthy weight and blood pressure. "
           "Which changes and how much activity suit you is for your cardiologist to decide.",
           AHA_PATIENT, (_A,), "lifestyle change changes diet exercise activity smoking alcohol "
           "salt weight habits improve prevent sport"),
    _entry("treatment-by-cardiologist", "Treatment is decided by your cardiologist",
           "Treatment depends on the cause, your symptoms and other tests, and is decided by "
           "your treating cardiologist. This system does not recommend, start or change any "
           "medicine.",
           ESC_HF_2021, (_A,), "treatment treat medication medicine drug pill surgery cure "
           "therapy suggest recommend"),
    _entry("reduced-ef-treatment", "Treatment options for a reduced LVEF",
           "For a reduced LVEF the ESC 2021 guidelines describe several groups of medicines, "
           "and for some patients devices, that improve symptoms and outcomes; your "
           "cardiologist decides whether any of them is right for you.",
           ESC_HF_2021, (_A,), "treatment medication medicine drug options therapy reduced",
           "function", "ef_reduced"),
    _entry("red-flags", "Symptoms that need a doctor now",
           "Call emergency services at once for chest pain or pressure, severe shortness of "
           "breath, fainting, or a racing or very irregular heartbeat with dizziness. See a "
           "doctor soon if breathlessness, swollen ankles, tiredness or sudden weight gain "
           "get worse.",
           AHA_PATIENT, (_A, _E), "symptoms chest pain breath breathless faint dizzy swelling "
           "ankles emergency urgent worse warning signs", "symptoms"),
    _entry("see-cardiologist", "When to see your cardiologist",
           "Please discuss these results with your treating cardiologist, who reads them "
           "together with your symptoms, your history and the full echocardiogram, and "
           "decides whether further tests or treatment are needed.",
           ESC_HF_2021, (_A, _E), "cardiologist doctor see visit follow-up discuss next steps "
           "appointment referral"),
    _entry("heart-rate", "The heart rate",
           "The heart rate is the number of heartbeats per minute; for most adults at rest it "
           "lies between 60 and 100 per minute.",
           AHA_PATIENT, (_E, _M), "heart rate pulse beats minute fast slow", "rate"),
    _entry("rhythm-regularity", "Rhythm and one loop",
           "A regular rhythm means the beats come at even intervals. An echocardiogram loop "
           "shows only a few beats, so an ECG is needed to name the rhythm or to find an "
           "irregular rhythm that comes and goes.",
           AHA_PATIENT, (_E, _M), "rhythm regular irregular arrhythmia fibrillation "
           "palpitations ecg", "rhythm"),
    _entry("what-node-measures", "What this analysis measures",
           "This analysis measures the left ventricle on one apical four-chamber loop: its "
           "volumes by the method of disks in a single plane, the LVEF by an AI regression "
           "model and by the method of disks, and the heart rate from the beats. A "
           "cardiologist checks the outlines and the numbers before they are signed.",
           ASE_EACVI_2015, (_D, _E, _M), "measure measured how method video loop analysis "
           "quality reliable accurate trust", "image quality"),
    _entry("limits-of-one-view", "What one view cannot show",
           "One apical four-chamber loop shows the left ventricle from one direction only. A "
           "full echocardiogram adds other views and Doppler measurements to assess the "
           "valves, wall motion, the right heart and the filling pressures.",
           ASE_EACVI_2015, (_D, _E, _M), "valves valve wall motion right ventricle atria "
           "atrium not assessed limits", "not_assessed"),
)
