"""Orthanc as the PACS stores the SEG, SR, Secondary Capture and Encapsulated PDF in the source
study: ``write_report_objects`` writes every object of a loop, the loop is uploaded over REST as
the scanner's copy, the DICOM objects go in by C-STORE (the node's own export path,
``pacs_agent.export.c_store_file``), and Orthanc's REST API shows them under the loop's study,
each in its own new series."""

from __future__ import annotations

import pydicom
import pytest
from orthanc_helpers import phantom_cache, run_orthanc
from reporting_helpers import (
    NODE_SYSTEM,
    SEED_ONE_STUDY,
    a4c_paths,
    demo_algorithms,
    draft,
    load_loop,
)

from pacs_agent.config import DestinationConfig
from pacs_agent.export import c_store_file, calling_ae
from reporting.outputs import write_report_objects

NODE_AET = "ECHOAGENT"


@pytest.fixture(scope="module")
def loop(request, tmp_path_factory):
    (path,) = a4c_paths(phantom_cache(request.config, tmp_path_factory), 1, SEED_ONE_STUDY)
    return load_loop(path)


def test_orthanc_files_every_object_in_the_source_study(loop, tmp_path):
    objects = write_report_objects(
        tmp_path / "out",
        loop.header,
        loop.cine,
        loop.masks,
        loop.measurements,
        demo_algorithms(),
        draft(),
        node_system=NODE_SYSTEM,
    )
    kinds = [o.kind for o in objects]
    assert kinds == [
        "seg", "sr", "echo_sr", "overlay_video", "secondary_capture", "rendering", "pdf", "fhir"
    ]
    for obj in objects:
        assert obj.path.is_file() and len(obj.sha256) == 64 and obj.elapsed_s >= 0
    dicom = {o.kind: o for o in objects if o.sop_instance_uid}
    assert set(dicom) == {"seg", "sr", "echo_sr", "secondary_capture", "pdf"}

    with run_orthanc(tmp_path / "orthanc", {}) as orthanc:
        source = orthanc.upload(loop.path)  # the scanner's copy, as PACS holds it
        study_id = source["ParentStudy"]
        dest = DestinationConfig(
            name="orthanc", ae_title=orthanc.aet, host="127.0.0.1", port=orthanc.dicom_port
        )
        for kind, obj in dicom.items():
            outcome = c_store_file(obj.path, dest, calling_ae(NODE_AET))
            assert outcome.ok, f"{kind}: {outcome.error}"

        series_ids = set()
        for kind, obj in dicom.items():
            ds = pydicom.dcmread(obj.path, stop_before_pixels=True)
            instance_id = orthanc.find_instance(obj.sop_instance_uid)
            assert instance_id, f"Orthanc does not hold the {kind}"
            study = orthanc.get(f"/instances/{instance_id}/study")
            assert study["ID"] == study_id, kind
            assert study["MainDicomTags"]["StudyInstanceUID"] == loop.header.StudyInstanceUID
            series = orthanc.get(f"/instances/{instance_id}/series")
            assert series["MainDicomTags"]["SeriesInstanceUID"] == ds.SeriesInstanceUID
            series_ids.add(series["ID"])
            tags = orthanc.get(f"/instances/{instance_id}/simplified-tags")
            assert tags["SOPClassUID"] == ds.SOPClassUID
        assert len(series_ids) == 5  # each object in its own new series
        in_study = set(orthanc.get(f"/studies/{study_id}")["Series"])
        assert series_ids | {source["ParentSeries"]} == in_study
        patient = orthanc.get(f"/studies/{study_id}/patient")
        assert patient["MainDicomTags"]["PatientID"] == loop.header.PatientID
        assert len(orthanc.get("/patients")) == 1  # no second patient from our objects
