"""Synthetic patient/study identity and deterministic UIDs.

UIDs come from pydicom's generate_uid with entropy from (seed, study, role) so the same seed
writes byte-identical files while different studies never collide.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
from pydicom.uid import generate_uid

_FAMILY = (
    "PHANTOM",
    "SMITH",
    "GARCIA",
    "MUELLER",
    "ROSSI",
    "NGUYEN",
    "KOWALSKI",
    "SILVA",
    "MARTIN",
    "JOHANSSON",
    "OKAFOR",
    "TANAKA",
    "DUBOIS",
    "PETROV",
    "MURPHY",
    "HANSEN",
    "COHEN",
    "FISCHER",
)
_GIVEN_F = ("ANNA", "MARIA", "JANE", "SOFIA", "EMMA", "LEA", "AMARA", "YUKI", "CLARA", "NORA")
_GIVEN_M = ("JOHN", "LUCA", "DAVID", "OMAR", "PAUL", "KENJI", "IVAN", "THEO", "SAMUEL", "NOAH")
_INSTITUTIONS = ("ECHO LAB A", "CARDIOLOGY DEPT", "HEART CENTRE", "GENERAL HOSPITAL ECHO")


def phantom_uid(seed: int, *parts: object) -> str:
    return generate_uid(entropy_srcs=["echo-agent-phantom", str(seed), *(str(p) for p in parts)])


@dataclass(frozen=True)
class StudyIdentity:
    patient_name: str  # DICOM PN, FAMILY^GIVEN
    patient_id: str
    birth_date: str  # YYYYMMDD
    sex: str  # M | F
    study_date: str  # YYYYMMDD
    study_time: str  # HHMMSS
    accession_number: str
    study_instance_uid: str
    study_id: str
    institution: str
    seed: int
    study_index: int

    @property
    def display_name(self) -> str:
        family, _, given = self.patient_name.partition("^")
        return f"{family}, {given}" if given else family

    def time_after(self, seconds: int) -> str:
        t = dt.datetime.strptime(self.study_date + self.study_time, "%Y%m%d%H%M%S")
        return (t + dt.timedelta(seconds=seconds)).strftime("%H%M%S")

    def uid(self, *parts: object) -> str:
        return phantom_uid(self.seed, self.study_index, *parts)


def sample_identity(rng: np.random.Generator, seed: int, study_index: int) -> StudyIdentity:
    sex = "F" if rng.random() < 0.5 else "M"
    given = rng.choice(_GIVEN_F if sex == "F" else _GIVEN_M)
    family = rng.choice(_FAMILY)
    study_day = dt.date(2023, 1, 2) + dt.timedelta(days=int(rng.integers(0, 900)))
    age_years = int(rng.integers(19, 90))
    birth = study_day - dt.timedelta(days=int(age_years * 365.25 + rng.integers(0, 365)))
    hh, mm, ss = int(rng.integers(7, 18)), int(rng.integers(0, 60)), int(rng.integers(0, 50))
    return StudyIdentity(
        patient_name=f"{family}^{given}",
        patient_id=f"PH{int(rng.integers(0, 10**7)):07d}",
        birth_date=birth.strftime("%Y%m%d"),
        sex=sex,
        study_date=study_day.strftime("%Y%m%d"),
        study_time=f"{hh:02d}{mm:02d}{ss:02d}",
        accession_number=f"ACC{int(rng.integers(0, 10**8)):08d}",
        study_instance_uid=phantom_uid(seed, study_index, "study"),
        study_id=f"{study_index + 1}",
        institution=str(rng.choice(_INSTITUTIONS)),
        seed=seed,
        study_index=study_index,
    )
