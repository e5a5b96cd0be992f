"""Every reporting object of one analysed loop, written into one folder in one call: what the
pipeline records as artifacts and ``echo-agent analyze --out DIR`` leaves behind.

Each written object comes back with what an ``Artifact`` row holds (kind, path, media type,
SOP Instance UID, SHA-256) and the seconds it took, so the pipeline can record and benchmark
them without knowing how they are made. The overlay frames are rendered once and shared by the
video and the secondary capture.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from inference.types import Cine, Measurements
from reporting.dicom_base import Equipment, derived_uid
from reporting.echo_sr import write_echo_sr
from reporting.encapsulated_pdf import write_encapsulated_pdf
from reporting.fhir import build_fhir_bundle, bundle_json
from reporting.overlay import WEBM_MEDIA_TYPE, render_overlay_frames, write_overlay_video
from reporting.pdf import PDF_MEDIA_TYPE, build_report_pdf
from reporting.secondary_capture import write_secondary_capture
from reporting.seg import write_seg
from reporting.sr import write_sr
from reporting.types import Algorithms, DraftReport, SourceLoop

DICOM_MEDIA_TYPE = "application/dicom"
FHIR_MEDIA_TYPE = "application/fhir+json"

# file names inside the output folder, by artifact kind (pacs_agent.db.models.ARTIFACT_KINDS)
FILE_NAMES = {
    "seg": "seg.dcm",
    "sr": "sr.dcm",
    "echo_sr": "echo_sr.dcm",
    "overlay_video": "overlay.webm",
    "secondary_capture": "overlay_sc.dcm",
    "rendering": "report.pdf",
    "pdf": "report_pdf.dcm",
    "fhir": "fhir_bundle.json",
}


@dataclass(frozen=True)
class WrittenObject:
    kind: str  # an Artifact kind
    path: Path
    media_type: str
    sop_instance_uid: str | None  # DICOM objects only
    sha256: str
    elapsed_s: float


def write_report_objects(
    out_dir: str | Path,
    source_ds: Dataset,
    cine: Cine,
    masks: np.ndarray,
    measurements: Measurements,
    algorithms: Algorithms,
    report: DraftReport,
    *,
    node_system: str,
    patient_identifier_system: str | None = None,
    equipment: Equipment | None = None,
    uid_seed: str | None = None,
) -> list[WrittenObject]:
    """SEG, SR (TID 1500), echo SR (TID 5200), overlay video, secondary capture, report PDF
    (file and DICOM) and the FHIR Bundle for one loop, in that order. ``masks`` are at source
    resolution, one per frame.

    ``uid_seed`` (for example the job's identity) makes every SOP and Series Instance UID a
    function of the seed and the object kind, so a re-run replaces its objects in PACS instead
    of adding copies; without it the UIDs are new each time."""
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    equipment = equipment or Equipment()
    source = SourceLoop.from_dataset(source_ds)
    demo = report.demo_models or algorithms.demo_models
    written: list[WrittenObject] = []

    def uids(kind: str) -> dict[str, str]:
        if uid_seed is None:
            return {}
        return {
            "sop_instance_uid": derived_uid(uid_seed, kind),
            "series_instance_uid": derived_uid(uid_seed, kind, "series"),
        }

    def record(kind: str, media_type: str, started: float, ds: Dataset | None = None) -> None:
        path = folder / FILE_NAMES[kind]
        uid = None if ds is None else str(ds.SOPInstanceUID)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        written.append(
            WrittenObject(kind, path, media_type, uid, digest, time.perf_counter() - started)
        )

    started = time.perf_counter()
    seg = write_seg(
        source_ds,
        masks,
        algorithms.segmentation,
        folder / FILE_NAMES["seg"],
        equipment=equipment,
        **uids("seg"),
    )
    record("seg", DICOM_MEDIA_TYPE, started, seg)

    started = time.perf_counter()
    sr = write_sr(
        source_ds,
        measurements,
        algorithms,
        report,
        folder / FILE_NAMES["sr"],
        equipment=equipment,
        **uids("sr"),
    )
    record("sr", DICOM_MEDIA_TYPE, started, sr)

    # the same numbers as the TID 1500 SR, in the template echo reporting systems import
    started = time.perf_counter()
    echo_sr = write_echo_sr(
        source_ds,
        measurements,
        algorithms,
        report,
        folder / FILE_NAMES["echo_sr"],
        equipment=equipment,
        **uids("echo_sr"),
    )
    record("echo_sr", DICOM_MEDIA_TYPE, started, echo_sr)

    started = time.perf_counter()
    rendered = render_overlay_frames(
        cine.frames,
        masks,
        ed_frames=tuple(b.ed_frame for b in measurements.beats),
        es_frames=tuple(b.es_frame for b in measurements.beats),
        demo_models=demo,
    )
    write_overlay_video(rendered, folder / FILE_NAMES["overlay_video"], cine.frame_time_ms)
    record("overlay_video", WEBM_MEDIA_TYPE, started)

    started = time.perf_counter()
    sc = write_secondary_capture(
        source_ds,
        rendered,
        folder / FILE_NAMES["secondary_capture"],
        frame_time_ms=cine.frame_time_ms,
        demo_models=demo,
        equipment=equipment,
        **uids("secondary_capture"),
    )
    record("secondary_capture", DICOM_MEDIA_TYPE, started, sc)

    started = time.perf_counter()
    pdf = build_report_pdf(
        source,
        measurements,
        algorithms,
        report,
        frames_rgb=cine.frames,
        masks=masks,
        equipment=equipment,
    )
    (folder / FILE_NAMES["rendering"]).write_bytes(pdf)
    record("rendering", PDF_MEDIA_TYPE, started)

    started = time.perf_counter()
    doc = write_encapsulated_pdf(
        source_ds, pdf, report, folder / FILE_NAMES["pdf"], equipment=equipment, **uids("pdf")
    )
    record("pdf", DICOM_MEDIA_TYPE, started, doc)

    started = time.perf_counter()
    bundle = build_fhir_bundle(
        source,
        measurements,
        algorithms,
        report,
        node_system=node_system,
        pdf_bytes=pdf,
        patient_identifier_system=patient_identifier_system,
    )
    (folder / FILE_NAMES["fhir"]).write_text(bundle_json(bundle), encoding="utf-8")
    record("fhir", FHIR_MEDIA_TYPE, started)
    return written
