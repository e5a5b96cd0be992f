"""The mutation engine of ``echo-agent bench fuzz``: small valid phantom objects and seeded
mutations of them, as encoded bytes ready to travel in a C-STORE.

The seeds are the phantom generator's own Ultrasound objects, made small (3 frames of 24 x 32
pixels) in each pixel encoding it writes (JPEG Baseline YBR, RLE RGB, native RGB and
MONOCHROME2, the MONOCHROME2 loop in Implicit VR, a single-frame still), and a Comprehensive SR
(undefined-length sequences) and an Encapsulated PDF of the same study. Each case is one
mutation of one seed, made on the encoded dataset with an index of where every element, item,
delimiter and fragment sits (``index_elements``), so the bytes that travel are exactly the
broken ones: pydicom would refuse to write most of them.

Families: element length fields; VRs; truncation; undefined-length sequences and items cut
short, nesting; encapsulated fragments truncated, oversized, without item tags or delimiter,
Basic Offset Tables that lie, frame headers that contradict Rows and Columns; UIDs empty,
invalid, oversized or other than the request's; Rows, Columns, Number of Frames, Bits
Allocated, Samples per Pixel inconsistent with the pixel data; transfer syntaxes that lie about
the bytes; stray command, File Meta and item tags, order, trailing bytes, flipped bits; odd text
and number values. Each mutant says what the node must do with it where that is certain
(``expect``): refuse (a value running past the end, an invalid UID), accept (a private element,
a frame split over two fragments), or either.

Case ``index`` of seed ``seed`` is a pure function of both (``Mutator.case``), so a case that a
run reports is replayed alone.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_file_meta_info
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid

from pacs_agent.dicom import contexts

DEFAULT_SEED = 1
# every GOOD_EVERY-th case is an unmodified instance that must be stored
GOOD_EVERY = 5
# the small phantom objects: a few frames of a few pixels, so thousands of cases run in minutes
SEED_FRAMES = 3
SEED_ROWS = 24
SEED_COLUMNS = 32

ACCEPT = "accept"
REFUSE = "refuse"
EITHER = "either"

# one mutation family per case in turn (see the module docstring)
# fmt: off
FAMILIES = (
    "length", "vr", "truncate", "sequence", "fragments", "uid", "pixel_size", "syntax_lie",
    "structure", "values",
)
# fmt: on

_TAG = struct.Struct("<HH")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
UNDEFINED_LENGTH = 0xFFFFFFFF
ITEM_TAG = 0xFFFEE000
ITEM_DELIMITER_TAG = 0xFFFEE00D
SEQUENCE_DELIMITER_TAG = 0xFFFEE0DD
PIXEL_DATA_TAG = 0x7FE00010
SOP_INSTANCE_UID_TAG = 0x00080018
SERIES_INSTANCE_UID_TAG = 0x0020000E
LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
# fmt: off
SHORT_VRS = (
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"PN",
    b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US",
)
# fmt: on
BAD_VRS = (b"\x00\x00", b"zz", b"A1", b"  ", b"\xff\xff", b"Ob")

UID_TAGS = {
    "SOPClassUID": 0x00080016,
    "SOPInstanceUID": 0x00080018,
    "StudyInstanceUID": 0x0020000D,
    "SeriesInstanceUID": 0x0020000E,
}
# values no UI element may hold (PS3.5 9.1): empty, letters, empty components, over 64 chars
INVALID_UIDS = (
    b"",
    b"abc",
    b"1..2",
    b"1.2.",
    b".1.2",
    b"1.2.3a",
    b"1.2 3",
    b"1." + b"2" * 63,
    b"1.2." + b"3" * 200,
    b"1.2.\xff\xfe",
)
US_ATTRIBUTES = {
    "Rows": 0x00280010,
    "Columns": 0x00280011,
    "SamplesPerPixel": 0x00280002,
    "BitsAllocated": 0x00280100,
    "BitsStored": 0x00280101,
    "HighBit": 0x00280102,
    "PixelRepresentation": 0x00280103,
    "PlanarConfiguration": 0x00280006,
}
NUMBER_OF_FRAMES_TAG = 0x00280008
PHOTOMETRIC_TAG = 0x00280004
# fmt: off
IS_VALUES = (
    b"0 ", b"-1", b"abc ", b"1e3 ", b"", b"99999999999999999999", b"2\\3 ", b" 3", b"3.0 ",
    b"+3", b"2147483648", b"\x00\x00",
)
# fmt: on
REQUIRED_IMAGE_TAGS = {
    "NumberOfFrames": NUMBER_OF_FRAMES_TAG,
    "Rows": 0x00280010,
    "Columns": 0x00280011,
    "SamplesPerPixel": 0x00280002,
    "BitsAllocated": 0x00280100,
    "PixelData": PIXEL_DATA_TAG,
}


# --- the objects -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SeedObject:
    """A small valid object: its encoded dataset (no File Meta) in ``syntax``."""

    name: str
    sop_class: str
    syntax: str
    data: bytes

    @property
    def implicit(self) -> bool:
        return self.syntax == contexts.IMPLICIT_VR_LITTLE_ENDIAN

    @property
    def encapsulated(self) -> bool:
        return self.syntax in contexts.ENCAPSULATED_TRANSFER_SYNTAXES

    @property
    def image(self) -> bool:
        return self.sop_class in contexts.IMAGE_SOP_CLASSES


@dataclass(frozen=True)
class Mutant:
    """One case: the bytes that travel, the syntax and UIDs the request names, and what the
    node must do with it when that is certain (``expect``: accept, refuse or either)."""

    index: int
    family: str
    detail: str
    seed: str
    data: bytes
    syntax: str
    sop_class: str
    sop_instance: str
    expect: str

    @property
    def good(self) -> bool:
        return self.family == "good"


def make_seeds(folder: Path, seed: int = DEFAULT_SEED) -> list[SeedObject]:
    """The phantom generator's Ultrasound objects, small (JPEG YBR, RLE RGB, native RGB and
    MONOCHROME2 loops, the MONOCHROME2 loop in Implicit VR, a single-frame still), and an SR
    and an Encapsulated PDF of the same study."""

    from inference.phantom.dicom_writer import (
        JPEG_YBR,
        RAW_MONO,
        RAW_RGB,
        RLE_RGB,
        SeriesInfo,
        UltrasoundRegion,
        write_ultrasound,
    )
    from inference.phantom.identity import sample_identity

    rng = np.random.default_rng(seed)
    identity = sample_identity(rng, seed, 0)
    folder.mkdir(parents=True, exist_ok=True)
    region = UltrasoundRegion(0, 0, SEED_COLUMNS - 1, SEED_ROWS - 1, 0.05, SEED_COLUMNS / 2, 0.0)
    grid = np.indices((SEED_FRAMES, SEED_ROWS, SEED_COLUMNS)).sum(axis=0)
    grey = ((grid * 9 + rng.integers(0, 40, grid.shape)) % 256).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=3)
    seeds: list[SeedObject] = []
    plans = [
        ("us_jpeg_ybr", JPEG_YBR, rgb, 35.0),
        ("us_rle_rgb", RLE_RGB, rgb, 35.0),
        ("us_native_rgb", RAW_RGB, rgb, 35.0),
        ("us_native_mono", RAW_MONO, grey, 35.0),
        ("us_still_mono", RAW_MONO, grey[:1], None),
    ]
    for number, (name, encoding, frames, frame_time_ms) in enumerate(plans, start=1):
        info = SeriesInfo(
            identity=identity,
            series_uid=identity.uid("fuzz-series", name),
            sop_uid=identity.uid("fuzz-seed", name),
            series_number=number,
            series_description="A4C" if frame_time_ms else "still",
            seconds_after_study=number * 10,
            regions=(region,),
            frame_time_ms=frame_time_ms,
            heart_rate_bpm=72 if frame_time_ms else None,
        )
        path = write_ultrasound(folder / f"{name}.dcm", frames, info, encoding)
        seeds.append(_seed_from_file(name, path))
    mono = dcmread(folder / "us_native_mono.dcm")
    seeds.append(
        SeedObject(
            "us_native_mono_implicit",
            str(mono.SOPClassUID),
            contexts.IMPLICIT_VR_LITTLE_ENDIAN,
            _encode(mono, implicit=True),
        )
    )
    for name, build in (("sr", _sr_seed), ("pdf", _pdf_seed)):
        uids = [generate_uid(entropy_srcs=["echo-agent-fuzz", str(seed), name, r]) for r in "is"]
        seeds.append(build(mono, *uids))
    return seeds


def _seed_from_file(name: str, path: Path) -> SeedObject:
    meta = read_file_meta_info(path)
    raw = path.read_bytes()
    (group_length,) = _U32.unpack_from(raw, 140)  # (0002,0000) right after the 128+4 preamble
    return SeedObject(
        name,
        str(meta.MediaStorageSOPClassUID),
        str(meta.TransferSyntaxUID),
        raw[144 + group_length :],
    )


def _encode(ds: Dataset, *, implicit: bool) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = implicit
    write_dataset(buffer, ds)
    return buffer.getvalue()


def _patient_and_study(source: Dataset) -> Dataset:
    ds = Dataset()
    for keyword in (
        "SpecificCharacterSet",
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "ReferringPhysicianName",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyID",
    ):
        if keyword in source:
            setattr(ds, keyword, source[keyword].value)
    return ds


def _sr_seed(source: Dataset, sop_uid: str, series_uid: str) -> SeedObject:
    """A Comprehensive SR whose content tree nests sequences of undefined length, the form
    scanners' measurement SRs often travel in."""

    ds = _patient_and_study(source)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.33"
    ds.SOPInstanceUID = sop_uid
    ds.Modality = "SR"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 90
    ds.InstanceNumber = 1
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag = "PARTIAL"
    ds.VerificationFlag = "UNVERIFIED"
    ds.ConceptNameCodeSequence = [_code("125200", "DCM", "Adult Echocardiography Procedure")]

    def text_item(value: str) -> Dataset:
        item = Dataset()
        item.RelationshipType = "CONTAINS"
        item.ValueType = "TEXT"
        item.ConceptNameCodeSequence = [_code("121071", "DCM", "Finding")]
        item.TextValue = value
        item.is_undefined_length_sequence_item = True
        return item

    group = Dataset()
    group.RelationshipType = "CONTAINS"
    group.ValueType = "CONTAINER"
    group.ContinuityOfContent = "SEPARATE"
    group.ConceptNameCodeSequence = [_code("125007", "DCM", "Measurement Group")]
    group.ContentSequence = DicomSequence([text_item("LV normal"), text_item("EF 60 %")])
    group["ContentSequence"].is_undefined_length = True
    group.is_undefined_length_sequence_item = True
    ds.ContentSequence = DicomSequence([text_item("Echo report"), group])
    ds["ContentSequence"].is_undefined_length = True
    return SeedObject(
        "sr_comprehensive",
        ds.SOPClassUID,
        contexts.EXPLICIT_VR_LITTLE_ENDIAN,
        _encode(ds, implicit=False),
    )


def _pdf_seed(source: Dataset, sop_uid: str, series_uid: str) -> SeedObject:
    ds = _patient_and_study(source)
    ds.SOPClassUID = contexts.ENCAPSULATED_PDF
    ds.SOPInstanceUID = sop_uid
    ds.Modality = "DOC"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 91
    ds.InstanceNumber = 1
    ds.ConceptNameCodeSequence = [_code("18748-4", "LN", "Diagnostic imaging report")]
    ds.DocumentTitle = "Echo report"
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    pdf = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
    ds.EncapsulatedDocument = pdf + b"\x00" * (len(pdf) % 2)
    return SeedObject(
        "pdf_document",
        ds.SOPClassUID,
        contexts.EXPLICIT_VR_LITTLE_ENDIAN,
        _encode(ds, implicit=False),
    )


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    code = Dataset()
    code.CodeValue = value
    code.CodingSchemeDesignator = scheme
    code.CodeMeaning = meaning
    return code


# --- the encoded dataset, element by element -------------------------------------------------


@dataclass(frozen=True)
class Element:
    """Where one element (or item, delimiter, fragment) sits in an encoded dataset.

    ``stop`` is the offset after it, delimiters included; ``depth`` 0 is the top level.
    """

    tag: int
    vr: bytes
    start: int
    length_at: int
    length_bytes: int
    length: int
    value_at: int
    stop: int
    depth: int
    kind: str  # element, sequence, item, item_end, seq_end, pixel_encapsulated, fragment

    @property
    def top_level(self) -> bool:
        return self.depth == 0


def index_elements(data: bytes, implicit: bool) -> list[Element]:
    """Every element of a well-formed encoded dataset, items and fragments included, in order."""
    out: list[Element] = []
    _index_dataset(data, 0, len(data), implicit, 0, out, in_item=False)
    return out


def _header(data: bytes, pos: int, implicit: bool) -> tuple[int, bytes, int, int, int, int]:
    group, number = _TAG.unpack_from(data, pos)
    tag = group << 16 | number
    if implicit or group == 0xFFFE:
        return tag, b"", pos + 4, 4, _U32.unpack_from(data, pos + 4)[0], pos + 8
    vr = data[pos + 4 : pos + 6]
    if vr in LONG_VRS:
        return tag, vr, pos + 8, 4, _U32.unpack_from(data, pos + 8)[0], pos + 12
    return tag, vr, pos + 6, 2, _U16.unpack_from(data, pos + 6)[0], pos + 8


def _is_sequence(tag: int, vr: bytes, length: int, implicit: bool) -> bool:
    if not implicit:
        return vr == b"SQ"
    if length == UNDEFINED_LENGTH:
        return True

    try:
        return dictionary_VR(tag) == "SQ"
    except KeyError:
        return False


def _index_dataset(
    data: bytes,
    pos: int,
    end: int,
    implicit: bool,
    depth: int,
    out: list[Element],
    *,
    in_item: bool,
) -> int:
    while pos < end:
        tag, vr, length_at, length_bytes, length, value_at = _header(data, pos, implicit)
        if in_item and tag == ITEM_DELIMITER_TAG:
            out.append(
                Element(tag, b"", pos, length_at, 4, length, value_at, value_at, depth, "item_end")
            )
            return value_at
        slot = len(out)
        if tag == PIXEL_DATA_TAG and length == UNDEFINED_LENGTH:
            stop = _index_items(data, value_at, implicit, depth + 1, out, fragments=True)
            kind = "pixel_encapsulated"
        elif _is_sequence(tag, vr, length, implicit):
            if length == UNDEFINED_LENGTH:
                stop = _index_items(data, value_at, implicit, depth + 1, out, fragments=False)
            else:
                stop = value_at + length
                _index_items(data, value_at, implicit, depth + 1, out, fragments=False, end=stop)
            kind = "sequence"
        else:
            stop = value_at + length
            kind = "element"
        element = Element(
            tag, vr, pos, length_at, length_bytes, length, value_at, stop, depth, kind
        )
        out.insert(slot, element)
        pos = stop
    return pos


def _index_items(
    data: bytes,
    pos: int,
    implicit: bool,
    depth: int,
    out: list[Element],
    *,
    fragments: bool,
    end: int | None = None,
) -> int:
    limit = len(data) if end is None else end
    while pos < limit:
        tag, _, length_at, _, length, value_at = _header(data, pos, True)
        if tag == SEQUENCE_DELIMITER_TAG:
            out.append(
                Element(tag, b"", pos, length_at, 4, length, value_at, value_at, depth, "seq_end")
            )
            return value_at
        slot = len(out)
        if fragments:
            stop, kind = value_at + length, "fragment"
        elif length == UNDEFINED_LENGTH:
            stop = _index_dataset(data, value_at, len(data), implicit, depth, out, in_item=True)
            kind = "item"
        else:
            stop, kind = value_at + length, "item"
            _index_dataset(data, value_at, stop, implicit, depth, out, in_item=False)
        out.insert(slot, Element(tag, b"", pos, length_at, 4, length, value_at, stop, depth, kind))
        pos = stop
    return pos


def encode_element(tag: int, vr: bytes, value: bytes, implicit: bool) -> bytes:
    """One element's bytes; the length field wraps for a short-VR value over 64 KiB (which
    is then a mutation of its own)."""
    head = _TAG.pack(tag >> 16, tag & 0xFFFF)
    if implicit:
        return head + _U32.pack(len(value)) + value
    if vr in LONG_VRS:
        return head + vr + b"\x00\x00" + _U32.pack(len(value)) + value
    return head + vr + _U16.pack(len(value) & 0xFFFF) + value


def _tag_text(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _splice(data: bytes, start: int, stop: int, new: bytes = b"") -> bytes:
    return data[:start] + new + data[stop:]


def _with_length(data: bytes, element: Element, length: int) -> bytes:
    packer = _U32 if element.length_bytes == 4 else _U16
    mask = 0xFFFFFFFF if element.length_bytes == 4 else 0xFFFF
    start = element.length_at
    return _splice(data, start, start + element.length_bytes, packer.pack(length & mask))


def _top(elements: Sequence[Element], tag: int) -> Element | None:
    return next((e for e in elements if e.top_level and e.tag == tag), None)


def _replace_value(data: bytes, element: Element, value: bytes, implicit: bool) -> bytes:
    vr = element.vr or _dictionary_vr(element.tag)
    return _splice(
        data, element.start, element.stop, encode_element(element.tag, vr, value, implicit)
    )


def _dictionary_vr(tag: int) -> bytes:
    try:
        return dictionary_VR(tag).split(" ")[0].encode()
    except KeyError:
        return b"UN"


def _insert_top(data: bytes, elements: Sequence[Element], tag: int, raw: bytes) -> bytes:
    """``raw`` at the top-level position where ``tag`` belongs (before the first larger tag)."""
    after = next((e for e in elements if e.top_level and e.tag > tag), None)
    at = after.start if after is not None else len(data)
    return _splice(data, at, at, raw)


def _uid_bytes(uid: str) -> bytes:
    raw = uid.encode("ascii")
    return raw + b"\x00" * (len(raw) % 2)


def _even(text: bytes, pad: bytes = b" ") -> bytes:
    return text + pad * (len(text) % 2)


# --- the mutations ---------------------------------------------------------------------------


@dataclass
class _Draft:
    """A mutant being built: bytes and request fields; ``expect`` as far as known."""

    data: bytes
    syntax: str
    sop_class: str
    sop_instance: str
    detail: str = ""
    expect: str = EITHER


MutationFn = Callable[[random.Random, SeedObject, _Draft], None]


class Mutator:
    """Builds case ``index`` of a run from the seeds: a pure function of (seed, index)."""

    def __init__(self, seeds: Sequence[SeedObject], seed: int) -> None:
        self.seeds = list(seeds)
        self.seed = seed
        self._families: dict[str, MutationFn] = {
            "length": _mutate_length,
            "vr": _mutate_vr,
            "truncate": _mutate_truncate,
            "sequence": _mutate_sequence,
            "fragments": _mutate_fragments,
            "uid": _mutate_uid,
            "pixel_size": _mutate_pixel_size,
            "syntax_lie": _mutate_syntax,
            "structure": _mutate_structure,
            "values": _mutate_values,
        }

    def case(self, index: int, good_every: int = GOOD_EVERY) -> Mutant:
        rng = random.Random(f"echo-agent-fuzz:{self.seed}:{index}")
        entropy = ["echo-agent-fuzz", str(self.seed), str(index)]
        sop_uid = generate_uid(entropy_srcs=entropy)
        series_uid = generate_uid(entropy_srcs=[*entropy, "series"])
        if good_every and index % good_every == 0:
            seed = self.seeds[(index // good_every) % len(self.seeds)]
            data = self.fresh(seed, sop_uid, series_uid)
            return Mutant(
                index=index, family="good", detail="unmodified", seed=seed.name, data=data,
                syntax=seed.syntax, sop_class=seed.sop_class, sop_instance=sop_uid, expect=ACCEPT,
            )  # fmt: skip
        # the families in turn over the mutants (the unmodified cases left out of the count)
        mutant_number = index - (index // good_every + 1 if good_every else 0)
        family = FAMILIES[mutant_number % len(FAMILIES)]
        seed = rng.choice(self._seeds_for(family))
        draft = _Draft(self.fresh(seed, sop_uid, series_uid), seed.syntax, seed.sop_class, sop_uid)
        self._families[family](rng, seed, draft)
        return Mutant(
            index=index, family=family, detail=draft.detail, seed=seed.name, data=draft.data,
            syntax=draft.syntax, sop_class=draft.sop_class, sop_instance=draft.sop_instance,
            expect=draft.expect,
        )  # fmt: skip

    def fresh(self, seed: SeedObject, sop_uid: str, series_uid: str) -> bytes:
        """The seed as a new instance in a series of its own: a mutant that moves its series
        to another study (a valid Study Instance UID of its own) must not take the next
        unmodified instances' series with it, which the node would then quarantine."""
        data = seed.data
        for tag, uid in ((SERIES_INSTANCE_UID_TAG, series_uid), (SOP_INSTANCE_UID_TAG, sop_uid)):
            element = _top(index_elements(data, seed.implicit), tag)
            assert element is not None
            data = _replace_value(data, element, _uid_bytes(uid), seed.implicit)
        return data

    def _seeds_for(self, family: str) -> list[SeedObject]:
        if family == "vr":
            return [s for s in self.seeds if not s.implicit]
        if family == "fragments":
            return [s for s in self.seeds if s.encapsulated]
        if family == "pixel_size":
            return [s for s in self.seeds if s.image]
        return self.seeds  # every seed has a sequence (regions, codes, SR content)


def _elements(seed: SeedObject, draft: _Draft) -> list[Element]:
    return index_elements(draft.data, seed.implicit)


def _mutate_length(rng: random.Random, seed: SeedObject, d: _Draft) -> None:
    elements = _elements(seed, d)
    target = rng.choice(elements)
    remaining = len(d.data) - target.value_at
    choices = [
        0,
        target.length + 1,
        target.length - 1,
        target.length + 2,
        target.length * 2,
        rng.getrandbits(32),
        UNDEFINED_LENGTH,
        UNDEFINED_LENGTH - 1,
        remaining + 1,
        remaining - 1,
        0x7FFFFFFF,
    ]
    if target.length == UNDEFINED_LENGTH:
        choices += [0, 8, remaining, remaining - 8]
    length = rng.choice(choices) & (0xFFFFFFFF if target.length_bytes == 4 else 0xFFFF)
    if length == target.length:
        length = (length + 3) & (0xFFFFFFFF if target.length_bytes == 4 else 0xFFFF)
    d.data = _with_length(d.data, target, length)
    d.detail = (
        f"{target.kind} {_tag_text(target.tag)} depth {target.depth}: "
        f"length {target.length} -> {length}"
    )
    top_value = target.top_level and target.kind == "element"
    if top_value and length != UNDEFINED_LENGTH and length > remaining:
        d.expect = REFUSE  # a top-level value running past the end of the dataset


def _mutate_vr(rng: random.Random, seed: SeedObject, d: _Draft) -> None:
    elements = [e for e in _elements(seed, d) if e.vr]
    target = rng.choice(elements)
    pool = rng.choice([SHORT_VRS, tuple(sorted(LONG_VRS)), BAD_VRS])  # sorted: no hash order
    vr = rng.choice([v for v in pool if v != target.vr])
    d.data = _splice(d.data, target.start + 4, target.start + 6, vr)
    d.detail = f"{_tag_text(target.tag)} depth {target.depth}: VR {target.vr!r} -> {vr!r}"
    if vr in BAD_VRS and target.top_level:
        d.expect = REFUSE


def _mutate_truncate(rng: random.Random, seed: SeedObject, d: _Draft) -> None:
    elements = _elements(seed, d)
    boundaries = {e.start for e in elements if e.top_level} | {len(d.data)}
    how = rng.choice(["anywhere", "anywhere", "last_bytes", "boundary", "in_header"])
    if how == "last_bytes":
        cut = len(d.data) - rng.randint(1, 16)
    elif how == "boundary":
        cut = rng.choice(sorted(boundaries - {0, len(d.data)}))
    elif how == "in_header":
        target = rng.choice(elements)
        cut = target.start + rng.randint(1, max(1, target.value_at - target.start - 1))
    else:
        cut = rng.randint(1, len(d.data) - 1)
    d.detail = f"cut at byte {cut} ({how}) of {len(d.data)}"
    d.data = d.data[:cut]
    if cut not in boundaries:
        d.expect = REFUSE


def _mutate_sequence(rng: random.Random, seed: SeedObject, d: _Draft) -> None:
    elements = _elements(seed, d)
    undefined = [e for e in elements if e.kind == "sequence" and e.length == UNDEFINED_LENGTH]
    defined = [e for e in elements if e.kind == "sequence" and e.length != UNDEFINED_LENGTH]
    delimiters = [
        e
        for e in elements
        if e.kind in ("seq_end", "item_end") and not _in_defined_parent(e, elements)
    ]
    items = [e for e in elements if e.kind == "item"]
    options = ["deep_undefined", "deep_defined"]
    if delimiters:
        options += ["drop_delimiter", "drop_delimiter"]
    if undefined:
        options += ["cut_after_item"]
    if defined:
        options += ["defined_to_undefined", "defined_length_off"]
    if items:
        options += ["item_length_off", "item_tag_broken"]
    how = rng.choice(options)
    if how == "drop_delimiter":
        target = rng.choice(delimiters)
        d.data = _splice(d.data, target.start, target.stop)
        d.detail = f"{target.kind} at byte {target.start} removed"
        d.expect = REFUSE
    elif how == "cut_after_item":
        target = rng.choice([e for e in items if _inside_any(e, undefined)] or items)
        d.data = d.data[: target.stop]
        d.detail = f"dataset ends after the item at byte {target.start}"
        d.expect = REFUSE
    elif how == "defined_to_undefined":
        target = rng.choice(defined)
        d.data = _with_length(d.data, target, UNDEFINED_LENGTH)
        d.detail = (
            f"sequence {_tag_text(target.tag)} of {target.length} bytes marked undefined "
            "length, no delimiter"
        )
        d.expect = REFUSE if target.top_level else EITHER
    elif how == "defined_length_off":
        target = rng.choice(defined)
        delta = rng.choice([-9, -8, -4, -1, 1, 4, 8, 9])
        d.data = _with_length(d.data, target, max(0, target.length + delta))
        d.detail = f"sequence {_tag_text(target.tag)} length {target.length} {delta:+d}"
    elif how == "item_length_off":
        target = rng.choice(items)
        delta = rng.choice([-8, -2, 2, 8, 1000])
        if target.length != UNDEFINED_LENGTH and rng.random() < 0.3:
            new = UNDEFINED_LENGTH
        else:
            new = (target.length + delta) & 0xFFFFFFFF
        d.data = _with_length(d.data, target, new)
        d.detail = f"item at byte {target.start}: length {target.length} -> {new}"
    elif how == "item_tag_broken":
        target = rng.choice(items)
        tag = rng.choice([0xFFFEE001, 0xFFFFE000, 0x00080016, 0xFFFEE0DD, 0xFFFEE00D])
        d.data = _splice(d.data, target.start, target.start + 4, _TAG.pack(tag >> 16, tag & 0xFFFF))
        d.detail = f"item tag at byte {target.start} -> ({tag >> 16:04X},{tag & 0xFFFF:04X})"
        if not _in_defined_parent(target, elements) and tag != 0xFFFEE0DD:
            d.expect = REFUSE
    else:
        levels = rng.choice([2, 31, 33, 40, 64, 300, 3000])
        undefined_lengths = how == "deep_undefined"
        nested = _nested_sequence(levels, undefined_lengths, seed.implicit)
        d.data = _insert_top(d.data, elements, 0x00081140, nested)
        d.detail = f"Referenced Image Sequence nested {levels} levels ({how})"
        if undefined_lengths and levels > 40:
            d.expect = REFUSE


def _in_defined_parent(target: Element, elements: Sequence[Element]) -> bool:
    return any(
        e.kind in ("sequence", "item")
        and e.length != UNDEFINED_LENGTH
        and e.value_at <= target.start < e.stop
        for e in elements
    )


def _inside_any(target: Element, parents: Sequence[Element]) -> bool:
    return any(p.value_at <= target.start < p.stop for p in parents)


def _nested_sequence(levels: int, undefined: bool, implicit: bool) -> bytes:
    """(0008,1140) holding one item holding (0008,1140) ... ``levels`` deep."""
    inner = encode_element(0x00081155, b"UI", _uid_bytes("1.2.3.4"), implicit)
    for _ in range(levels):
        if undefined:
            item = _TAG.pack(0xFFFE, 0xE000) + _U32.pack(UNDEFINED_LENGTH) + inner
            item += _TAG.pack(0xFFFE, 0xE00D) + _U32.pack(0)
            seq_head = _TAG.pack(0x0008, 0x1140)
            seq_head += (
                _U32.pack(UNDEFINED_LENGTH)
                if implicit
                else b"SQ\x00\x00" + _U32.pack(UNDEFINED_LENGTH)
            )
            inner = seq_head + item + _TAG.pack(0xFFFE, 0xE0DD) + _U32.pack(0)
        else:
            item = _TAG.pack(0xFFFE, 0xE000) + _U32.pack(len(inner)) + inner
            inner = encode_element(0x00081140, b"SQ", item, implicit)
    return inner


def _mutate_fragments(rng: random.Random, seed: SeedObject, d: _Draft) -> None:
    elements = _elements(seed, d)
    fragments = [e for e in elements if e.kind == "fragment"]
    table, frames = fragments[0], fragments[1:]
    delimiter = next(e for e in elements if e.kind == "seq_end" and e.start >= table.start)
    how = rng.choice(
        [
            "truncate_last",
            "oversize_last",
            "oversize",
            "undersize",
            "missing_item_tag",
            "drop_delimiter",
            "drop_offset_table",
            "short_offset_table",
            "long_offset_table",
            "drop_frame",
            "extra_frame",
            "split_frame",
            "empty_fragment",
            "odd_fragment",
            "undefined_fragment",
            "garbage_frame",
            "frame_header_size",
            "trailing_after_delimiter",
        ]
    )
    last = frames[-1]
    d.detail = how
    if how == "truncate_last":
        cut = rng.randint(last.value_at, last.stop - 1)
        d.data = d.data[:cut]
        d.expect = REFUSE
    elif how == "oversize_last":
        d.data = _with_length(d.data, last, last.length + rng.choice([1, 2, 8, 9, 10_000]))
        d.expect = REFUSE
    elif how in ("oversize", "undersize"):
        target = rng.choice(frames)
        delta = rng.choice([1, 2, 4, 8]) * (1 if how == "oversize" else -1)
        d.data = _with_length(d.data, target, max(0, target.length + delta))
        d.detail = f"{how} fragment at byte {target.start} by {delta:+d}"
    elif how == "missing_item_tag":
        target = rng.choice(fragments)
        tag = rng.choice([0x00000000, 0xFFFEE001, 0x7FE00010, 0xE000FFFE])
        d.data = _splice(d.data, target.start, target.start + 4, _TAG.pack(tag >> 16, tag & 0xFFFF))
        d.detail = f"item tag of fragment at byte {target.start} -> {tag:08X}"
        d.expect = REFUSE
    elif how == "drop_delimiter":
        d.data = _splice(d.data, delimiter.start, delimiter.stop)
        d.expect = REFUSE
    elif how == "drop_offset_table":
        d.data = _splice(d.data, table.start, table.stop)
        d.expect = REFUSE  # the first frame is taken for the table: a frame short
    elif how in ("short_offset_table", "long_offset_table"):
        count = len(frames) - 1 if how == "short_offset_table" else len(frames) + 2
        offsets = b"".join(_U32.pack(i * 100) for i in range(count))
        item = _TAG.pack(0xFFFE, 0xE000) + _U32.pack(len(offsets)) + offsets
        d.data = _splice(d.data, table.start, table.stop, item)
        if 0 < count < len(frames):
            d.expect = REFUSE
    elif how == "drop_frame":
        target = rng.choice(frames)
        d.data = _splice(d.data, target.start, target.stop)
        d.expect = REFUSE
    elif how == "extra_frame":
        target = rng.choice(frames)
        d.data = _splice(d.data, last.stop, last.stop, d.data[target.start : target.stop])
    elif how == "split_frame":
        target = rng.choice([f for f in frames if f.length >= 4])
        half = (target.length // 2) & ~1
        first = _TAG.pack(0xFFFE, 0xE000) + _U32.pack(half)
        first += d.data[target.value_at : target.value_at + half]
        second = _TAG.pack(0xFFFE, 0xE000) + _U32.pack(target.length - half)
        second += d.data[target.value_at + half : target.stop]
        d.data = _splice(d.data, target.start, target.stop, first + second)
        if seed.syntax != contexts.RLE_LOSSLESS:
            d.expect = ACCEPT  # PS3.5 A.4: a frame may span fragments
    elif how == "empty_fragment":
        at = rng.choice(frames).start
        d.data = _splice(d.data, at, at, _TAG.pack(0xFFFE, 0xE000) + _U32.pack(0))
    elif how == "odd_fragment":
        target = rng.choice(frames)
        d.data = _with_length(d.data, target, target.length - 1)
        d.data = _splice(d.data, target.stop - 1, target.stop)
    elif how == "undefined_fragment":
        target = rng.choice(frames)
        d.data = _with_length(d.data, target, UNDEFINED_LENGTH)
        d.expect = REFUSE
    elif how == "garbage_frame":
        target = rng.choice(frames)
        garbage = bytes(rng.getrandbits(8) for _ in range(target.length))
        d.data = _splice(d.data, target.value_at, target.stop, b"\x00" + garbage[1:])
        d.detail = f"frame at byte {target.start} overwritten with noise"
        # a JPEG frame without its start marker is a missing frame; an RLE header whose
        # segment count ends in a zero byte cannot name the 3 segments of an RGB frame
        d.expect = REFUSE
    elif how == "frame_header_size":
        target = rng.choice(frames)
        sof = d.data.find(b"\xff\xc0", target.value_at, target.stop)
        if seed.syntax == contexts.RLE_LOSSLESS or sof < 0:
            segments = rng.choice([0, 15, 255])
            d.data = _splice(d.data, target.value_at, target.value_at + 4, _U32.pack(segments))
            d.detail = f"RLE header of frame at byte {target.start}: {segments} segments"
            if seed.syntax == contexts.RLE_LOSSLESS:
                d.expect = REFUSE  # an RGB frame has 3 segments
        else:
            rows = rng.choice([1, SEED_ROWS + 1, 16000, 0])
            d.data = _splice(d.data, sof + 5, sof + 7, struct.pack(">H", rows))
            d.detail = f"JPEG SOF of frame at byte {target.start} declares {rows} rows"
            d.expect = REFUSE
    else:
        junk = bytes(rng.getrandbits(8) for _ in range(rng.choice([2, 7, 8, 20])))
        d.data = d.data + junk
        d.detail = f"{len(junk)} bytes of noise after the sequence delimiter"
        if len(junk) < 8:
            d.expect = REFUSE


def _mutate_uid(rng: random.Random, seed: SeedObject, d: _Draft) -> None:
    keyword = rng.choice(list(UID_TAGS))
    tag = UID_TAGS[keyword]
    elements = _elements(seed, d)
    target = _top(elements, tag)
    assert target is not None
    how = rng.choice(["invalid", "invalid", "invalid", "missing", "request_differs", "valid_odd"])
    if how == "missing":
        d.data = _splice(d.data, target.start, target.stop)
        d.detail = f"{keyword} removed"
        d.expect = REFUSE
    elif how == "request_differs":
        other = "1.2.840.99999." + str(rng.getrandbits(40))
        if keyword == "SOPClassUID":
            # a class the node takes in the seed's syntax (documents: native syntaxes only)
            classes = [contexts.US_MULTIFRAME, contexts.US_IMAGE]
            if not seed.encapsulated:
                classes.append(contexts.ENCAPSULATED_PDF)
            d.sop_class = rng.choice([c for c in classes if c != seed.sop_class])
            d.detail = f"request names SOP Class {d.sop_class}, the dataset {seed.sop_class}"
        else:
            d.sop_instance = other
            d.detail = "request names another SOP Instance UID than the dataset"
        d.expect = REFUSE
    elif how == "valid_odd":
        # legal: a UID of odd length padded with one NUL, or the longest one allowed (64);
        # made from the case's own UID, so no two cases share one
        uid = _odd_uid(d.sop_instance) if rng.random() < 0.5 else _longest_uid(d.sop_instance)
        d.data = _replace_value(d.data, target, _uid_bytes(uid), seed.implicit)
        if keyword == "SOPInstanceUID":
            d.sop_instance = uid
        d.detail = f"{keyword} = valid UID of {len(uid)} chars"
        if keyword == "SOPClassUID":
            d.expect = REFUSE  # no such storage class, and not the request's
    else:
        value = rng.choice(INVALID_UIDS)
        d.data = _replace_value(d.data, target, value, seed.implicit)
        d.detail = f"{keyword} = {value[:24]!r} ({len(value)} bytes)"
        if keyword == "SOPInstanceUID" and rng.random() < 0.5:
            d.sop_instance = value.decode("latin-1").rstrip("\x00")
            d.detail += ", the request names it too"
        d.expect = REFUSE


def _odd_uid(base: str) -> str:
    uid = base[:41].rstrip(".")
    if len(uid) % 2 == 0:
        uid = uid[:-1].rstrip(".")
    return uid


def _longest_uid(base: str) -> str:
    head = base[:59].rstrip(".")
    return head + "." + "9" * (63 - len(head))  # 64 characters


def _mutate_pixel_size(rng: random.Random, seed: SeedObject, d: _Draft) -> None:
    elements = _elements(seed, d)
    how = rng.choice(
        [
            "us_value",
            "us_value",
            "us_raw",
            "frames",
            "frames",
            "pixel_length",
            "photometric",
            "missing",
        ]
    )
    if how == "us_value":
        keyword = rng.choice(list(US_ATTRIBUTES))
        target = _top(elements, US_ATTRIBUTES[keyword])
        if target is None:
            keyword, target = "Rows", _top(elements, US_ATTRIBUTES["Rows"])
        assert target is not None
        old = _U16.unpack_from(d.data, target.value_at)[0]
        value = rng.choice([0, 1, old + 1, max(0, old - 1), old * 2, 3, 12, 16, 32, 255, 65535])
        if value == old:
            value = old + 1
        d.data = _replace_value(d.data, target, _U16.pack(value), seed.implicit)
        d.detail = f"{keyword} {old} -> {value}"
        d.expect = _expect_pixel_change(seed, keyword, old, value)
    elif how == "us_raw":
        keyword = rng.choice(["Rows", "Columns", "SamplesPerPixel", "BitsAllocated"])
        target = _top(elements, US_ATTRIBUTES[keyword])
        assert target is not None
        value = rng.choice([b"", b"\x08", b"\x08\x00\x08\x00", b"\x01\x00\x00"])
        d.data = _replace_value(d.data, target, value, seed.implicit)
        d.detail = f"{keyword} value of {len(value)} bytes"
        d.expect = REFUSE if len(value) in (0, 1) else EITHER
    elif how == "frames":
        target = _top(elements, NUMBER_OF_FRAMES_TAG)
        value = rng.choice((*IS_VALUES, b"1 ", b"2 ", b"4 ", b"1000"))
        if target is None:  # a still: give it a Number of Frames
            raw = encode_element(NUMBER_OF_FRAMES_TAG, b"IS", _even(value), seed.implicit)
            d.data = _insert_top(d.data, elements, NUMBER_OF_FRAMES_TAG, raw)
        else:
            d.data = _replace_value(d.data, target, _even(value), seed.implicit)
        d.detail = f"NumberOfFrames = {value!r}"
        if value.strip() in (b"0", b"-1", b"abc", b"1e3", b"99999999999999999999", b"1000"):
            d.expect = REFUSE
    elif how == "pixel_length" and not seed.encapsulated:
        target = _top(elements, PIXEL_DATA_TAG)
        assert target is not None
        delta = rng.choice([-1, -2, -target.length // 2, -target.length, 1, 2, 100])
        value = d.data[target.value_at : target.stop]
        value = value[: len(value) + delta] if delta < 0 else value + b"\x7f" * delta
        d.data = _replace_value(d.data, target, value, seed.implicit)
        d.detail = f"native pixel data {target.length} -> {len(value)} bytes"
        d.expect = REFUSE if delta < 0 else EITHER
    elif how == "photometric":
        target = _top(elements, PHOTOMETRIC_TAG)
        assert target is not None
        value = rng.choice(
            [b"RGB ", b"MONOCHROME2 ", b"YBR_FULL_422", b"PALETTE COLOR ", b"", b"NONSENSE"]
        )
        d.data = _replace_value(d.data, target, value, seed.implicit)
        d.detail = f"PhotometricInterpretation = {value!r}"
    else:
        keyword = rng.choice(list(REQUIRED_IMAGE_TAGS))
        target = _top(elements, REQUIRED_IMAGE_TAGS[keyword])
        if target is None:
            keyword, target = "Rows", _top(elements, REQUIRED_IMAGE_TAGS["Rows"])
        assert target is not None
        d.data = _splice(d.data, target.start, target.stop)
        d.detail = f"{keyword} removed"
        d.expect = REFUSE


def _expect_pixel_change(seed: SeedObject, keyword: str, old: int, value: int) -> str:
    """Refusal is certain for an empty size, or native pixel data now too short."""
    if keyword in ("Rows", "Columns", "SamplesPerPixel", "BitsAllocated") and value == 0:
        return REFUSE
    grows = keyword in ("Rows", "Columns", "SamplesPerPixel", "BitsAllocated") and value > old
    if grows and not seed.encapsulated:
        return REFUSE
    if keyword in ("Rows", "Columns") and seed.syntax == contexts.JPEG_BASELINE:
        return REFUSE  # each frame's SOF declares the real size
    return EITHER


def _mutate_syntax(rng: random.Random, seed: SeedObject, d: _Draft) -> None:
    native = (contexts.EXPLICIT_VR_LITTLE_ENDIAN, contexts.IMPLICIT_VR_LITTLE_ENDIAN)
    if seed.encapsulated:
        options = [
            *native,
            contexts.JPEG_2000_LOSSLESS,
            contexts.JPEG_LS_LOSSLESS,
            contexts.JPEG_XL,
            contexts.JPEG_BASELINE,
            contexts.RLE_LOSSLESS,
        ]
    elif seed.image:
        options = [
            *native,
            contexts.JPEG_BASELINE,
            contexts.RLE_LOSSLESS,
            contexts.JPEG_2000_LOSSLESS,
        ]
    else:  # the node takes documents in the native syntaxes only
        options = list(native)
    declared = rng.choice([s for s in options if s != seed.syntax])
    d.syntax = declared
    d.detail = (
        f"{contexts.transfer_syntax_name(seed.syntax)} bytes declared as "
        f"{contexts.transfer_syntax_name(declared)}"
    )
    if declared in native and seed.syntax in native:
        d.expect = REFUSE  # explicit read as implicit or the other way round
    elif seed.image and (declared in native) != (seed.syntax in native):
        d.expect = REFUSE  # native pixel data in a compressed syntax or the other way round
    elif (
        seed.image
        and seed.syntax == contexts.JPEG_BASELINE
        and declared in (contexts.JPEG_2000_LOSSLESS, contexts.JPEG_XL, contexts.RLE_LOSSLESS)
    ):
        d.expect = REFUSE  # no frame starts with the declared syntax's marker
    elif seed.image and seed.syntax == contexts.RLE_LOSSLESS and declared != seed.syntax:
        d.expect = REFUSE


def _mutate_structure(rng: random.Random, seed: SeedObject, d: _Draft) -> None:
    elements = _elements(seed, d)
    top = [e for e in elements if e.top_level]
    how = rng.choice(
        [
            "swap",
            "duplicate",
            "group_0002",
            "group_0000",
            "illegal_group",
            "private",
            "after_pixel",
            "trailing_noise",
            "flip_header",
            "flip_value",
            "padding",
        ]
    )
    d.detail = how
    if how == "swap":
        i = rng.randrange(len(top) - 1)
        a, b = top[i], top[i + 1]
        swapped = d.data[b.start : b.stop] + d.data[a.start : a.stop]
        d.data = _splice(d.data, a.start, b.stop, swapped)
        d.detail = f"({a.tag >> 16:04X},{a.tag & 0xFFFF:04X}) and the next element swapped"
        d.expect = REFUSE
    elif how == "duplicate":
        target = rng.choice(top)
        d.data = _splice(d.data, target.stop, target.stop, d.data[target.start : target.stop])
        d.detail = f"({target.tag >> 16:04X},{target.tag & 0xFFFF:04X}) twice"
        d.expect = REFUSE
    elif how == "group_0002":
        tag, vr, value = rng.choice(
            [
                (
                    0x00020010,
                    b"UI",
                    _uid_bytes(
                        rng.choice([contexts.IMPLICIT_VR_LITTLE_ENDIAN, contexts.JPEG_BASELINE])
                    ),
                ),
                (0x00020000, b"UL", _U32.pack(rng.choice([0, 200, 10_000]))),
                (0x00020002, b"UI", _uid_bytes(contexts.US_IMAGE)),
            ]
        )
        d.data = _insert_top(d.data, elements, tag, encode_element(tag, vr, value, seed.implicit))
        d.detail = f"File Meta element ({tag >> 16:04X},{tag & 0xFFFF:04X}) in the dataset"
    elif how == "group_0000":
        tag = rng.choice([0x00000900, 0x00000100, 0x00000000])
        raw = encode_element(
            tag,
            b"US" if tag != 0 else b"UL",
            b"\x00\x00" if tag else b"\x00\x00\x00\x00",
            seed.implicit,
        )
        d.data = _insert_top(d.data, elements, tag, raw)
        d.detail = f"command element ({tag >> 16:04X},{tag & 0xFFFF:04X}) in the dataset"
    elif how == "illegal_group":
        group = rng.choice([0x0001, 0x0003, 0x0005, 0x0007])
        tag = group << 16 | 0x0010
        raw = encode_element(tag, b"LO", b"ILLEGAL ", seed.implicit)
        d.data = _insert_top(d.data, elements, tag, raw)
        d.detail = f"element of illegal group {group:04X}"
    elif how == "private":
        creator = encode_element(0x00090010, b"LO", b"FUZZ CREATOR", seed.implicit)
        value = bytes(rng.getrandbits(8) for _ in range(rng.choice([0, 2, 64, 5000])))
        data = encode_element(0x00091001, b"OB", value, seed.implicit)
        d.data = _insert_top(d.data, elements, 0x00090010, creator + data)
        d.detail = f"private block with {len(value)} bytes"
        d.expect = ACCEPT
    elif how == "after_pixel":
        tag = rng.choice([ITEM_TAG, SEQUENCE_DELIMITER_TAG, ITEM_DELIMITER_TAG, 0xFFFFFFFF])
        d.data = d.data + _TAG.pack(tag >> 16, tag & 0xFFFF) + _U32.pack(0)
        d.detail = f"({tag >> 16:04X},{tag & 0xFFFF:04X}) of length 0 at the end"
    elif how == "trailing_noise":
        junk = bytes(rng.getrandbits(8) for _ in range(rng.choice([1, 3, 7, 9, 30])))
        d.data = d.data + junk
        d.detail = f"{len(junk)} bytes of noise at the end"
        if len(junk) < 8:
            d.expect = REFUSE
    elif how == "padding":
        value = b"\x00" * rng.choice([0, 2, 64])
        d.data = d.data + encode_element(0xFFFCFFFC, b"OB", value, seed.implicit)
        d.detail = f"Data Set Trailing Padding of {len(value)} bytes"
        d.expect = ACCEPT
    elif how == "flip_value" and not seed.encapsulated and seed.image:
        target = _top(elements, PIXEL_DATA_TAG)
        assert target is not None
        at = rng.randrange(target.value_at, target.stop)
        d.data = _splice(d.data, at, at + 1, bytes([d.data[at] ^ 0xFF]))
        d.detail = f"pixel byte {at - target.value_at} flipped"
        d.expect = ACCEPT
    else:
        pixel = _top(elements, PIXEL_DATA_TAG)
        end = pixel.start if pixel is not None else len(d.data)
        flips = rng.randint(1, 4)
        data = bytearray(d.data)
        for _ in range(flips):
            data[rng.randrange(end)] ^= 1 << rng.randrange(8)
        d.data = bytes(data)
        d.detail = f"{flips} header bit(s) flipped"


def _mutate_values(rng: random.Random, seed: SeedObject, d: _Draft) -> None:
    elements = _elements(seed, d)
    how = rng.choice(
        ["patient_name", "charset", "date", "long_text", "number", "sop_class_lie", "document"]
    )
    if how == "patient_name":
        value = rng.choice(
            [
                b"A" * 10_000,
                b"M\xfcller^J\xf6rg",
                b"\xc3\x28\xa0\xa1",
                b"Doe^Jane=\x1b$B;3ED\x1b(B",
                b"\x00\x00",
                b"^^^^",
                b"a\\b\\c",
            ]
        )
        target = _top(elements, 0x00100010)
        assert target is not None
        d.data = _replace_value(d.data, target, _even(value), seed.implicit)
        d.detail = f"PatientName of {len(value)} odd bytes"
        d.expect = ACCEPT
    elif how == "charset":
        value = rng.choice([b"ISO_IR 999", b"\x01\x02", b"ISO 2022 IR 87\\ISO_IR 192", b""])
        target = _top(elements, 0x00080005)
        assert target is not None
        d.data = _replace_value(d.data, target, _even(value), seed.implicit)
        d.detail = f"SpecificCharacterSet = {value!r}"
    elif how == "date":
        value = rng.choice([b"20241399", b"abc", b"1" * 1000, b"2024-01-01", b"00000000"])
        target = _top(elements, 0x00080020)
        assert target is not None
        d.data = _replace_value(d.data, target, _even(value), seed.implicit)
        d.detail = f"StudyDate of {len(value)} bytes"
        d.expect = ACCEPT
    elif how == "long_text":
        tag = rng.choice([0x00080050, 0x00081030, 0x00100020, 0x00080080, 0x00080090])
        target = _top(elements, tag)
        value = bytes(rng.choice(b"ABC^ \\=") for _ in range(rng.choice([65, 400, 20_000])))
        if target is None:
            raw = encode_element(tag, _dictionary_vr(tag), _even(value), seed.implicit)
            d.data = _insert_top(d.data, elements, tag, raw)
        else:
            d.data = _replace_value(d.data, target, _even(value), seed.implicit)
        d.detail = f"{_tag_text(tag)} of {len(value)} bytes"
        # another Patient ID than the study's is quarantined, not stored
        d.expect = EITHER if tag == 0x00100020 else ACCEPT
    elif how == "number":
        tag = rng.choice([0x00200013, 0x00200011])  # Instance Number, Series Number
        value = rng.choice(IS_VALUES)
        target = _top(elements, tag)
        raw_value = _even(value)
        if target is None:
            d.data = _insert_top(
                d.data, elements, tag, encode_element(tag, b"IS", raw_value, seed.implicit)
            )
        else:
            d.data = _replace_value(d.data, target, raw_value, seed.implicit)
        d.detail = f"({tag >> 16:04X},{tag & 0xFFFF:04X}) IS = {value!r}"
        d.expect = ACCEPT  # informative numbers: a bad one is dropped, the instance kept
    elif how == "sop_class_lie":
        target = _top(elements, UID_TAGS["SOPClassUID"])
        assert target is not None
        if seed.encapsulated:  # the node takes compressed syntaxes for images only
            other = (
                contexts.US_IMAGE
                if seed.sop_class != contexts.US_IMAGE
                else (contexts.US_MULTIFRAME)
            )
        else:
            other = contexts.ENCAPSULATED_PDF if seed.image else contexts.US_MULTIFRAME
        d.data = _replace_value(d.data, target, _uid_bytes(other), seed.implicit)
        d.sop_class = other
        d.detail = f"dataset and request both claim {contexts.sop_class_name(other)}"
        # an image without its pixel module, or a document with pixel data
        d.expect = EITHER if seed.encapsulated else REFUSE
    else:
        options = {
            contexts.ENCAPSULATED_PDF: [0x00420011],
            "1.2.840.10008.5.1.4.1.1.88.33": [0x0040A730, 0x0040A040],
        }.get(seed.sop_class, [PIXEL_DATA_TAG, 0x00280010])
        tag = rng.choice(options)
        target = _top(elements, tag)
        assert target is not None
        if tag == 0x0040A040:
            d.data = _replace_value(d.data, target, b"TEXT", seed.implicit)
            d.detail = "SR root Value Type TEXT"
        else:
            d.data = _splice(d.data, target.start, target.stop)
            d.detail = f"({tag >> 16:04X},{tag & 0xFFFF:04X}) removed"
        d.expect = REFUSE


def mutant_for(seeds: Sequence[SeedObject], seed: int, index: int) -> Mutant:
    """Case ``index`` of a run with ``seed``: replays one case of a report alone."""
    return Mutator(seeds, seed).case(index)
