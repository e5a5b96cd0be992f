"""Fuzz mutation families on content: UIDs empty, invalid, oversized or other than the
request's; stray command, File Meta and item tags, order, trailing bytes, flipped bits; odd
text and number values.
"""

from __future__ import annotations

import random

from echo_agent.bench.fuzz_draft import ACCEPT, EITHER, REFUSE, Draft, draft_elements
from echo_agent.bench.fuzz_encoded import (
    ITEM_DELIMITER_TAG,
    ITEM_TAG,
    PIXEL_DATA_TAG,
    SEQUENCE_DELIMITER_TAG,
    TAG,
    U32,
    dictionary_vr,
    encode_element,
    even,
    insert_top,
    replace_value,
    splice,
    tag_text,
    top_element,
    uid_bytes,
)
from echo_agent.bench.fuzz_mutate_pixels import IS_VALUES
from echo_agent.bench.fuzz_seeds import SeedObject
from pacs_agent.dicom import contexts

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


def mutate_uid(rng: random.Random, seed: SeedObject, d: Draft) -> None:
    keyword = rng.choice(list(UID_TAGS))
    tag = UID_TAGS[keyword]
    elements = draft_elements(seed, d)
    target = top_element(elements, tag)
    assert target is not None
    how = rng.choice(["invalid", "invalid", "invalid", "missing", "request_differs", "valid_odd"])
    if how == "missing":
        d.data = splice(d.data, target.start, target.stop)
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
        d.data = replace_value(d.data, target, uid_bytes(uid), seed.implicit)
        if keyword == "SOPInstanceUID":
            d.sop_instance = uid
        d.detail = f"{keyword} = valid UID of {len(uid)} chars"
        if keyword == "SOPClassUID":
            d.expect = REFUSE  # no such storage class, and not the request's
    else:
        value = rng.choice(INVALID_UIDS)
        d.data = replace_value(d.data, target, value, seed.implicit)
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


def mutate_structure(rng: random.Random, seed: SeedObject, d: Draft) -> None:
    elements = draft_elements(seed, d)
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
        d.data = splice(d.data, a.start, b.stop, swapped)
        d.detail = f"({a.tag >> 16:04X},{a.tag & 0xFFFF:04X}) and the next element swapped"
        d.expect = REFUSE
    elif how == "duplicate":
        target = rng.choice(top)
        d.data = splice(d.data, target.stop, target.stop, d.data[target.start : target.stop])
        d.detail = f"({target.tag >> 16:04X},{target.tag & 0xFFFF:04X}) twice"
        d.expect = REFUSE
    elif how == "group_0002":
        tag, vr, value = rng.choice(
            [
                (
                    0x00020010,
                    b"UI",
                    uid_bytes(
                        rng.choice([contexts.IMPLICIT_VR_LITTLE_ENDIAN, contexts.JPEG_BASELINE])
                    ),
                ),
                (0x00020000, b"UL", U32.pack(rng.choice([0, 200, 10_000]))),
                (0x00020002, b"UI", uid_bytes(contexts.US_IMAGE)),
            ]
        )
        d.data = insert_top(d.data, elements, tag, encode_element(tag, vr, value, seed.implicit))
        d.detail = f"File Meta element ({tag >> 16:04X},{tag & 0xFFFF:04X}) in the dataset"
    elif how == "group_0000":
        tag = rng.choice([0x00000900, 0x00000100, 0x00000000])
        raw = encode_element(
            tag,
            b"US" if tag != 0 else b"UL",
            b"\x00\x00" if tag else b"\x00\x00\x00\x00",
            seed.implicit,
        )
        d.data = insert_top(d.data, elements, tag, raw)
        d.detail = f"command element ({tag >> 16:04X},{tag & 0xFFFF:04X}) in the dataset"
    elif how == "illegal_group":
        group = rng.choice([0x0001, 0x0003, 0x0005, 0x0007])
        tag = group << 16 | 0x0010
        raw = encode_element(tag, b"LO", b"ILLEGAL ", seed.implicit)
        d.data = insert_top(d.data, elements, tag, raw)
        d.detail = f"element of illegal group {group:04X}"
    elif how == "private":
        creator = encode_element(0x00090010, b"LO", b"FUZZ CREATOR", seed.implicit)
        value = bytes(rng.getrandbits(8) for _ in range(rng.choice([0, 2, 64, 5000])))
        data = encode_element(0x00091001, b"OB", value, seed.implicit)
        d.data = insert_top(d.data, elements, 0x00090010, creator + data)
        d.detail = f"private block with {len(value)} bytes"
        d.expect = ACCEPT
    elif how == "after_pixel":
        tag = rng.choice([ITEM_TAG, SEQUENCE_DELIMITER_TAG, ITEM_DELIMITER_TAG, 0xFFFFFFFF])
        d.data = d.data + TAG.pack(tag >> 16, tag & 0xFFFF) + U32.pack(0)
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
        target = top_element(elements, PIXEL_DATA_TAG)
        assert target is not None
        at = rng.randrange(target.value_at, target.stop)
        d.data = splice(d.data, at, at + 1, bytes([d.data[at] ^ 0xFF]))
        d.detail = f"pixel byte {at - target.value_at} flipped"
        d.expect = ACCEPT
    else:
        pixel = top_element(elements, PIXEL_DATA_TAG)
        end = pixel.start if pixel is not None else len(d.data)
        flips = rng.randint(1, 4)
        data = bytearray(d.data)
        for _ in range(flips):
            data[rng.randrange(end)] ^= 1 << rng.randrange(8)
        d.data = bytes(data)
        d.detail = f"{flips} header bit(s) flipped"


def mutate_values(rng: random.Random, seed: SeedObject, d: Draft) -> None:
    elements = draft_elements(seed, d)
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
        target = top_element(elements, 0x00100010)
        assert target is not None
        d.data = replace_value(d.data, target, even(value), seed.implicit)
        d.detail = f"PatientName of {len(value)} odd bytes"
        d.expect = ACCEPT
    elif how == "charset":
        value = rng.choice([b"ISO_IR 999", b"\x01\x02", b"ISO 2022 IR 87\\ISO_IR 192", b""])
        target = top_element(elements, 0x00080005)
        assert target is not None
        d.data = replace_value(d.data, target, even(value), seed.implicit)
        d.detail = f"SpecificCharacterSet = {value!r}"
    elif how == "date":
        value = rng.choice([b"20241399", b"abc", b"1" * 1000, b"2024-01-01", b"00000000"])
        target = top_element(elements, 0x00080020)
        assert target is not None
        d.data = replace_value(d.data, target, even(value), seed.implicit)
        d.detail = f"StudyDate of {len(value)} bytes"
        d.expect = ACCEPT
    elif how == "long_text":
        tag = rng.choice([0x00080050, 0x00081030, 0x00100020, 0x00080080, 0x00080090])
        target = top_element(elements, tag)
        value = bytes(rng.choice(b"ABC^ \\=") for _ in range(rng.choice([65, 400, 20_000])))
        if target is None:
            raw = encode_element(tag, dictionary_vr(tag), even(value), seed.implicit)
            d.data = insert_top(d.data, elements, tag, raw)
        else:
            d.data = replace_value(d.data, target, even(value), seed.implicit)
        d.detail = f"{tag_text(tag)} of {len(value)} bytes"
        # another Patient ID than the study's is quarantined, not stored
        d.expect = EITHER if tag == 0x00100020 else ACCEPT
    elif how == "number":
        tag = rng.choice([0x00200013, 0x00200011])  # Instance Number, Series Number
        value = rng.choice(IS_VALUES)
        target = top_element(elements, tag)
        raw_value = even(value)
        if target is None:
            d.data = insert_top(
                d.data, elements, tag, encode_element(tag, b"IS", raw_value, seed.implicit)
            )
        else:
            d.data = replace_value(d.data, target, raw_value, seed.implicit)
        d.detail = f"({tag >> 16:04X},{tag & 0xFFFF:04X}) IS = {value!r}"
        d.expect = ACCEPT  # informative numbers: a bad one is dropped, the instance kept
    elif how == "sop_class_lie":
        target = top_element(elements, UID_TAGS["SOPClassUID"])
        assert target is not None
        if seed.encapsulated:  # the node takes compressed syntaxes for images only
            other = (
                contexts.US_IMAGE
                if seed.sop_class != contexts.US_IMAGE
                else (contexts.US_MULTIFRAME)
            )
        else:
            other = contexts.ENCAPSULATED_PDF if seed.image else contexts.US_MULTIFRAME
        d.data = replace_value(d.data, target, uid_bytes(other), seed.implicit)
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
        target = top_element(elements, tag)
        assert target is not None
        if tag == 0x0040A040:
            d.data = replace_value(d.data, target, b"TEXT", seed.implicit)
            d.detail = "SR root Value Type TEXT"
        else:
            d.data = splice(d.data, target.start, target.stop)
            d.detail = f"({tag >> 16:04X},{tag & 0xFFFF:04X}) removed"
        d.expect = REFUSE
