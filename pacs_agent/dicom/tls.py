"""TLS for the DICOM listener: the node's certificate, and client certificates required.

A PACS that reaches the node over a network proves who it is with a certificate signed by the
configured CA; the AE title alone is a name anyone can type.
"""

from __future__ import annotations

import ssl

from pacs_agent.config import DicomConfig
from pacs_agent.startup import StartupError


def tls_enabled(config: DicomConfig) -> bool:
    return bool(config.tls_cert_file and config.tls_key_file and config.tls_ca_file)


def server_tls_context(config: DicomConfig) -> ssl.SSLContext | None:
    """The listener's context (TLS 1.2 or newer, client certificate required), or None."""
    if not tls_enabled(config):
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    try:
        context.load_cert_chain(config.tls_cert_file, config.tls_key_file)
        context.load_verify_locations(cafile=config.tls_ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise StartupError(
            "cannot load the DICOM TLS files (dicom.tls_cert_file, dicom.tls_key_file, "
            f"dicom.tls_ca_file): {exc}"
        ) from None
    return context
