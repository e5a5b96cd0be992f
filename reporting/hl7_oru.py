"""HL7 v2.5.1 ORU^R01: the same results the FHIR bundle carries, for an EHR or results
interface engine that speaks HL7 v2 over MLLP (``pacs_agent.hl7_mllp`` sends it).

One message per report version, built from the inputs ``reporting.fhir`` takes, so the two
cannot disagree:

* MSH: sending application ECHO-AGENT, a fresh control id (MSH-10) per message, the message
  time, version 2.5.1, character set UTF-8 (MSH-18 "UNICODE UTF-8"). MSH-15/16 stay empty:
  original acknowledgment mode, the receiver answers AA, AE or AR.
* PID: the patient as the DICOM header has it. Patient ID and Name are Type 2 in DICOM: when
  the loop has none, PID-3/PID-5 stay empty (a receiver rejects the message rather than files
  it under an invented identity). The issuer of the patient id is the assigning authority.
* ORC + OBR: the echo. OBR-4 is the code of the FHIR DiagnosticReport (LOINC 42148-7 "US
  Heart"); the filler order number (ORC-3/OBR-3) is the Study Instance UID, so the
  preliminary, the final and an amendment of one study update one result at the receiver;
  OBR-25 is the result status: P unsigned, F signed, C amended (HL7 table 0123).
* OBX per reported value (``reporting.values.reported_values``): NM, the LOINC (or SNOMED CT)
  code with this node's key as the alternate local code, the value with its one decimal, the
  UCUM unit, the reference range and the abnormal flag (L/N/H) of
  ``reporting.interpretation`` (the flags the FHIR Observations carry), the observation status
  P/F/C (table 0085), the method in OBX-17; NTEs say the method in words, the algorithm, the
  interpretation with its source, and the demo label.
* OBX per withheld value (``withheld_values``): no value, observation result status X.
  Table 0085 defines X as "results cannot be obtained for this observation", which is what a
  withheld value is; an empty OBX-5 with status P or F would read as a result still to come
  or a final blank. The NTE states the reason and "manual measurement required", as every
  other surface does. X stays X after sign-off: signing does not produce the number.
* OBX for the loop's quality score (private code, as in FHIR), then the report text as a TX
  OBX (LOINC 55110-1 "Conclusions [Interpretation] Document"), one repetition per line: the
  conclusion FHIR's DiagnosticReport carries (narrative, withheld statements, quality score,
  amendment reason).
* With demo models, an NTE after OBR (and one per value) carries the demo label, in its ASCII
  spelling (a receiver that ignores MSH-18 still reads it).

Free text is escaped (``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\``), and control characters that would end a
segment are replaced, so a patient name like ``O'Neil|Smith^Jr`` cannot shift a field; long
text goes as display lines of 80 characters (repetitions). Every message is read back with
hl7apy (``check_oru``) before it is returned, so one a strict receiver would refuse for a bad
date, number or length is never sent.

The library is hl7apy rather than python-hl7: it knows the v2.5.1 message structures, data
types and lengths, so a message is checked as a receiver checks it, where python-hl7 only
splits on delimiters. MLLP is a few lines of framing (``pacs_agent.hl7_mllp``).

The data types (escaping, CE, XPN, DTM, text lines) are ``reporting.hl7_datatypes``; this
module builds the segments and the message and keeps every name it always exported.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.exceptions import HL7apyException
from hl7apy.parser import parse_message

from inference.types import Measurements
from reporting import codes
from reporting.codes import ClinicalCode
from reporting.fhir import _conclusion as fhir_conclusion
from reporting.hl7_datatypes import (
    LINE_WIDTH,
    MAX_VALUE_CHARS,
    SAFE_CHUNK_CHARS,
    V2_CODING_SYSTEMS,
    Segment,
    aware,
    ce,
    cnn,
    dtm,
    escape,
    repetitions,
    study_dtm,
    unescape,
    xpn,
)
from reporting.interpretation import interpret, lv_systolic_function
from reporting.types import DEMO_LABEL_ASCII, Algorithms, DraftReport, SourceLoop
from reporting.values import (
    GATED_FIELDS,
    ReportedValue,
    WithheldValue,
    loop_quality,
    primary_ef,
    reported_values,
    withheld_ef,
    withheld_values,
)

__all__ = [
    "CHARACTER_SET",
    "CONCLUSIONS",
    "CONTROL_ID_MAX_CHARS",
    "DIAGNOSTIC_SERVICE_SECTION",
    "ENCODING_CHARACTERS",
    "HL7_VERSION",
    "IDENTIFIER_TYPE_MRN",
    "LINE_WIDTH",
    "MAX_VALUE_CHARS",
    "MESSAGE_TYPE",
    "NOTE_SOURCE_FILLER",
    "NOTE_TYPE_REMARK",
    "ORDER_CONTROL_RESULTS",
    "PROCESSING_ID",
    "RESULT_CANNOT_BE_OBTAINED",
    "RESULT_STATUS",
    "SAFE_CHUNK_CHARS",
    "SEGMENT_END",
    "SENDING_APPLICATION",
    "V2_CODING_SYSTEMS",
    "build_oru",
    "check_oru",
    "escape",
    "new_control_id",
    "unescape",
]

SENDING_APPLICATION = "ECHO-AGENT"
HL7_VERSION = "2.5.1"
MESSAGE_TYPE = "ORU^R01^ORU_R01"
CHARACTER_SET = "UNICODE UTF-8"  # HL7 table 0211; the MLLP payload is UTF-8 encoded
PROCESSING_ID = "P"  # production (table 0103)
ENCODING_CHARACTERS = "^~\\&"
SEGMENT_END = "\r"
CONTROL_ID_MAX_CHARS = 20  # MSH-10 is ST(20) in v2.5.1

# HL7 table 0123 (OBR-25) and table 0085 (OBX-11) share these letters for a report's states
RESULT_STATUS: dict[str, str] = {"preliminary": "P", "final": "F", "amended": "C"}
RESULT_CANNOT_BE_OBTAINED = "X"  # table 0085: a withheld value
DIAGNOSTIC_SERVICE_SECTION = codes.CATEGORY_CARDIAC_ULTRASOUND.value  # HL7 table 0074
ORDER_CONTROL_RESULTS = "RE"  # table 0119: observations / performed service to follow
NOTE_SOURCE_FILLER = "L"  # table 0105: ancillary (filler) department is the source of the note
NOTE_TYPE_REMARK = "RE"  # table 0364: remark
IDENTIFIER_TYPE_MRN = codes.IDENTIFIER_TYPE_MRN.value  # table 0203: "MR"
# The report text's OBX code: DICOM CID 7001's LOINC heading for conclusions, the v2 home of
# the FHIR DiagnosticReport.conclusion.
CONCLUSIONS = codes.CONCLUSIONS_DOCUMENT


def new_control_id() -> str:
    """A message control id (MSH-10): 80 random bits in hex, 20 characters, unique per
    message so an ACK can only match the message it answers."""
    return secrets.token_hex(CONTROL_ID_MAX_CHARS // 2).upper()


def build_oru(
    source: SourceLoop,
    measurements: Measurements,
    algorithms: Algorithms,
    report: DraftReport,
    *,
    receiving_application: str = "",
    receiving_facility: str = "",
    sending_facility: str = "",
    control_id: str | None = None,
    message_time: dt.datetime | None = None,
) -> str:
    """The ORU^R01 as ER7 text, segments ended by CR (what MLLP frames, UTF-8 encoded).

    ``control_id`` defaults to a fresh one; a resend of the same message (after a timeout)
    must reuse the text, not call this again, so the receiver can recognise the duplicate.
    ``message_time`` (MSH-7, OBX-19; naive means the node's zone) defaults to now; the report's
    signature time is the OBR-22 status change time when it is signed."""
    control_id = control_id or new_control_id()
    if not control_id or len(control_id) > CONTROL_ID_MAX_CHARS:
        raise ValueError(f"the control id must be 1-{CONTROL_ID_MAX_CHARS} characters")
    when = aware(message_time or dt.datetime.now().astimezone())
    status = RESULT_STATUS[report.status]
    demo = report.demo_models or algorithms.demo_models
    segments = [
        _msh(control_id, when, receiving_application, receiving_facility, sending_facility),
        _pid(source),
        _orc(source),
        _obr(source, report, status, when),
    ]
    if demo:
        segments.append(_nte(1, DEMO_LABEL_ASCII))
    segments += _observations(source, measurements, algorithms, report, status, when, demo)
    message = "".join(s.er7() + SEGMENT_END for s in segments)
    check_oru(message)
    return message


def check_oru(message: str) -> None:
    """Reads ``message`` back with hl7apy as a v2.5.1 ORU_R01 at its strict level, which
    checks every value against its data type and maximum length (dates, numbers, coded
    values): a message that fails here would be rejected by a strict receiver, so it is never
    sent. ValueError says what is wrong. (Required fields are not checked here: a loop
    without a Patient ID or Name still yields its message, with PID-3/PID-5 empty.)"""
    try:
        parsed = parse_message(message, validation_level=VALIDATION_LEVEL.STRICT)
    except (HL7apyException, ValueError) as exc:
        raise ValueError(f"the ORU^R01 is not valid HL7 {HL7_VERSION}: {exc}") from exc
    if parsed.name != "ORU_R01":
        raise ValueError(f"the message parses as {parsed.name}, not ORU_R01")


# --- segments ---------------------------------------------------------------------------------


def _msh(
    control_id: str,
    when: dt.datetime,
    receiving_application: str,
    receiving_facility: str,
    sending_facility: str,
) -> Segment:
    # MSH-1 is the field separator itself and MSH-2 the encoding characters, unescaped
    fields = [""] * 18
    fields[1] = escape(SENDING_APPLICATION)  # MSH-3
    fields[2] = escape(sending_facility)  # MSH-4
    fields[3] = escape(receiving_application)  # MSH-5
    fields[4] = escape(receiving_facility)  # MSH-6
    fields[5] = dtm(when)  # MSH-7
    fields[7] = MESSAGE_TYPE  # MSH-9
    fields[8] = escape(control_id)  # MSH-10
    fields[9] = PROCESSING_ID  # MSH-11
    fields[10] = HL7_VERSION  # MSH-12
    fields[17] = CHARACTER_SET  # MSH-18
    return Segment("MSH", [ENCODING_CHARACTERS, *fields[1:]])


def _pid(source: SourceLoop) -> Segment:
    fields = [""] * 8
    fields[0] = "1"  # PID-1 set id
    if source.patient_id:  # PID-3: CX id^^^assigning authority^identifier type
        authority = escape(source.issuer_of_patient_id)
        fields[2] = f"{escape(source.patient_id)}^^^{authority}^{IDENTIFIER_TYPE_MRN}"
    fields[4] = xpn(source.patient_name)  # PID-5
    if re.fullmatch(r"\d{8}", source.patient_birth_date):
        fields[6] = source.patient_birth_date  # PID-7
    if source.patient_sex in ("M", "F", "O"):  # DICOM's values are table 0001's too
        fields[7] = source.patient_sex  # PID-8
    return Segment("PID", fields)


def _filler_order_number(source: SourceLoop) -> str:
    """EI: the study's UID in this application's namespace; one result per study."""
    return f"{escape(source.study_instance_uid)}^{SENDING_APPLICATION}"


def _orc(source: SourceLoop) -> Segment:
    return Segment("ORC", [ORDER_CONTROL_RESULTS, "", _filler_order_number(source)])


def _obr(source: SourceLoop, report: DraftReport, status: str, when: dt.datetime) -> Segment:
    fields = [""] * 32
    fields[0] = "1"  # OBR-1 set id
    fields[2] = _filler_order_number(source)  # OBR-3
    fields[3] = ce(codes.REPORT_US_HEART)  # OBR-4 universal service identifier
    fields[6] = study_dtm(source)  # OBR-7 observation date/time
    fields[17] = escape(source.accession_number)  # OBR-18 placer field 1: the accession
    signed_at = report.signature.signed_at if report.signature is not None else when
    fields[21] = dtm(signed_at)  # OBR-22 results report / status change
    fields[23] = DIAGNOSTIC_SERVICE_SECTION  # OBR-24
    fields[24] = status  # OBR-25 result status
    if report.signature is not None:  # OBR-32 principal result interpreter (NDL.1 = CNN)
        fields[31] = cnn(report.signature.observer_name)
    return Segment("OBR", fields)


def _nte(set_id: int, text: str) -> Segment:
    """One note (NTE-3 is FT, escaped like any text; a long note wraps into repetitions)."""
    return Segment("NTE", [str(set_id), NOTE_SOURCE_FILLER, repetitions(text), NOTE_TYPE_REMARK])


def _observations(
    source: SourceLoop,
    measurements: Measurements,
    algorithms: Algorithms,
    report: DraftReport,
    status: str,
    when: dt.datetime,
    demo: bool,
) -> list[Segment]:
    values = reported_values(measurements, algorithms)
    withheld = withheld_values(measurements)
    by_key: dict[str, ReportedValue | WithheldValue] = {v.key: v for v in values}
    by_key.update({w.key: w for w in withheld})
    order = [key for key in GATED_FIELDS if key in by_key]
    segments: list[Segment] = []
    sub_ids: dict[str, int] = {}
    set_id = 0
    for key in order:
        value = by_key[key]
        set_id += 1
        sub_ids[value.concept.value] = sub_ids.get(value.concept.value, 0) + 1
        sub_id = str(sub_ids[value.concept.value])
        if isinstance(value, ReportedValue):
            segments.append(_value_obx(set_id, sub_id, source, value, status, when))
            notes = _value_notes(value, source)
        else:
            segments.append(_withheld_obx(set_id, sub_id, source, value, when))
            notes = [value.statement]
        if demo:
            notes.append(DEMO_LABEL_ASCII)
        segments += [_nte(i, note) for i, note in enumerate(notes, start=1)]
    quality = loop_quality(measurements)
    if quality is not None:
        set_id += 1
        fields = _obx_fields(set_id, "NM", codes.LOOP_QUALITY_SCORE, "1", source, status, when)
        fields[4] = f"{quality.score:.3f}"  # OBX-5
        fields[5] = ce(codes.UNIT_NONE)  # OBX-6
        segments += [Segment("OBX", fields), _nte(1, quality.statement)]
    systolic = lv_systolic_function(primary_ef(values), source.patient_sex, withheld_ef(withheld))
    # the DiagnosticReport's conclusion, its demo label in ASCII like every other line here
    conclusion = fhir_conclusion(report, systolic, False, withheld, quality)
    text = f"{DEMO_LABEL_ASCII}\n\n{conclusion}" if demo else conclusion
    set_id += 1
    fields = _obx_fields(set_id, "TX", CONCLUSIONS, "1", source, status, when)
    fields[4] = repetitions(text)  # OBX-5, one repetition per display line
    segments.append(Segment("OBX", fields))
    return segments


def _obx_fields(
    set_id: int,
    value_type: str,
    code: ClinicalCode,
    sub_id: str,
    source: SourceLoop,
    status: str,
    when: dt.datetime,
    local: tuple[str, str] | None = None,
) -> list[str]:
    fields = [""] * 19
    fields[0] = str(set_id)  # OBX-1
    fields[1] = value_type  # OBX-2
    fields[2] = ce(code, local)  # OBX-3 observation identifier
    fields[3] = sub_id  # OBX-4: tells the two LVEFs (same LOINC) apart
    fields[10] = status  # OBX-11 observation result status
    fields[13] = study_dtm(source)  # OBX-14 date/time of the observation (the study)
    fields[18] = dtm(when)  # OBX-19 date/time of the analysis
    return fields


def _value_obx(
    set_id: int,
    sub_id: str,
    source: SourceLoop,
    value: ReportedValue,
    status: str,
    when: dt.datetime,
) -> Segment:
    local = (value.key, value.label)
    fields = _obx_fields(set_id, "NM", value.concept, sub_id, source, status, when, local)
    fields[4] = f"{value.value:.1f}"  # OBX-5 (reporting.values rounds to one decimal)
    fields[5] = ce(value.unit)  # OBX-6 units (UCUM)
    interpretation = interpret(value, source.patient_sex)
    if interpretation is not None:
        if len(interpretation.ranges) == 1:  # OBX-7; two ranges (sex unknown) go to the NTE
            rng = interpretation.ranges[0]
            fields[6] = f"{rng.low:g}-{rng.high:g}"
        if interpretation.flag is not None:
            fields[7] = interpretation.flag.value  # OBX-8: N, L, H (table 0078)
    if value.method is not None:  # OBX-17 observation method
        fields[16] = ce(value.method)
    else:
        fields[16] = f"^{escape(value.method_text)}"
    return Segment("OBX", fields)


def _value_notes(value: ReportedValue, source: SourceLoop) -> list[str]:
    notes = [f"{value.label}: {value.text}. Method: {value.method_text}."]
    if value.algorithm is not None:
        notes.append(f"Algorithm: {value.algorithm.display_name} v{value.algorithm.version}.")
    interpretation = interpret(value, source.patient_sex)
    if interpretation is not None:
        notes.append(f"Interpretation: {interpretation.text}.")
    return notes


def _withheld_obx(
    set_id: int, sub_id: str, source: SourceLoop, value: WithheldValue, when: dt.datetime
) -> Segment:
    """No OBX-2 and no OBX-5 (there is no value), status X; the unit and method say what
    would have been measured."""
    local = (value.key, value.label)
    fields = _obx_fields(
        set_id, "", value.concept, sub_id, source, RESULT_CANNOT_BE_OBTAINED, when, local
    )
    fields[5] = ce(value.unit)
    if value.method is not None:
        fields[16] = ce(value.method)
    return Segment("OBX", fields)
