"""The node's one pynetdicom Application Entity, for sending and receiving alike.

pynetdicom's model is one ``AE`` per application: it owns the AE title, the implementation
identity and the listener's acceptor rules, and every association (the listener's acceptors,
each C-STORE/C-ECHO requestor) is a thread bound to it. The node used to build a fresh ``AE``
for every try; now the listener and every send of a process use the same one, and what differs
between associations is passed to that association and nothing else:

* the presentation contexts of a send go to ``AE.associate(..., contexts=...)`` (pynetdicom
  copies them per association), so the AE's own ``requested_contexts`` stay empty and two
  threads sending different SOP classes at once cannot see each other's contexts;
* the AE's timeouts are the requestor's (``SCU_*``); the listener sets its own timeouts on each
  association it accepts (``ListenerServer``), before the association reads anything.

Once built, an AE is never changed. The AE's settings that only a listener reads
(``maximum_associations``, ``require_calling_aet``, ``require_called_aet``, the maximum PDU
length it announces) come from ``[dicom]``; two configurations that differ in them (tests run
several listeners in one process) get two AEs, keyed by those settings, so one listener's
rules never leak into another's.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from pynetdicom import AE

from pacs_agent.config import DicomConfig
from pacs_agent.dicom.filemeta import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

# Largest P-DATA PDU the node accepts. Senders split a dataset into PDUs of at most this size;
# pynetdicom handles each PDU in Python, so fewer, larger PDUs make ingest several times faster
# than its 16 KiB default (see ``echo-agent bench ingest``). It is also a hard limit: a longer
# PDU inside an association is aborted unread (``pdu_limits``).
MAX_PDU_BYTES = 4 * 1024 * 1024  # 4 MiB

# A send: connecting, the association request and every network read wait at most this long
# for a peer that never answers.
SCU_NETWORK_TIMEOUT_S = 10.0
# C-STORE of a large loop over a slow link can take a while; a dead peer is caught by the
# network timeout long before this
SCU_DIMSE_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class _AeKey:
    """The settings an AE is built from; equal keys share one AE."""

    ae_title: str
    max_associations: int
    allowed_calling_aes: tuple[str, ...]
    check_called_ae: bool


class NodeAEs:
    """The AEs of a process, one per distinct ``_AeKey``, made on first use under a lock.

    A process normally holds one instance (``PROCESS_AES``); it is a class so that its state
    is visible and a test can hold its own.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._aes: dict[_AeKey, AE] = {}

    def get(self, dicom: DicomConfig) -> AE:
        """The AE for ``dicom``'s title and acceptor rules; the same object on every call."""
        key = _AeKey(
            ae_title=dicom.ae_title,
            max_associations=dicom.max_associations,
            allowed_calling_aes=tuple(dicom.allowed_calling_aes),
            check_called_ae=dicom.check_called_ae,
        )
        with self._lock:
            ae = self._aes.get(key)
            if ae is None:
                ae = self._aes[key] = _build(key)
            return ae


def _build(key: _AeKey) -> AE:
    ae = AE(ae_title=key.ae_title)
    ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    # requestor timeouts; the listener replaces them on the associations it accepts
    ae.connection_timeout = SCU_NETWORK_TIMEOUT_S
    ae.acse_timeout = SCU_NETWORK_TIMEOUT_S
    ae.network_timeout = SCU_NETWORK_TIMEOUT_S
    ae.dimse_timeout = SCU_DIMSE_TIMEOUT_S
    # what only the listener reads
    ae.maximum_associations = key.max_associations
    ae.require_calling_aet = list(key.allowed_calling_aes)
    ae.require_called_aet = key.check_called_ae
    ae.maximum_pdu_size = MAX_PDU_BYTES
    return ae


# The process's AEs: pynetdicom's one-AE-per-application model, shared by the listener and
# every send in this process.
PROCESS_AES = NodeAEs()


def node_ae(dicom: DicomConfig) -> AE:
    """The process's AE for ``dicom`` (listener and sends of one configuration share it)."""
    return PROCESS_AES.get(dicom)
