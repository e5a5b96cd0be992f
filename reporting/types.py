"""Plain data the reporting functions take: which algorithms produced the numbers, the report
text and its sign-off, and the identity of the analysed loop.

They are frozen dataclasses so a report object, once written, cannot disagree with the data it
was written from; the pipeline and the web app build them, ``reporting`` only reads them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, replace

from pydicom.dataset import Dataset

from reporting.body_size import UNKNOWN_BODY_SIZE, BodySize, body_size_from_dataset

# Shown on every surface (PDF, burned-in pixels, SR, FHIR) whenever a result comes from the demo
# networks; DICOM text and burned-in fonts are ASCII, hence the second spelling.
DEMO_LABEL = "DEMO MODELS — trained on phantoms, not for clinical use"
DEMO_LABEL_ASCII = "DEMO MODELS - trained on phantoms, not for clinical use"

# FHIR DiagnosticReport / Observation statuses this node uses: unsigned drafts are preliminary,
# a signed report is final, and an edit after signing is amended.
REPORT_STATUSES = ("preliminary", "final", "amended")

LO_MAX_CHARS = 64  # DICOM LO (Long String): names and versions end up in LO attributes


def _check_lo(what: str, value: str) -> None:
    if not value or not value.strip():
        raise ValueError(f"{what} must not be empty")
    if len(value) > LO_MAX_CHARS or "\\" in value or not value.isprintable():
        raise ValueError(
            f"{what} {value!r} must be printable, without backslash, at most {LO_MAX_CHARS} "
            "characters (it is written to a DICOM LO attribute)"
        )


@dataclass(frozen=True)
class AlgorithmInfo:
    """One algorithm behind a result, as DICOM's algorithm identification names it (family
    Artificial Intelligence). ``demo_model`` marks the bundled networks trained on phantoms."""

    name: str
    version: str
    demo_model: bool = False
    parameters: tuple[str, ...] = ()  # free text, e.g. ("width=0.25", "clip=32x2")

    def __post_init__(self) -> None:
        _check_lo("algorithm name", self.name)
        _check_lo("algorithm version", self.version)

    @property
    def display_name(self) -> str:
        """The name with the demo label where it applies (for free-text surfaces)."""
        return f"{self.name} ({DEMO_LABEL_ASCII})" if self.demo_model else self.name


@dataclass(frozen=True)
class Algorithms:
    """The two networks behind one analysis: segmentation (-> masks, areas, volumes, disks EF)
    and EF regression."""

    segmentation: AlgorithmInfo
    ejection_fraction: AlgorithmInfo

    @property
    def demo_models(self) -> bool:
        return self.segmentation.demo_model or self.ejection_fraction.demo_model


@dataclass(frozen=True)
class Signature:
    """Who signed, for whom, and when. ``observer_name`` is in DICOM person-name form
    (``Family^Given``) because the SR's Verifying Observer Name is a PN; ``display`` gives the
    human order for the PDF and FHIR."""

    observer_name: str
    organisation: str
    signed_at: dt.datetime

    def __post_init__(self) -> None:
        if not self.observer_name.strip():
            raise ValueError("the signing observer's name must not be empty")
        if not self.organisation.strip():
            raise ValueError("the signing organisation must not be empty")
        if self.signed_at.tzinfo is None:
            raise ValueError("signed_at must be timezone-aware (a signature is an instant)")

    @property
    def display(self) -> str:
        return person_display_name(self.observer_name)


def person_display_name(pn: str) -> str:
    """``Family^Given^Middle^Prefix^Suffix`` -> ``Prefix Given Middle Family Suffix``."""
    parts = (pn.split("=")[0].split("^") + [""] * 5)[:5]
    family, given, middle, prefix, suffix = (p.strip() for p in parts)
    return " ".join(p for p in (prefix, given, middle, family, suffix) if p)


@dataclass(frozen=True)
class DraftReport:
    """The words of one report version and where it stands.

    ``status`` uses FHIR's vocabulary (the database's ``draft``/``preliminary`` map to
    ``preliminary``, ``signed`` to ``final``, ``amended`` to ``amended``); a final or amended
    report carries the signature, a preliminary one never does.
    """

    narrative_text: str
    demo_models: bool
    status: str = "preliminary"
    version: int = 1
    signature: Signature | None = None
    amendment_reason: str = ""

    def __post_init__(self) -> None:
        if self.status not in REPORT_STATUSES:
            raise ValueError(f"status must be one of {', '.join(REPORT_STATUSES)}")
        if self.version < 1:
            raise ValueError("version starts at 1")
        if self.status == "preliminary" and self.signature is not None:
            raise ValueError("a preliminary report is unsigned; sign it with signed()")
        if self.status != "preliminary" and self.signature is None:
            raise ValueError(f"a {self.status} report needs the signature")
        if self.status == "amended" and not self.amendment_reason.strip():
            raise ValueError("an amended report says why it was amended")

    @property
    def is_signed(self) -> bool:
        return self.signature is not None

    def signed(self, signature: Signature) -> DraftReport:
        """This text, signed: the final version."""
        if self.status != "preliminary":
            raise ValueError(f"only a preliminary report can be signed (this one is {self.status})")
        return replace(self, status="final", signature=signature)

    def amended(self, narrative_text: str, signature: Signature, reason: str) -> DraftReport:
        """A new version after signing: new text, the amending signature and the reason."""
        if self.status == "preliminary":
            raise ValueError("an unsigned report is edited, not amended")
        return replace(
            self,
            narrative_text=narrative_text,
            status="amended",
            version=self.version + 1,
            signature=signature,
            amendment_reason=reason,
        )


@dataclass(frozen=True)
class SourceLoop:
    """Who and what the analysed loop is, copied out of its DICOM header once, for the
    surfaces (PDF, FHIR) that must not need the DICOM file."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    patient_id: str
    issuer_of_patient_id: str
    patient_name: str  # DICOM PN form
    patient_sex: str  # DICOM: "M", "F", "O" or ""
    patient_birth_date: str  # YYYYMMDD or ""
    accession_number: str
    study_date: str  # YYYYMMDD or ""
    study_time: str  # HHMMSS[.f] or ""
    study_description: str
    institution_name: str
    n_frames: int
    # Patient's Size and Weight, checked (``reporting.body_size``): index the LV volumes
    body_size: BodySize = field(default=UNKNOWN_BODY_SIZE, repr=False)

    def __post_init__(self) -> None:
        for name in ("study_instance_uid", "sop_instance_uid", "sop_class_uid"):
            if not getattr(self, name):
                raise ValueError(f"the source loop has no {name}")

    @classmethod
    def from_dataset(cls, ds: Dataset) -> SourceLoop:
        def text(keyword: str) -> str:
            value = ds.get(keyword)
            return "" if value is None else str(value).strip()

        return cls(
            study_instance_uid=text("StudyInstanceUID"),
            series_instance_uid=text("SeriesInstanceUID"),
            sop_instance_uid=text("SOPInstanceUID"),
            sop_class_uid=text("SOPClassUID"),
            patient_id=text("PatientID"),
            issuer_of_patient_id=text("IssuerOfPatientID"),
            patient_name=text("PatientName"),
            patient_sex=text("PatientSex").upper(),
            patient_birth_date=text("PatientBirthDate"),
            accession_number=text("AccessionNumber"),
            study_date=text("StudyDate"),
            study_time=text("StudyTime"),
            study_description=text("StudyDescription"),
            institution_name=text("InstitutionName"),
            n_frames=int(ds.get("NumberOfFrames", 1) or 1),
            body_size=body_size_from_dataset(ds),
        )

    @property
    def study_datetime(self) -> dt.datetime | None:
        """Study date and time as a naive local datetime (DICOM gives no zone by default)."""
        if len(self.study_date) != 8:
            return None
        clock = self.study_time.split(".")[0].ljust(6, "0")[:6]
        try:
            return dt.datetime.strptime(self.study_date + clock, "%Y%m%d%H%M%S")
        except ValueError:
            return None
