"""DICOMweb on the node (PS3.18): STOW-RS in, QIDO-RS and WADO-RS out, at ``/dicomweb``.

STOW-RS is another way in for the loops a PACS sends by C-STORE, and it takes the very same
path: every part goes through the DICOM listener's own store handler, so a part is refused with
exactly the status C-STORE would answer (``stow``). A stored instance joins its study like one
sent by C-STORE, and the assembler, which watches the database, judges and queues it when the
study has settled.

QIDO-RS (``qido``) and WADO-RS (``wado``) serve studies, series and instances: the received
ones and the node's own DICOM results (``served``), so a DICOMweb viewer shows both, in DICOM
JSON (``dicom_json``) and multipart/related (``multipart``) framed in one place each
(``responses`` for every JSON answer).

Who may (``access``): machine clients present a bearer token (``echo-agent token add NAME
--role``): ``pacs`` stores and reads, ``viewer`` reads. A reviewer's browser session works as
well (any role reads, ``admin`` stores; a store then needs the CSRF header like any other
change). Every read of a study and every store is in the audit trail; no patient name is logged.
"""

from __future__ import annotations

from flask import Flask

from pacs_agent.config import Config
from pacs_agent.store import InstanceStore
from web.dicomweb import qido, stow, wado
from web.dicomweb.access import authenticate
from web.dicomweb.blueprint import STORE_KEY, bp
from web.dicomweb.multipart import MultipartError, split_multipart
from web.dicomweb.stow import read_file_meta

# the route modules register their views on ``bp`` when imported
ROUTE_MODULES = (stow, qido, wado)

__all__ = [
    "MultipartError",
    "authenticate",
    "bp",
    "init_app",
    "read_file_meta",
    "split_multipart",
]


def init_app(app: Flask) -> None:
    """Registers the blueprint and its bearer-token check, which must run before ``auth.guard``
    (``web.app`` calls this between the two); nothing when ``dicomweb.enabled`` is false."""
    config: Config = app.config["ECHO_AGENT_CONFIG"]
    if not config.dicomweb.enabled:
        return
    app.extensions[STORE_KEY] = InstanceStore(
        root=config.store_path,
        min_free_disk_mb=config.dicom.min_free_disk_mb,
        data_dir=config.home_path,
    )
    app.before_request(authenticate)
    app.register_blueprint(bp)
