"""HL7 v2.5.1 data types as this node writes them: escaping, coded elements (CE), person
names (XPN, CNN), date-times (DTM) and free text as display-line repetitions, and one segment.

Why a module of its own: every value of an ORU^R01 (``reporting.hl7_oru``) goes through these,
and they are where a patient name like ``O'Neil|Smith^Jr`` is kept from shifting a field.
"""

from __future__ import annotations

import datetime as dt
import re
import textwrap
from dataclasses import dataclass

from reporting.codes import PRIVATE_SCHEME, ClinicalCode
from reporting.types import SourceLoop

LINE_WIDTH = 80  # free text (OBX TX, NTE) is sent as display lines of at most this width
MAX_VALUE_CHARS = 199  # one escaped repetition of OBX-5 / NTE-3 (see text_lines)
SAFE_CHUNK_CHARS = MAX_VALUE_CHARS // 3  # an escape sequence is 3 characters for 1

# DICOM coding scheme designator -> HL7 v2 coding system (table 0396); "99zzz" is a local
# system in both, so this node's private scheme keeps its name.
V2_CODING_SYSTEMS: dict[str, str] = {
    "LN": "LN",
    "SCT": "SCT",
    "DCM": "DCM",
    "UCUM": "UCUM",
    PRIVATE_SCHEME: PRIVATE_SCHEME,
}

_ESCAPES = (("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\"))
_UNESCAPES = {"F": "|", "S": "^", "T": "&", "R": "~", "E": "\\", ".br": "\n"}
_ESCAPE_SEQUENCE = re.compile(r"\\(F|S|T|R|E|\.br)\\")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def escape(text: str) -> str:
    """``text`` as one HL7 value: the escape character first (``\\E\\``), then the field,
    component, subcomponent and repetition separators; control characters (a CR would end the
    segment, MLLP's frame bytes would end the message) become spaces. Line breaks of free
    text are repetitions (``text_lines``), never escaped into one value."""
    out = text.replace("\\", "\\E\\")
    for char, sequence in _ESCAPES:
        out = out.replace(char, sequence)
    return _CONTROL.sub(" ", out)


def unescape(value: str) -> str:
    """The inverse of ``escape`` (and FT's ``\\.br\\`` line break): what a receiver shows."""
    return _ESCAPE_SEQUENCE.sub(lambda m: _UNESCAPES[m.group(1)], value)


@dataclass(frozen=True)
class Segment:
    """One segment: its name and its fields, already encoded; ``er7`` drops trailing empties."""

    name: str
    fields: list[str]  # already encoded (escaped, components joined), field 1 first

    def er7(self) -> str:
        fields = list(self.fields)
        while fields and not fields[-1]:
            fields.pop()
        return "|".join([self.name, *fields])


def ce(code: ClinicalCode, local: tuple[str, str] | None = None) -> str:
    """CE: identifier^text^coding system, and this node's key and label as the alternate
    (local) code when given."""
    system = V2_CODING_SYSTEMS.get(code.scheme)
    if system is None:
        raise ValueError(f"{code.scheme} codes have no HL7 v2 coding system ({code.value})")
    parts = [escape(code.value), escape(code.meaning), system]
    if local is not None:
        parts += [escape(local[0]), escape(local[1]), PRIVATE_SCHEME]
    return "^".join(parts)


def pn_parts(pn: str) -> list[str]:
    """DICOM PN (alphabetic group): family, given, middle, prefix, suffix."""
    parts = (pn.split("=")[0].split("^") + [""] * 5)[:5]
    return [p.strip() for p in parts]


def xpn(pn: str) -> str:
    """XPN: family^given^further given^suffix^prefix (v2 puts the suffix before the prefix,
    DICOM the other way round)."""
    family, given, middle, prefix, suffix = pn_parts(pn)
    return "^".join(escape(p) for p in (family, given, middle, suffix, prefix)).rstrip("^")


def cnn(pn: str) -> str:
    """CNN as NDL.1's subcomponents: id&family&given&further given&suffix&prefix."""
    family, given, middle, prefix, suffix = pn_parts(pn)
    parts = ["", family, given, middle, suffix, prefix]
    return "&".join(escape(p) for p in parts).rstrip("&")


def aware(when: dt.datetime) -> dt.datetime:
    return when.astimezone() if when.tzinfo is None else when


def dtm(when: dt.datetime) -> str:
    """DTM to the second with the zone offset (YYYYMMDDHHMMSS+ZZZZ)."""
    return aware(when).strftime("%Y%m%d%H%M%S%z")


def study_dtm(source: SourceLoop) -> str:
    """The study's date-time; DICOM gives local time without a zone, read in the node's (as
    ``reporting.fhir`` does). Empty when the header has no study date."""
    study = source.study_datetime
    return "" if study is None else dtm(study)


def text_lines(text: str) -> list[str]:
    """Display lines of free text, each one repetition (in TX and FT a repetition is a hard
    line break): the text's own lines (blank ones kept), wrapped at word boundaries to
    ``LINE_WIDTH`` characters, as v2 results text is shown line by line. A line's escaped
    form stays within ``MAX_VALUE_CHARS`` (hl7apy, as many engines, holds OBX-5 and NTE-3
    values to the 199 characters of ST whatever OBX-2 says)."""
    lines: list[str] = []
    for line in text.replace("\r\n", "\n").split("\n"):
        wrapped = textwrap.wrap(line, LINE_WIDTH, break_on_hyphens=False) or [""]
        for piece in wrapped:
            while len(escape(piece)) > MAX_VALUE_CHARS:  # only with many delimiters
                lines.append(piece[:SAFE_CHUNK_CHARS])
                piece = piece[SAFE_CHUNK_CHARS:]
            lines.append(piece)
    return lines


def repetitions(text: str) -> str:
    return "~".join(escape(line) for line in text_lines(text))
