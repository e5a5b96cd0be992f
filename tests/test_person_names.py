"""Patient (and signer) names never reach stderr or the logs through a library's warning.

highdicom's person-name check warns about a name without a caret and quotes it; pydicom's value
checks quote values too. Every DICOM object the node writes (SEG, SR preliminary and signed,
secondary capture, Encapsulated PDF) is built here for patients named the usual way, with
punctuation and spaces, and the odd way (no caret), signed by an observer whose name has no
caret either: no warning is raised and no log record carries any part of a name. Then the
node's real logging set-up, in a process of its own as the command line makes it: a warning that
quotes a name comes out as one JSON line with the name blanked.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest
from dicom_helpers import Ids, us_loop_dataset, with_meta
from pydicom.uid import ExplicitVRLittleEndian

from inference.types import Beat, Measurements
from reporting.dicom_base import person_name
from reporting.encapsulated_pdf import build_encapsulated_pdf
from reporting.secondary_capture import build_secondary_capture
from reporting.seg import build_seg
from reporting.sr import build_signed_sr, build_sr
from reporting.types import AlgorithmInfo, Algorithms, DraftReport, Signature

FRAMES, ROWS, COLUMNS = 4, 16, 20
PATIENT_NAMES = ["Doe^Jane", "O'Brien-Smith^Mary Ann", "DOE JANE", "Nguyen", "Müller^Jörg"]
SIGNER = "OKAFOR ADA"  # a display name turned into a PN without a caret


def _measurements() -> Measurements:
    beat = Beat(1, 2, 3, 55.0, 0, 120.0, 54.0, 55.0, None, None)
    return Measurements(
        ef_percent=55.0, ef_sd_percent=None, ef_source="beats", ef_clips_mean_percent=55.0,
        ef_disks_percent=55.0, edv_ml=120.0, esv_ml=54.0, heart_rate_bpm=72.0,
        heart_rate_source="beats", beats=(beat,), flags=(), n_frames=FRAMES,
        frame_time_ms=33.3, spacing_cm=(0.05, 0.05), ed_frames=(1,), es_frames=(2,),
        lv_area_px=(), lv_area_cm2=None,
    )  # fmt: skip


def _name_parts(*names: str) -> list[str]:
    """Every word of the names, as they could appear in a message."""
    return sorted({w for n in names for w in re.split(r"[\^= ]+", n) if len(w) > 1})


@pytest.mark.parametrize("patient", PATIENT_NAMES)
def test_every_object_is_built_without_a_warning_or_log_line_naming_anyone(
    patient: str, caplog: pytest.LogCaptureFixture
) -> None:
    source = us_loop_dataset(Ids.new(), rows=ROWS, columns=COLUMNS, frames=FRAMES,
                             patient_name=patient)  # fmt: skip
    source.ReferringPhysicianName = "WHO DOCTOR"
    source = with_meta(source, ExplicitVRLittleEndian)
    algorithms = Algorithms(
        AlgorithmInfo("echo-agent seg", "1", demo_model=True),
        AlgorithmInfo("echo-agent ef", "1", demo_model=True),
    )
    measurements = _measurements()
    draft = DraftReport("Automated draft.", demo_models=True)
    signed = DraftReport(
        "Automated draft.",
        demo_models=True,
        status="final",
        signature=Signature(SIGNER, "Echo Lab", dt.datetime(2024, 8, 16, 9, 30, tzinfo=dt.UTC)),
    )
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        built = [
            build_seg(source, np.zeros((FRAMES, ROWS, COLUMNS), bool), algorithms.segmentation),
            preliminary := build_sr(source, measurements, algorithms, draft),
            build_signed_sr(preliminary, source, measurements, algorithms, signed),
            build_secondary_capture(
                source, np.zeros((FRAMES, ROWS, COLUMNS, 3), np.uint8), frame_time_ms=33.3,
                demo_models=True,
            ),
            build_encapsulated_pdf(source, b"%PDF-1.4\n%%EOF\n", draft),
        ]  # fmt: skip

    highdicom_warnings = [str(w.message) for w in caught if "highdicom" in w.filename]
    assert highdicom_warnings == []
    said = [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]
    for part in _name_parts(patient, SIGNER, "WHO DOCTOR"):
        leaked = [s for s in said if part in s]
        assert not leaked, (part, leaked[:2])
    # the names themselves are kept as the source has them (the signer's as one component)
    assert all(str(ds.PatientName) == patient for ds in built)
    assert str(built[2].VerifyingObserverSequence[0].VerifyingObserverName) == f"{SIGNER}^"


def test_a_single_component_name_gets_the_trailing_caret_only() -> None:
    assert str(person_name("Doe^Jane")) == "Doe^Jane"
    assert str(person_name("DOE JANE")) == "DOE JANE^"
    assert person_name("DOE JANE").family_name == "DOE JANE"
    assert str(person_name("Yamada=山田^太郎")) == "Yamada^=山田^太郎"
    assert str(person_name("")) == ""


def test_warnings_go_through_the_node_logging_as_json_with_names_blanked() -> None:
    """``configure_logging`` as the command line calls it, in a fresh interpreter: highdicom's
    real person-name warning and a pydicom value warning arrive as JSON lines on stderr."""
    code = "\n".join(
        [
            "from pacs_agent.logs import configure_logging",
            "configure_logging('INFO', 'json')",
            "from highdicom.valuerep import check_person_name",
            "check_person_name('DOE JANE')",
            "from pydicom.misc import warn_and_log",
            "warn_and_log(\"Invalid value for VR DA: '19600501x'.\")",
            "import logging",
            "logging.getLogger('echo_agent').info('node line for instance 1.2.3')",
        ]
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    loggers = [r["logger"] for r in records]
    assert "py.warnings" in loggers and "pydicom" in loggers
    for secret in ("DOE", "JANE", "19600501"):
        assert not [line for line in lines if secret in line], secret
    warning = next(r for r in records if r["logger"] == "py.warnings")
    assert "<redacted>" in warning["message"] and "single component" in warning["message"]
    assert "\n" not in warning["message"]  # one line, without the warning's source line
    assert any(r["message"] == "node line for instance 1.2.3" for r in records)
