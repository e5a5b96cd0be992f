"""Every reporting object of one analysed loop, written into one folder in one call: what the
pipeline records as artifacts and ``echo-agent analyze --out DIR`` leaves behind.

Each written object comes back with what an ``Artifact`` row holds (kind, path, media type,
SOP Instance UID, SHA-256) and the seconds it took, so the pipeline can record and benchmark
them without knowing how they are made. The overlay frames are rendered once and shared by the
video and the secondary capture.

The overlay branch (render, VP8 video, JPEG secondary capture) spends its time in OpenCV,
libvpx and libjpeg, which release the GIL, while SEG, SR, PDF and FHIR are Python building
datasets and documents. So the overlay branch runs on one worker thread beside the others
(and its JPEG frames on one more, ``overlay_writer``): on two cores a loop's objects take
about the time of the longer branch, not of both. The source header is read in full before
the thread starts, so both branches only read it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from inference.types import Cine, Measurements
from reporting.dicom_base import Equipment, derived_uid
from reporting.echo_sr import write_echo_sr
from reporting.encapsulated_pdf import write_encapsulated_pdf
from reporting.fhir import build_fhir_bundle, bundle_json
from reporting.overlay import WEBM_MEDIA_TYPE
from reporting.overlay_writer import render_video_and_jpeg
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
    (file and DICOM) and the FHIR Bundle for one loop, returned in that order. ``masks`` are at
    source resolution, one per frame.

    ``uid_seed`` (for example the job's identity) makes every SOP and Series Instance UID a
    function of the seed and the object kind, so a re-run replaces its objects in PACS instead
    of adding copies; without it the UIDs are new each time."""
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    job = _Job(
        folder=folder,
        source_ds=source_ds,
        cine=cine,
        masks=masks,
        measurements=measurements,
        algorithms=algorithms,
        report=report,
        equipment=equipment or Equipment(),
        uid_seed=uid_seed,
    )
    _read_in_full(source_ds)  # elements parsed lazily would be converted by both threads
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="overlay") as pool:
        overlay = pool.submit(_overlay_objects, job)
        dicom = _dicom_objects(job)
        documents = _documents(job, node_system, patient_identifier_system)
        video_and_sc = overlay.result()  # the overlay branch's error, if any, is raised here
    return [*dicom, *video_and_sc, *documents]


@dataclass(frozen=True)
class _Job:
    """What every object of one call is made from."""

    folder: Path
    source_ds: Dataset
    cine: Cine
    masks: np.ndarray
    measurements: Measurements
    algorithms: Algorithms
    report: DraftReport
    equipment: Equipment
    uid_seed: str | None

    @property
    def demo(self) -> bool:
        return self.report.demo_models or self.algorithms.demo_models

    def uids(self, kind: str) -> dict[str, str]:
        """Derived SOP and Series Instance UIDs for ``kind`` (none without a seed)."""
        if self.uid_seed is None:
            return {}
        return {
            "sop_instance_uid": derived_uid(self.uid_seed, kind),
            "series_instance_uid": derived_uid(self.uid_seed, kind, "series"),
        }

    def written(
        self, kind: str, media_type: str, started: float, ds: Dataset | None = None
    ) -> WrittenObject:
        """The record of the file just written for ``kind``, timed from ``started``."""
        path = self.folder / FILE_NAMES[kind]
        uid = None if ds is None else str(ds.SOPInstanceUID)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        return WrittenObject(kind, path, media_type, uid, digest, time.perf_counter() - started)


def _dicom_objects(job: _Job) -> list[WrittenObject]:
    """SEG, TID 1500 SR and TID 5200 SR."""
    out = []
    started = time.perf_counter()
    seg = write_seg(
        job.source_ds,
        job.masks,
        job.algorithms.segmentation,
        job.folder / FILE_NAMES["seg"],
        equipment=job.equipment,
        **job.uids("seg"),
    )
    out.append(job.written("seg", DICOM_MEDIA_TYPE, started, seg))
    for kind, write in (("sr", write_sr), ("echo_sr", write_echo_sr)):
        # echo_sr: the same numbers as the TID 1500 SR, in the template echo systems import
        started = time.perf_counter()
        sr = write(
            job.source_ds,
            job.measurements,
            job.algorithms,
            job.report,
            job.folder / FILE_NAMES[kind],
            equipment=job.equipment,
            **job.uids(kind),
        )
        out.append(job.written(kind, DICOM_MEDIA_TYPE, started, sr))
    return out


def _overlay_objects(job: _Job) -> list[WrittenObject]:
    """The overlay frames, rendered once, as the WebM video and the secondary capture
    (``overlay_writer``: frame by frame, the SC's JPEG frames on a thread of their own). The
    video's time is the rendering and encoding, the SC's its JPEG frames and its dataset."""
    started = time.perf_counter()
    rendered = render_video_and_jpeg(
        job.cine.frames,
        job.masks,
        job.folder / FILE_NAMES["overlay_video"],
        job.cine.frame_time_ms,
        ed_frames=tuple(b.ed_frame for b in job.measurements.beats),
        es_frames=tuple(b.es_frame for b in job.measurements.beats),
        demo_models=job.demo,
    )
    video = job.written("overlay_video", WEBM_MEDIA_TYPE, started)
    video = dataclasses.replace(video, elapsed_s=rendered.video_s)
    started = time.perf_counter()
    sc = write_secondary_capture(
        job.source_ds,
        rendered.jpeg,
        job.folder / FILE_NAMES["secondary_capture"],
        frame_time_ms=job.cine.frame_time_ms,
        demo_models=job.demo,
        equipment=job.equipment,
        **job.uids("secondary_capture"),
    )
    sc_written = job.written("secondary_capture", DICOM_MEDIA_TYPE, started, sc)
    sc_written = dataclasses.replace(sc_written, elapsed_s=sc_written.elapsed_s + rendered.jpeg_s)
    return [video, sc_written]


def _documents(
    job: _Job, node_system: str, patient_identifier_system: str | None
) -> list[WrittenObject]:
    """The report PDF (file and encapsulated in DICOM) and the FHIR Bundle that carries it."""
    source = SourceLoop.from_dataset(job.source_ds)
    started = time.perf_counter()
    pdf = build_report_pdf(
        source,
        job.measurements,
        job.algorithms,
        job.report,
        frames_rgb=job.cine.frames,
        masks=job.masks,
        equipment=job.equipment,
    )
    (job.folder / FILE_NAMES["rendering"]).write_bytes(pdf)
    out = [job.written("rendering", PDF_MEDIA_TYPE, started)]

    started = time.perf_counter()
    doc = write_encapsulated_pdf(
        job.source_ds,
        pdf,
        job.report,
        job.folder / FILE_NAMES["pdf"],
        equipment=job.equipment,
        **job.uids("pdf"),
    )
    out.append(job.written("pdf", DICOM_MEDIA_TYPE, started, doc))

    started = time.perf_counter()
    bundle = build_fhir_bundle(
        source,
        job.measurements,
        job.algorithms,
        job.report,
        node_system=node_system,
        pdf_bytes=pdf,
        patient_identifier_system=patient_identifier_system,
    )
    (job.folder / FILE_NAMES["fhir"]).write_text(bundle_json(bundle), encoding="utf-8")
    out.append(job.written("fhir", FHIR_MEDIA_TYPE, started))
    return out


def _read_in_full(ds: Dataset) -> None:
    """Converts every element of ``ds`` (sequences included) from its raw form now, so two
    threads that then read it never both convert (and store) the same element."""
    meta = getattr(ds, "file_meta", None)
    for dataset in (ds, meta) if meta is not None else (ds,):
        for _element in dataset.iterall():
            pass
