"""Pixels for the cine player: source frames as JPEG and the LV contour of every frame as JSON.

Frames are decoded with the inference package's decoder (the same pixels the networks saw) and
the contours come from the DICOM SEG the node wrote (the masks PACS received), so the page shows
exactly what was measured and exported. Decoding a loop takes a moment, so the last few loops
are kept in memory, encoded once.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from flask import Blueprint, Response, abort, current_app, jsonify
from pydicom import dcmread
from sqlalchemy import select
from sqlalchemy.orm import Session

from inference.decode import read_cine
from pacs_agent.config import Config
from pacs_agent.db.models import Analysis, Artifact, Instance
from pacs_agent.export import artifact_path
from reporting.seg import seg_masks
from web.db import db

bp = Blueprint("media", __name__)

CACHE_LOOPS = 4
JPEG_QUALITY = 90


@dataclass(frozen=True)
class LoopMedia:
    jpegs: tuple[bytes, ...]
    contours: dict[str, Any]


class MediaCache:
    """A small LRU of encoded loops, with one lock per loop so two requests decode once."""

    def __init__(self, size: int = CACHE_LOOPS) -> None:
        self.size = size
        self._items: OrderedDict[int, LoopMedia] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[int, threading.Lock] = {}

    def get(self, analysis_id: int, load: Any) -> LoopMedia:
        with self._lock:
            if analysis_id in self._items:
                self._items.move_to_end(analysis_id)
                return self._items[analysis_id]
            loading = self._loading.setdefault(analysis_id, threading.Lock())
        with loading:
            with self._lock:
                if analysis_id in self._items:
                    return self._items[analysis_id]
            media = load()
            with self._lock:
                self._items[analysis_id] = media
                self._items.move_to_end(analysis_id)
                while len(self._items) > self.size:
                    self._items.popitem(last=False)
                self._loading.pop(analysis_id, None)
            return media


def _load(session: Session, config: Config, analysis: Analysis) -> LoopMedia:
    instance = session.get(Instance, analysis.instance_fk)
    if instance is None:
        abort(404)
    cine = read_cine(config.store_path / instance.file_path)
    jpegs = []
    for frame in cine.frames:
        ok, buf = cv2.imencode(
            ".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
        )
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        jpegs.append(buf.tobytes())
    seg = session.scalar(
        select(Artifact)
        .where(Artifact.job_fk == analysis.job_fk, Artifact.kind == "seg")
        .order_by(Artifact.id.desc())
        .limit(1)
    )
    masks = None
    if seg is not None:
        masks = seg_masks(dcmread(artifact_path(config, seg)))
    rows, cols = int(cine.frames.shape[1]), int(cine.frames.shape[2])
    return LoopMedia(tuple(jpegs), contours_json(masks, cine.n_frames, rows, cols))


def contours_json(masks: np.ndarray | None, n_frames: int, rows: int, cols: int) -> dict[str, Any]:
    """Per frame, the outline of the largest LV region as a flat [x0, y0, x1, y1, ...] list in
    source pixels (empty where the segmentation found nothing)."""
    frames: list[list[float]] = []
    for index in range(n_frames):
        if masks is None or index >= len(masks) or not masks[index].any():
            frames.append([])
            continue
        found, _ = cv2.findContours(
            masks[index].astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
        )
        largest = max(found, key=cv2.contourArea)
        points = cv2.approxPolyDP(largest, 0.6, True).reshape(-1, 2)
        frames.append([float(v) for v in points.reshape(-1)])
    return {"width": cols, "height": rows, "source": "seg" if masks is not None else "none",
            "frames": frames}


def _media(analysis_id: int) -> LoopMedia:
    session = db()
    analysis = session.get(Analysis, analysis_id)
    if analysis is None:
        abort(404)
    config: Config = current_app.config["ECHO_AGENT_CONFIG"]
    cache: MediaCache = current_app.config["ECHO_AGENT_MEDIA_CACHE"]
    return cache.get(analysis_id, lambda: _load(session, config, analysis))


@bp.get("/api/analyses/<int:analysis_id>/frames/<int:index>.jpg")
def frame(analysis_id: int, index: int) -> Response:
    media = _media(analysis_id)
    if index < 0 or index >= len(media.jpegs):
        abort(404)
    response = Response(media.jpegs[index], mimetype="image/jpeg")
    return response


@bp.get("/api/analyses/<int:analysis_id>/contours")
def contours(analysis_id: int) -> Any:
    return jsonify(_media(analysis_id).contours)
