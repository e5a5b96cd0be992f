"""A4C selection: which received loops the node analyses, and in words why the others are not.

A loop is analysed when it is a grey-scale B-mode ultrasound cine with at least one whole
cardiac cycle, without colour flow, in the apical four-chamber view. The view comes from the
metadata first (Series Description, Protocol Name, View Code Sequence, Image Comments matched
against ``selection.view_patterns``); when the metadata names no view a view classifier decides;
when neither can, the loop is not analysed ("view unknown") rather than guessed.

Rules run cheapest first (header, then a few decoded frames), and the first rule a loop fails
is its reason, because a cardiologist reading the worklist needs one clear sentence.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from inference.decode import frame_time_from_header
from inference.jpegxl import frames_at
from inference.view_classifier import A4C_LABEL, ViewClassifier, to_grey
from pacs_agent.config import SelectionConfig
from pacs_agent.errors import EchoAgentError

log = logging.getLogger(__name__)

US_MULTIFRAME_SOP_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.3.1",  # Ultrasound Multi-frame Image Storage
        "1.2.840.10008.5.1.4.1.1.3",  # ... (retired)
    }
)

# Region Data Type (PS3.3 C.8.5.5.1.2) and Region Spatial Format (C.8.5.5.1.1)
REGION_TISSUE = 0x0001
REGION_COLOR_FLOW = 0x0002
REGION_SPECTRAL_DOPPLER = frozenset({0x0003, 0x0004})
SPATIAL_2D = 0x0001
# Image Type value 4 for US (C.8.5.6.1.1): a hex bitmap of the acquisition modes shown
IMAGE_TYPE_COLOUR_BITS = 0x0010 | 0x0020 | 0x0100  # colour Doppler, colour M-mode, colour power
IMAGE_TYPE_DOPPLER_BITS = 0x0004 | 0x0008  # CW, PW spectral Doppler

# Views a description may name that are not A4C. A subcostal four-chamber view matches both
# lists; it is not apical, so the other view wins.
OTHER_VIEW_PATTERNS = (
    "PLAX",
    "PSAX",
    "SAX",
    "PARASTERNAL",
    "A2C",
    "2CH",
    "2 CH",
    "TWO CHAMBER",
    "2 CHAMBER",
    "A3C",
    "3CH",
    "3 CH",
    "THREE CHAMBER",
    "3 CHAMBER",
    "APLAX",
    "A5C",
    "5CH",
    "5 CH",
    "FIVE CHAMBER",
    "5 CHAMBER",
    "SUBCOSTAL",
    "SUBXIPHOID",
    "SUPRASTERNAL",
    "IVC",
)

# "Clearly coloured" pixels: channel spread above this (0-255), in more than this share of the
# imaging region. Grey loops stored as RGB or JPEG YBR stay far below both even with burned-in
# coloured ECG traces and markers.
COLOUR_SPREAD_MIN = 60
COLOUR_FRACTION_MAX = 0.01
COLOUR_CHECK_FRAMES = 3
CLASSIFIER_FRAMES = 16


class SelectionError(EchoAgentError, ValueError):
    """The file cannot be judged at all (not DICOM, unreadable)."""


@dataclass(frozen=True)
class LoopTiming:
    """How long the loop lasts: first to last frame, from the header's timing attributes."""

    frame_time_ms: float
    duration_s: float
    source: str  # the attribute the timing came from

    @property
    def frame_rate_hz(self) -> float:
        return 1000.0 / self.frame_time_ms


@dataclass(frozen=True)
class Selection:
    """The verdict on one loop; ``reason`` says why it is not analysed ("" when eligible)."""

    eligible: bool
    reason: str = ""
    view_source: str = ""  # "metadata" | "classifier" | ""
    view_detail: str = ""


def not_eligible(reason: str, view_source: str = "", view_detail: str = "") -> Selection:
    return Selection(False, reason, view_source, view_detail)


def loop_timing(ds: Dataset) -> LoopTiming | None:
    """Frame time (the decoder's rule: Frame Time, Frame Time Vector, Cine Rate, Recommended
    Display Frame Rate) and duration.

    Duration is first frame to last, (n - 1) frame times: a loop must span a cycle between the
    frames it shows, not merely while the last one is on screen.
    """
    n = int(ds.get("NumberOfFrames", 1) or 1)
    frame_time_ms, source = frame_time_from_header(ds)
    if frame_time_ms is None:
        return None
    return LoopTiming(frame_time_ms, (n - 1) * frame_time_ms / 1000.0, source)


def heart_rate_bpm(ds: Dataset) -> float | None:
    return _positive_float(ds.get("HeartRate"))


def _positive_float(value: object) -> float | None:
    if value is None or value == "":
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if number > 0 and np.isfinite(number) else None


def read_header(path: str | os.PathLike[str]) -> Dataset:
    """Reads everything but the pixel data (decoded later, and only a few frames)."""
    try:
        return dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise SelectionError(f"cannot read {Path(path).name} as DICOM: {exc}") from exc


def check_header(ds: Dataset, rules: SelectionConfig) -> Selection | None:
    """The rules that need only the header; returns the failing verdict or None."""
    sop_class = str(ds.get("SOPClassUID", ""))
    modality = str(ds.get("Modality", ""))
    if modality != "US" or sop_class not in US_MULTIFRAME_SOP_CLASSES | {
        "1.2.840.10008.5.1.4.1.1.6.1",  # Ultrasound Image Storage (single frame)
        "1.2.840.10008.5.1.4.1.1.6",
    }:
        return not_eligible(f"not an ultrasound image (Modality {modality or 'missing'})")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames < 2:
        return not_eligible("a still image (one frame), not a cine loop")
    colour = _colour_metadata(ds)
    if colour:
        return not_eligible(f"colour flow data present ({colour})")
    mode = _not_b_mode(ds)
    if mode:
        return not_eligible(f"not a B-mode loop ({mode})")
    timing = loop_timing(ds)
    if timing is None:
        return not_eligible("frame timing unknown (no Frame Time, Frame Time Vector or Cine Rate)")
    hr = heart_rate_bpm(ds)
    if hr is not None:
        cycle_s = 60.0 / hr
        if timing.duration_s < cycle_s:
            return not_eligible(
                f"shorter than one cardiac cycle ({timing.duration_s:.2f} s at {hr:g} bpm "
                f"needs {cycle_s:.2f} s)"
            )
    elif timing.duration_s < rules.min_duration_s:
        return not_eligible(
            f"shorter than selection.min_duration_s ({timing.duration_s:.2f} s < "
            f"{rules.min_duration_s:g} s) and no heart rate to judge a cycle"
        )
    return None


def _colour_metadata(ds: Dataset) -> str:
    if int(ds.get("UltrasoundColorDataPresent", 0) or 0) == 1:
        return "Ultrasound Color Data Present = 1"
    for item in ds.get("SequenceOfUltrasoundRegions", []):
        if int(item.get("RegionDataType", 0) or 0) == REGION_COLOR_FLOW:
            return "a colour-flow region in the Sequence of Ultrasound Regions"
    bits = _image_type_bits(ds)
    if bits & IMAGE_TYPE_COLOUR_BITS:
        return f"Image Type acquisition bits {bits:04X}"
    return ""


def _not_b_mode(ds: Dataset) -> str:
    regions = list(ds.get("SequenceOfUltrasoundRegions", []))
    if regions and not any(
        int(r.get("RegionSpatialFormat", 0) or 0) == SPATIAL_2D
        and int(r.get("RegionDataType", 0) or 0) == REGION_TISSUE
        for r in regions
    ):
        return "no 2-D tissue region in the Sequence of Ultrasound Regions"
    for r in regions:
        if int(r.get("RegionDataType", 0) or 0) in REGION_SPECTRAL_DOPPLER:
            return "a spectral Doppler region"
    bits = _image_type_bits(ds)
    if bits & IMAGE_TYPE_DOPPLER_BITS:
        return f"Image Type acquisition bits {bits:04X}"
    return ""


def _image_type_bits(ds: Dataset) -> int:
    image_type = ds.get("ImageType")
    if image_type is None or isinstance(image_type, str) or len(image_type) < 4:
        return 0
    try:
        return int(str(image_type[3]), 16)
    except ValueError:
        return 0


def view_from_metadata(ds: Dataset, patterns: Sequence[str]) -> tuple[bool | None, str]:
    """(True, where) when the text names A4C, (False, where) another view, (None, "") neither."""
    texts = _view_texts(ds)
    for field, text in texts:
        upper = text.upper()
        for pattern in OTHER_VIEW_PATTERNS:
            if pattern in upper:
                return False, f"{field} {text!r}"
    for field, text in texts:
        upper = text.upper()
        for pattern in patterns:
            if pattern and pattern.upper() in upper:
                return True, f"{field} {text!r}"
    return None, ""


def _view_texts(ds: Dataset) -> list[tuple[str, str]]:
    texts = []
    for keyword, label in (
        ("SeriesDescription", "Series Description"),
        ("ProtocolName", "Protocol Name"),
        ("ImageComments", "Image Comments"),
    ):
        value = str(ds.get(keyword, "") or "").strip()
        if value:
            texts.append((label, value))
    for item in ds.get("ViewCodeSequence", []):
        meaning = str(item.get("CodeMeaning", "") or "").strip()
        if meaning:
            texts.append(("View Code Sequence", meaning))
    return texts


def _frame_indices(n_frames: int, count: int) -> list[int]:
    return sorted({int(i) for i in np.linspace(0, n_frames - 1, min(count, n_frames))})


def _read_frames(path: str | os.PathLike[str], indices: list[int]) -> np.ndarray:
    """Decodes just these frames (RGB for colour, as pydicom converts YBR by default)."""
    try:
        return frames_at(path, indices)  # JPEG XL too, which pydicom 3.0 cannot decode
    except Exception as exc:  # every decoder raises its own types; the verdict needs one
        raise SelectionError(f"cannot decode pixel data: {type(exc).__name__}: {exc}") from exc


def colour_fraction(frames: np.ndarray, region: tuple[int, int, int, int] | None) -> float:
    """Share of pixels whose channels differ by more than COLOUR_SPREAD_MIN (0 for grey)."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        return 0.0
    if region is not None:
        x0, y0, x1, y1 = region
        frames = frames[:, y0 : y1 + 1, x0 : x1 + 1]
    spread = frames.max(axis=-1).astype(np.int16) - frames.min(axis=-1).astype(np.int16)
    return float(np.mean(spread > COLOUR_SPREAD_MIN)) if spread.size else 0.0


def tissue_region(ds: Dataset) -> tuple[int, int, int, int] | None:
    """Bounding box (x0, y0, x1, y1) of the first 2-D tissue region, where colour flow lives."""
    for r in ds.get("SequenceOfUltrasoundRegions", []):
        if int(r.get("RegionSpatialFormat", 0) or 0) == SPATIAL_2D:
            try:
                return (
                    int(r.RegionLocationMinX0),
                    int(r.RegionLocationMinY0),
                    int(r.RegionLocationMaxX1),
                    int(r.RegionLocationMaxY1),
                )
            except AttributeError:
                return None
    return None


def select_loop(
    path: str | os.PathLike[str],
    rules: SelectionConfig,
    classifier: ViewClassifier | None,
    min_probability: float = 0.5,
) -> Selection:
    """The verdict on one stored file. Raises SelectionError only when it cannot be read."""
    ds = read_header(path)
    verdict = check_header(ds, rules)
    if verdict is not None:
        return verdict
    says_a4c, where = view_from_metadata(ds, rules.view_patterns)
    if says_a4c is False:
        return not_eligible(f"view is not A4C ({where})", "metadata", where)
    n_frames = int(ds.NumberOfFrames)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples == 3:
        frames = _read_frames(path, _frame_indices(n_frames, COLOUR_CHECK_FRAMES))
        share = colour_fraction(frames, tissue_region(ds))
        if share > COLOUR_FRACTION_MAX:
            return not_eligible(f"colour pixels in {100 * share:.1f}% of the image (colour flow)")
    if says_a4c:
        return Selection(True, "", "metadata", where)
    if classifier is None:
        return not_eligible("view unknown (no view in the metadata, no view classifier)")
    frames = to_grey(_read_frames(path, _frame_indices(n_frames, CLASSIFIER_FRAMES)))
    prediction = classifier.classify(frames)
    detail = f"classifier {classifier.name}: {prediction.label} p={prediction.probability:.2f}"
    if prediction.label == A4C_LABEL and prediction.probability >= min_probability:
        return Selection(True, "", "classifier", detail)
    if prediction.probability >= min_probability:
        return not_eligible(f"view is not A4C ({detail})", "classifier", detail)
    return not_eligible(f"view unknown ({detail})", "classifier", detail)
