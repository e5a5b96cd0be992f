"""The DICOMweb blueprint and what its modules share: media types, limits, the logger.

Routes register on ``bp`` when their module is imported (``web.dicomweb`` imports them all).
"""

from __future__ import annotations

import logging

from flask import Blueprint, current_app

from pacs_agent.config import Config
from pacs_agent.disk_guard import BYTES_PER_MB

log = logging.getLogger("echo_agent.dicomweb")

bp = Blueprint("dicomweb", __name__, url_prefix="/dicomweb")

PREFIX = "/dicomweb"
DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
STORE_KEY = "echo_agent_dicomweb_store"
SPOOL_CHUNK_BYTES = BYTES_PER_MB
MAX_RESULTS = 1000


def node_config() -> Config:
    """The node's configuration, as the app factory stored it."""
    return current_app.config["ECHO_AGENT_CONFIG"]
