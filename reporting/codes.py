"""Every code the reporting objects use, in one place, with where it comes from.

A receiving PACS, EHR or registry matches on these codes, not on our text, so a wrong digit
silently misfiles a result: keeping them here (and nowhere else) makes them reviewable in one
read. Each ``ClinicalCode`` renders itself for DICOM (``dicom()``, a highdicom ``CodedConcept``)
and for FHIR (``fhir_coding()``), so the two worlds cannot drift apart.

Sources:

* LN: LOINC (https://loinc.org), display names as DICOM PS3.16 uses them where it does.
* SCT: SNOMED CT (http://snomed.info/sct), meanings as in DICOM PS3.16 (the CIDs named below).
* DCM: DICOM Controlled Terminology, PS3.16 Annex D.
* UCUM: Unified Code for Units of Measure (case-sensitive codes).
* UMLS: one concept DICOM TID 1500 itself names (Qualitative Evaluations).
* HL7 data-absent-reason (FHIR): why an Observation carries no value.
* 99ECHOAGENT: this project's private scheme (DICOM) / ``urn:echo-agent:codes`` (FHIR), for the
  loop quality score only, which no LOINC, SNOMED CT or DCM concept describes (DCM "Image
  Quality Rating" and its kin rate image quality by a reader or a CAD library, not how well a
  loop supports its measurements).
* HL7 v2 table 0074 (diagnostic service section), HL7 v2 table 0203 (identifier type),
  HL7 v3 ObservationInterpretation, FHIR observation-category: HL7 terminology
  (https://terminology.hl7.org).
"""

from __future__ import annotations

from dataclasses import dataclass

from highdicom.sr import CodedConcept

# This project's own coding scheme, for the one concept no standard code describes (the loop
# quality score). DICOM private coding scheme designators start with "99" (PS3.3 C.12.1.1.2.1).
PRIVATE_SCHEME = "99ECHOAGENT"
PRIVATE_SYSTEM = "urn:echo-agent:codes"

# Coding scheme designator (DICOM) -> code system URI (FHIR)
FHIR_SYSTEMS: dict[str, str] = {
    "LN": "http://loinc.org",
    "SCT": "http://snomed.info/sct",
    "DCM": "http://dicom.nema.org/resources/ontology/DCM",
    "UCUM": "http://unitsofmeasure.org",
    "HL7-0074": "http://terminology.hl7.org/CodeSystem/v2-0074",
    "HL7-0203": "http://terminology.hl7.org/CodeSystem/v2-0203",
    "HL7-OBSINT": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
    "HL7-OBSCAT": "http://terminology.hl7.org/CodeSystem/observation-category",
    "UMLS": "http://terminology.hl7.org/CodeSystem/umls",
    "HL7-DAR": "http://terminology.hl7.org/CodeSystem/data-absent-reason",
    PRIVATE_SCHEME: PRIVATE_SYSTEM,
}

# Schemes DICOM knows by designator; the HL7 tables above exist only on the FHIR side.
DICOM_SCHEMES = frozenset({"LN", "SCT", "DCM", "UCUM", "UMLS", PRIVATE_SCHEME})

# FHIR identifier system for DICOM UIDs (values are "urn:oid:<uid>"), FHIR R4 ImagingStudy.
DICOM_UID_SYSTEM = "urn:dicom:uid"


@dataclass(frozen=True)
class ClinicalCode:
    """One coded concept: ``scheme`` is the DICOM coding scheme designator (or our HL7 key)."""

    value: str
    scheme: str
    meaning: str

    def __post_init__(self) -> None:
        if self.scheme not in FHIR_SYSTEMS:
            raise ValueError(f"unknown coding scheme {self.scheme!r} for code {self.value!r}")

    def dicom(self) -> CodedConcept:
        """The DICOM Code Sequence item (for SR content, SEG descriptions)."""
        if self.scheme not in DICOM_SCHEMES:
            raise ValueError(f"{self.scheme} codes are not used in DICOM objects ({self.value})")
        return CodedConcept(value=self.value, scheme_designator=self.scheme, meaning=self.meaning)

    @property
    def fhir_system(self) -> str:
        return FHIR_SYSTEMS[self.scheme]

    def fhir_coding(self) -> dict[str, str]:
        """A FHIR ``Coding`` as plain JSON."""
        return {"system": self.fhir_system, "code": self.value, "display": self.meaning}


# --- measurements (LOINC concept names, as DICOM TID 5200 / CID 12227 use them) ---------------
LVEF = ClinicalCode("18043-0", "LN", "Left Ventricular Ejection Fraction by US")
LV_EDV = ClinicalCode("18026-5", "LN", "Left Ventricular End Diastolic Volume")
LV_ESV = ClinicalCode("18148-7", "LN", "Left Ventricular End Systolic Volume")
HEART_RATE = ClinicalCode("8867-4", "LN", "Heart rate")
# SNOMED CT observable; DICOM CID 12239 (Cardiac Output Properties) uses it for LV stroke volume
STROKE_VOLUME = ClinicalCode("90096001", "SCT", "Stroke Volume")

# --- how, where, which view -------------------------------------------------------------------
# DICOM CID 12227 (Echocardiography Measurement Method)
METHOD_OF_DISKS_SINGLE_PLANE = ClinicalCode("125208", "DCM", "Method of Disks, Single Plane")
# TID 300's concept name for the method (highdicom writes it for measurements itself; the SR's
# "not measurable" evaluations name it with this)
MEASUREMENT_METHOD = ClinicalCode("370129005", "SCT", "Measurement Method")
# DICOM CID 7162 (Algorithm Family): for the SEG's and the SR's algorithm identification, and as
# the FHIR method of the regression EF (no method-of-measurement code describes a network)
ARTIFICIAL_INTELLIGENCE = ClinicalCode("123110", "DCM", "Artificial Intelligence")
LEFT_VENTRICLE = ClinicalCode("87878005", "SCT", "Left ventricle")  # finding site, SEG type
# DICOM CID 12226 (Echocardiography Image View)
APICAL_FOUR_CHAMBER = ClinicalCode("399214001", "SCT", "Apical four chamber")
IMAGE_VIEW = ClinicalCode("111031", "DCM", "Image View")  # concept name of the view modifier
ECHOCARDIOGRAPHY = ClinicalCode("40701008", "SCT", "Echocardiography")  # TID 1500 procedure
COMMENT = ClinicalCode("121106", "DCM", "Comment")  # free-text SR item (report narrative, label)
OBSERVER_TYPE_DEVICE = ClinicalCode("121007", "DCM", "Device")  # CID 270: the SR's observer
MEAN = ClinicalCode("373098007", "SCT", "Mean")  # TID 300 derivation: a mean over beats
# TID 1500 row 12: the container of free-text and coded evaluations
QUALITATIVE_EVALUATIONS = ClinicalCode("C0034375", "UMLS", "Qualitative Evaluations")

# --- segmentation (DICOM CID 7150 / 7151) -----------------------------------------------------
ANATOMICAL_STRUCTURE = ClinicalCode("91723000", "SCT", "Anatomical Structure")
DERIVATION_SEGMENTATION = ClinicalCode("113076", "DCM", "Segmentation")  # CID 7203
# CID 7202 (Source Image Purposes of Reference): for the SEG and the secondary capture
SOURCE_IMAGE_FOR_PROCESSING = ClinicalCode(
    "121322", "DCM", "Source image for image processing operation"
)

# --- units (UCUM) -----------------------------------------------------------------------------
UNIT_PERCENT = ClinicalCode("%", "UCUM", "percent")
UNIT_ML = ClinicalCode("mL", "UCUM", "milliliter")
UNIT_PER_MIN = ClinicalCode("/min", "UCUM", "per minute")
UNIT_NONE = ClinicalCode("1", "UCUM", "no units")  # a dimensionless score (0-1)

# --- a value the node does not stand behind (the validity gate, ``inference.gate``) ----------
# DICOM CID 42 (Numeric Value Qualifier): the coded value of an SR evaluation that stands where
# the measurement would be
MEASUREMENT_FAILURE = ClinicalCode("114006", "DCM", "Measurement failure")
# FHIR Observation.dataAbsentReason: the value could not be determined
DATA_ABSENT_ERROR = ClinicalCode("error", "HL7-DAR", "Error")
# how well the loop supports its measurements, 0-1 (0.5 on the gate's threshold); private, see
# the module docstring
LOOP_QUALITY_SCORE = ClinicalCode("LOOP-QUALITY", PRIVATE_SCHEME, "Image quality score")

# --- the report (FHIR DiagnosticReport) -------------------------------------------------------
REPORT_US_HEART = ClinicalCode("42148-7", "LN", "US Heart")
CATEGORY_CARDIAC_ULTRASOUND = ClinicalCode("CUS", "HL7-0074", "Cardiac Ultrasound")
CATEGORY_CARDIOLOGY = ClinicalCode("LP29708-2", "LN", "Cardiology")  # LOINC part (US Core)
# the report text as one OBX of an HL7 v2 ORU (reporting.hl7_oru)
CONCLUSIONS_DOCUMENT = ClinicalCode("55110-1", "LN", "Conclusions [Interpretation] Document")
OBSERVATION_CATEGORY_IMAGING = ClinicalCode("imaging", "HL7-OBSCAT", "Imaging")
IDENTIFIER_TYPE_MRN = ClinicalCode("MR", "HL7-0203", "Medical record number")

# --- conclusions: LV systolic function, never heart failure (an echo alone cannot diagnose it) -
# SNOMED CT's concept is "... and wall motion": its DICOM meaning (PS3.16 Table O-1) is kept
NORMAL_LV_SYSTOLIC_FUNCTION = ClinicalCode(
    "371857005", "SCT", "Normal left ventricular systolic function and wall motion"
)
LV_SYSTOLIC_DYSFUNCTION = ClinicalCode("134401001", "SCT", "Left ventricular systolic dysfunction")
SEVERITY = ClinicalCode("246112005", "SCT", "Severity")  # attribute for the qualifier
SEVERITY_MILD = ClinicalCode("255604002", "SCT", "Mild")
SEVERITY_MODERATE = ClinicalCode("6736007", "SCT", "Moderate")
SEVERITY_SEVERE = ClinicalCode("24484000", "SCT", "Severe")

# --- interpretation flags (HL7 v3 ObservationInterpretation) ----------------------------------
INTERPRETATION_NORMAL = ClinicalCode("N", "HL7-OBSINT", "Normal")
INTERPRETATION_LOW = ClinicalCode("L", "HL7-OBSINT", "Low")
INTERPRETATION_HIGH = ClinicalCode("H", "HL7-OBSINT", "High")


# --- TID 5200 Echocardiography Procedure Report (reporting.echo_sr) ---------------------------
# Codes checked against PS3.16 as published (the TID 5200 / 5202 tables, CID 7000, 12224, 12233)
# and against pydicom's PS3.16-generated concept and context-group tables; the SNOMED CT codes of
# the modifier concept names are the SCT equivalents PS3.16 gives for the retired SNOMED-RT codes
# the templates were written with (G-0373 "Image Mode", R-4089A "Cardiac Cycle Point").
# TID 5200 row 1 (CID 7000): the document's root container
ADULT_ECHO_PROCEDURE_REPORT = ClinicalCode(
    "125200", "DCM", "Adult Echocardiography Procedure Report"
)
# TID 5202 row 1, the section container. Editions before the SNOMED/LOINC rework (and many
# scanners) write (121070, DCM, "Findings"); PS3.2's TID 5200 conformance example (Table
# N.10-4) uses this LOINC code, which CID 7001 also lists.
FINDINGS = ClinicalCode("59776-5", "LN", "Findings")
FINDING_SITE = ClinicalCode("363698007", "SCT", "Finding Site")  # TID 5202 row 2
MEASUREMENT_GROUP = ClinicalCode("125007", "DCM", "Measurement Group")  # TID 5202 row 3
IMAGE_MODE = ClinicalCode("399264008", "SCT", "Image Mode")  # TID 5202 row 4 (SRT G-0373)
IMAGE_MODE_2D = ClinicalCode("399064001", "SCT", "2D mode")  # CID 12224 Ultrasound Image Mode
# TID 5203's cardiac phase modifier (SRT R-4089A); values from CID 12233 Cardiac Phase
CARDIAC_CYCLE_POINT = ClinicalCode("272518008", "SCT", "Cardiac Cycle Point")
END_DIASTOLE = ClinicalCode("416190007", "SCT", "End diastole")
END_SYSTOLE = ClinicalCode("416430001", "SCT", "End Systole")
DERIVATION = ClinicalCode("121401", "DCM", "Derivation")  # TID 5203 / TID 300: value CID 3627


def all_codes() -> dict[str, ClinicalCode]:
    """Every code above by its constant name (for tests and for documentation)."""
    return {name: value for name, value in globals().items() if isinstance(value, ClinicalCode)}
