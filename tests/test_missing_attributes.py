"""Real files lack Type 2 and Type 3 attributes (Patient ID, Name, Birth Date, Accession Number,
Study Date, ...): the node must neither crash nor invent them. Two loops lose each attribute
alone and all of them at once: pydicom's real SonoSite A4C loop (``examples.ybr_color``, read
from pydicom, never copied here) and a phantom loop. For every variant each object the node
writes (SEG, SR, secondary capture, PDF, Encapsulated PDF, FHIR bundle) is written, dciodvfy
finds no error, the Type 2 patient and study attributes are there and empty where the source
lacks them (PS3.5 7.4.3) and the source's value where it has one, and the FHIR bundles pass the
official FHIR R4 JSON schema. Then the real command, ``echo-agent analyze``, on both loops
without any of them, and a whole node: a loop without Patient ID and Name C-STOREd to it
through to the FHIR bundle the EHR receives and the worklist.

The variants go through the writers that ``reporting.outputs.write_report_objects`` calls,
all but the overlay video (seconds of VP8 encoding per variant, and no header in it; the
command writes it), on analyses made once: the SonoSite loop by the demo networks, the phantom
by its true masks on its first PHANTOM_FRAMES frames (one heart beat; the writers' handling of
the header does not depend on the loop's length, and the command runs on the whole loop). The
SonoSite loop's LV may not be found and its calibration refused: only validity is checked here,
never numbers.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_helpers import send_files
from fhir_receiver import FhirReceiver
from orthanc_helpers import phantom_cache, truth
from pydicom import examples
from pydicom.dataset import Dataset
from reporting_helpers import (
    NODE_SYSTEM,
    SEED_ONE_STUDY,
    a4c_paths,
    dciodvfy_errors,
    fhir_schema_errors,
    pdf_text,
)
from running_node import node_config, running_node, wait_for_jobs_done

from inference.analyze import analyse
from inference.decode import FrameReader
from inference.measure import measure_cine
from inference.model_cache import load_models
from inference.types import Cine, Measurements
from pacs_agent.analysis import model_settings
from pacs_agent.config import Config, EhrConfig, SelectionConfig
from pacs_agent.outputs import algorithms_for
from reporting.encapsulated_pdf import write_encapsulated_pdf
from reporting.fhir import build_fhir_bundle, bundle_json
from reporting.overlay import render_overlay_frames
from reporting.pdf import build_report_pdf
from reporting.secondary_capture import write_secondary_capture
from reporting.seg import write_seg
from reporting.sr import write_sr
from reporting.types import AlgorithmInfo, Algorithms, DraftReport, SourceLoop
from web.studies import worklist

# Type 2 attributes of the Patient and General Study modules: every object written carries them
PATIENT_STUDY_TYPE2 = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "ReferringPhysicianName",
)
# ... and Type 2 / Type 3 (or 1C) attributes a scanner may leave out, read elsewhere
OTHER_OPTIONAL = (
    "IssuerOfPatientID",
    "SeriesNumber",
    "InstanceNumber",
    "Laterality",
    "ImageType",
    "Manufacturer",
    "BodyPartExamined",
    "StudyDescription",
    "SeriesDescription",
    "InstitutionName",
    "PatientOrientation",
    "ContentDate",
    "ContentTime",
    "SpecificCharacterSet",
)
ATTRIBUTES = PATIENT_STUDY_TYPE2 + OTHER_OPTIONAL
ALL = "all"
VARIANTS = (*ATTRIBUTES, ALL)
LOOPS = ("sonosite", "phantom")
DICOM_FILES = ("seg.dcm", "sr.dcm", "overlay_sc.dcm", "report_pdf.dcm")
PHANTOM_FRAMES = 32


@dataclasses.dataclass(frozen=True)
class Analysed:
    """One loop analysed once: what the writers take besides its header."""

    header: Dataset  # without pixel data
    cine: Cine
    masks: np.ndarray
    measurements: Measurements
    algorithms: Algorithms

    @property
    def rendered(self) -> np.ndarray:
        """The overlay frames the secondary capture carries."""
        return render_overlay_frames(self.cine.frames, self.masks, demo_models=True)


def without(header: Dataset, variant: str) -> Dataset:
    ds = copy.deepcopy(header)
    for keyword in ATTRIBUTES if variant == ALL else (variant,):
        if keyword in ds:
            delattr(ds, keyword)
    return ds


def sonosite_path() -> Path:
    return Path(examples.get_path("ybr_color"))


@pytest.fixture(scope="module")
def phantom_path(request, tmp_path_factory) -> Path:
    (path,) = a4c_paths(phantom_cache(request.config, tmp_path_factory), 1, SEED_ONE_STUDY)
    return path


def _sonosite(home: Path) -> Analysed:
    """The real loop through the node's analysis with the shipped demo networks."""
    config = Config(home=str(home))
    models = load_models(model_settings(config))
    result = analyse(sonosite_path(), models, all_clip_stride=config.models.all_clip_stride)
    return Analysed(
        pydicom.dcmread(sonosite_path(), stop_before_pixels=True),
        result.cine,
        result.analysis.lv_masks_source(),
        result.analysis.measurements,
        algorithms_for(models),
    )


def _phantom(path: Path) -> Analysed:
    """The phantom's first beat, measured on its true masks (the truth plays the EF network)."""
    reader = FrameReader(path)
    frames = np.stack([reader.decode(index) for index in range(PHANTOM_FRAMES)])
    cine = dataclasses.replace(reader.header, frames=frames)
    facts = truth(path)
    masks = np.load(path.parent / facts["masks_file"])["masks"].astype(bool)[:PHANTOM_FRAMES]
    ef = float(facts["ef_percent"])
    measurements = measure_cine(cine, masks, lambda starts: np.full(len(starts), ef))
    header = pydicom.dcmread(path, stop_before_pixels=True)
    header.NumberOfFrames = PHANTOM_FRAMES
    algorithm = AlgorithmInfo("echo-agent phantom truth", "0.1.0", demo_model=True)
    return Analysed(header, cine, masks, measurements, Algorithms(algorithm, algorithm))


@pytest.fixture(scope="module")
def analysed(phantom_path, tmp_path_factory) -> dict[str, Analysed]:
    return {
        "sonosite": _sonosite(tmp_path_factory.mktemp("sonosite-home")),
        "phantom": _phantom(phantom_path),
    }


@pytest.fixture(scope="module")
def rendered(analysed) -> dict[str, np.ndarray]:
    return {name: loop.rendered for name, loop in analysed.items()}


def _report() -> DraftReport:
    return DraftReport(narrative_text="Automated draft for review.", demo_models=True)


def write_objects(folder: Path, header: Dataset, loop: Analysed, rendered: np.ndarray) -> None:
    """What ``write_report_objects`` writes, but the video, under the same file names."""
    report = _report()
    write_seg(header, loop.masks, loop.algorithms.segmentation, folder / "seg.dcm")
    write_sr(header, loop.measurements, loop.algorithms, report, folder / "sr.dcm")
    write_secondary_capture(
        header, rendered, folder / "overlay_sc.dcm",
        frame_time_ms=loop.cine.frame_time_ms, demo_models=True,
    )  # fmt: skip
    source = SourceLoop.from_dataset(header)
    pdf = build_report_pdf(
        source, loop.measurements, loop.algorithms, report,
        frames_rgb=loop.cine.frames, masks=loop.masks,
    )  # fmt: skip
    (folder / "report.pdf").write_bytes(pdf)
    write_encapsulated_pdf(header, pdf, report, folder / "report_pdf.dcm")
    bundle = build_fhir_bundle(
        source, loop.measurements, loop.algorithms, report,
        node_system=NODE_SYSTEM, pdf_bytes=pdf,
    )  # fmt: skip
    (folder / "fhir_bundle.json").write_text(bundle_json(bundle))


def _family_name(header: Dataset) -> str:
    return str(header.get("PatientName", "") or "").split("^")[0].strip()


# each attribute alone on the phantom (which carries them all), every one at once on both loops
CASES = [("phantom", variant) for variant in ATTRIBUTES] + [(loop, ALL) for loop in LOOPS]


@pytest.mark.parametrize(("loop_name", "variant"), CASES)
def test_every_object_is_valid_without_the_attribute_and_invents_nothing(
    analysed, rendered, loop_name, variant, tmp_path, recwarn, caplog
) -> None:
    loop = analysed[loop_name]
    source = loop.header
    header = without(source, variant)
    caplog.set_level("DEBUG")
    write_objects(tmp_path, header, loop, rendered[loop_name])

    for name in DICOM_FILES:
        path = tmp_path / name
        assert dciodvfy_errors(path) == [], (name, variant)
        out = pydicom.dcmread(path, stop_before_pixels=True)
        for keyword in PATIENT_STUDY_TYPE2:
            assert keyword in out, (name, keyword)  # Type 2: present, even when empty
            expected = "" if keyword not in header else str(source[keyword].value or "")
            assert str(out[keyword].value or "") == expected, (name, keyword)

    bundle = json.loads((tmp_path / "fhir_bundle.json").read_text())
    for entry in bundle["entry"]:
        subject = entry["resource"].get("subject", {})
        if header.get("PatientID"):
            assert subject["identifier"]["value"] == str(source.PatientID)
        else:  # no identifier is made up: the EHR has to match the report by hand
            assert "identifier" not in subject
    if not header.get("PatientID"):
        assert "(none)" in pdf_text((tmp_path / "report.pdf").read_bytes())

    # highdicom's person-name check once printed the name ("PLA") in a UserWarning
    family = _family_name(header)
    if family:
        said = [str(w.message) for w in recwarn] + [r.getMessage() for r in caplog.records]
        assert not [s for s in said if re.search(rf"\b{re.escape(family)}\b", s)]


def test_the_fhir_bundles_validate_without_each_attribute(analysed, tmp_path) -> None:
    paths = []
    for loop_name in LOOPS:
        loop = analysed[loop_name]
        for variant in VARIANTS:
            bundle = build_fhir_bundle(
                SourceLoop.from_dataset(without(loop.header, variant)), loop.measurements,
                loop.algorithms, _report(), node_system=NODE_SYSTEM, pdf_bytes=b"%PDF-1.4",
            )  # fmt: skip
            path = tmp_path / f"{loop_name}-{variant}.json"
            path.write_text(bundle_json(bundle))
            paths.append(path)
    verdicts = fhir_schema_errors(*paths)
    assert verdicts == {str(p): [] for p in paths}


@pytest.fixture(scope="module")
def analyze_runs(echo_agent_exe, tmp_path_factory) -> dict[str, Path]:
    """``echo-agent analyze`` on each loop without any of the attributes; its output folder."""
    folder = tmp_path_factory.mktemp("analyze")
    outputs = {}
    # the real loop only: the phantom goes through the same writers above and the node below
    for loop_name, path in (("sonosite", sonosite_path()),):
        source = folder / f"{loop_name}.dcm"
        without(pydicom.dcmread(path), ALL).save_as(source)
        out = folder / f"{loop_name}-out"
        result = subprocess.run(
            [echo_agent_exe, "analyze", str(source), "--out", str(out)],
            cwd=folder, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        assert "Traceback" not in result.stderr
        json.loads(result.stdout)  # the measurements document
        outputs[loop_name] = out
    return outputs


@pytest.mark.slow
def test_the_analyze_command_writes_valid_objects_for_loops_without_any_of_them(
    analyze_runs,
) -> None:
    for loop_name, out in analyze_runs.items():
        for name in DICOM_FILES:
            assert dciodvfy_errors(out / name) == [], (loop_name, name)
            written = pydicom.dcmread(out / name, stop_before_pixels=True)
            assert all(str(written[k].value or "") == "" for k in PATIENT_STUDY_TYPE2)
        bundle = json.loads((out / "fhir_bundle.json").read_text())
        assert all("subject" not in e["resource"] for e in bundle["entry"])
    bundles = [out / "fhir_bundle.json" for out in analyze_runs.values()]
    assert fhir_schema_errors(*bundles) == {str(p): [] for p in bundles}


@pytest.fixture
def ehr() -> Iterator[FhirReceiver]:
    with FhirReceiver().serve() as receiver:
        yield receiver


@pytest.mark.slow
def test_a_loop_without_patient_id_and_name_goes_through_the_node_to_the_ehr(
    phantom_path, ehr, tmp_path
) -> None:
    ds = pydicom.dcmread(phantom_path)
    del ds.PatientID, ds.PatientName
    ds.SeriesDescription = "A4C"  # this phantom keeps its view to itself; the node needs it
    sent = tmp_path / "send" / "loop.dcm"
    sent.parent.mkdir()
    ds.save_as(sent)
    fast = EhrConfig(fhir_base_url=ehr.base_url, backoff_initial_s=0.01, backoff_max_s=0.05)
    config = node_config(tmp_path / "home", f"sqlite:///{tmp_path / 'node.db'}", ehr=fast)
    with running_node(config) as node:
        assert send_files("127.0.0.1", node.dicom_port, [sent], calling_ae="TESTPACS") == [0]
        wait_for_jobs_done(node, 1)
        with node.session_factory() as session:
            (row,) = worklist(session)
    assert (row["patient_id"], row["patient_name_dicom"]) == ("", "")

    (report,) = ehr.all("DiagnosticReport")
    assert "subject" not in report  # nothing to file it under, and nothing invented
    assert report["status"] == "preliminary"
    assert all("subject" not in o for o in ehr.all("Observation"))
    (posted,) = ehr.transactions()
    body = tmp_path / "posted.json"
    body.write_bytes(posted.body)
    assert fhir_schema_errors(body) == {str(body): []}


@pytest.mark.slow
def test_the_real_sonosite_loop_without_identity_reaches_the_ehr_with_what_it_supports(
    ehr, tmp_path
) -> None:
    """pydicom's real SonoSite A4C cine, Patient ID and Name removed, through C-STORE, a job
    and FHIR delivery: the demo models find the LV and the regression EF is published, so the
    EHR gets it as a value and the worklist shows it; the method-of-disks LVEF (no whole beat)
    and the volumes (calibration outside the rescaled image) arrive without a value and with
    the reason."""
    from pydicom import examples

    from reporting.codes import LVEF

    ds = pydicom.dcmread(examples.get_path("ybr_color"))
    del ds.PatientID, ds.PatientName
    ds.SeriesDescription = "A4C"  # SonoSite leaves the view unnamed; a lab's routing names it
    sent = tmp_path / "send" / "sonosite.dcm"
    sent.parent.mkdir()
    ds.save_as(sent)
    fast = EhrConfig(fhir_base_url=ehr.base_url, backoff_initial_s=0.01, backoff_max_s=0.05)
    # 30 frames at 30 /s are 0.97 s: a lab that routes such short loops lowers the minimum
    short = dataclasses.replace(SelectionConfig(), min_duration_s=0.5)
    config = node_config(
        tmp_path / "home", f"sqlite:///{tmp_path / 'node.db'}", ehr=fast, selection=short
    )
    with running_node(config) as node:
        assert send_files("127.0.0.1", node.dicom_port, [sent], calling_ae="TESTPACS") == [0]
        wait_for_jobs_done(node, 1)
        with node.session_factory() as session:
            (row,) = worklist(session)
    assert row["ef_percent"] is not None and 20.0 < row["ef_percent"] < 80.0
    (report,) = ehr.all("DiagnosticReport")
    assert "not measurable" in report["conclusion"]
    lvef = [
        o for o in ehr.all("Observation")
        if any(c.get("code") == LVEF.value for c in o["code"].get("coding", []))
    ]  # fmt: skip
    assert sorted("valueQuantity" in o for o in lvef) == [False, True]
    (published,) = [o for o in lvef if "valueQuantity" in o]
    assert published["valueQuantity"]["value"] == pytest.approx(row["ef_percent"], abs=0.05)
    (absent,) = [o for o in lvef if "valueQuantity" not in o]
    assert "interpretation" not in absent
    assert absent["dataAbsentReason"]["coding"][0]["code"] == "error"
    assert "no cardiac cycle" in absent["dataAbsentReason"]["text"]
    (posted,) = ehr.transactions()
    body = tmp_path / "posted.json"
    body.write_bytes(posted.body)
    assert fhir_schema_errors(body) == {str(body): []}
