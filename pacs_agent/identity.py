"""Is an incoming instance about the same patient as the study it names? (issue #15, item 1)

A Study Instance UID is only as trustworthy as the sender that wrote it: a cart that reuses a
study UID, or a PACS routing error, can send another patient's loop under an existing study,
and the node would then analyse it into that patient's report. The ingest path therefore
compares the instance's patient identity with the one the study was first received under, and
refuses the instance on a conflict (``pacs_agent.store`` keeps it in quarantine).

The rules, deliberately tolerant of how real senders spell the same patient:

* Both sides have a Patient ID: the Patient ID decides. It is compared after removing
  leading and trailing spaces (LO padding is not significant, PS3.5 6.2), case-sensitively.
  The Issuer of Patient ID is compared (spaces removed, case ignored) only when both sides
  have one: many modalities leave (0010,0021) empty while the PACS fills it, so a missing
  issuer is not taken as a different namespace. Names and birth dates are not compared then:
  spelling, case and caret padding of a name vary between a worklist and a cart's keyboard.
* Otherwise (either side has no Patient ID): name and birth date decide. Names are compared
  as DICOM person names with case ignored and component padding removed (``DOE^JANE^^^`` is
  ``Doe^Jane``); a birth date is compared when both sides have one.
* Nothing to compare (no ID, no name, no birth date on one side): no conflict. Absent data
  does not contradict the study, and the study UID is the only evidence there is.

Reasons name the attribute that differs and never its value, so they can go to the log, the
sender's Error Comment and the admin's quarantine list without carrying PHI.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

# Patients recorded without a Patient ID get an issuer unique to their study (ingest.py): that
# issuer is the node's own bookkeeping, not an identity the sender gave.
NODE_ISSUER_PREFIX = "NOID:"

PATIENT_ID_DIFFERS = "Patient ID differs from the study's"
ISSUER_DIFFERS = "Issuer of Patient ID differs from the study's"
NAME_DIFFERS = "patient name differs from the study's (no Patient ID on both sides)"
BIRTH_DATE_DIFFERS = "patient birth date differs from the study's (no Patient ID on both sides)"


@dataclass(frozen=True)
class PatientIdentity:
    """The identifying attributes of a patient as one side (study or instance) has them."""

    patient_id: str = field(default="", repr=False)
    issuer: str = field(default="", repr=False)
    name: str = field(default="", repr=False)
    birth_date: dt.date | None = field(default=None, repr=False)


def identity_conflict(study: PatientIdentity, incoming: PatientIdentity) -> str | None:
    """None when ``incoming`` may be the study's patient; otherwise why not (no PHI in it)."""
    study_id, incoming_id = _id(study.patient_id), _id(incoming.patient_id)
    if study_id and incoming_id:
        if study_id != incoming_id:
            return PATIENT_ID_DIFFERS
        study_issuer, incoming_issuer = _issuer(study.issuer), _issuer(incoming.issuer)
        if study_issuer and incoming_issuer and study_issuer != incoming_issuer:
            return ISSUER_DIFFERS
        return None
    study_name, incoming_name = normalized_name(study.name), normalized_name(incoming.name)
    if study_name and incoming_name and study_name != incoming_name:
        return NAME_DIFFERS
    if study.birth_date and incoming.birth_date and study.birth_date != incoming.birth_date:
        return BIRTH_DATE_DIFFERS
    return None


def normalized_name(name: str) -> str:
    """A DICOM person name in a form where padding and case do not count.

    Each of the (up to three) component groups keeps its components, stripped of spaces and
    with trailing empty ones dropped; empty trailing groups go too; case is folded.
    """
    groups = []
    for group in name.strip(" \x00").split("="):
        components = [c.strip().casefold() for c in group.split("^")]
        while components and not components[-1]:
            components.pop()
        groups.append("^".join(components))
    while groups and not groups[-1]:
        groups.pop()
    return "=".join(groups)


def _id(patient_id: str) -> str:
    return patient_id.strip(" \x00")


def _issuer(issuer: str) -> str:
    if issuer.startswith(NODE_ISSUER_PREFIX):
        return ""
    return issuer.strip(" \x00").casefold()
