"""Checks run before the node binds anything, so that a bad start fails in one clear line."""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass

from pacs_agent.config import Config
from pacs_agent.errors import EchoAgentError


class StartupError(EchoAgentError, RuntimeError):
    """The node cannot start as configured (a port is taken, a directory is not writable)."""


@dataclass(frozen=True)
class ListenAddress:
    """A TCP address the node will listen on, with the setting that chooses it."""

    purpose: str
    host: str
    port: int
    setting: str


def bind_listen_socket(address: ListenAddress) -> socket.socket:
    """Binds and listens now, so that the server that later uses the socket cannot lose a race.

    SO_REUSEADDR lets a restarted node bind while old connections sit in TIME_WAIT; on Linux it
    still refuses a port another process is listening on, which is the case to report.
    """
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((address.host, address.port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(
                f"{address.purpose} port {address.port} on {address.host} is already in use "
                f"(choose another with {address.setting})"
            ) from None
        raise StartupError(
            f"cannot listen on {address.host}:{address.port} for {address.purpose}: "
            f"{exc.strerror} (see {address.setting})"
        ) from None
    return sock


def prepare_home(config: Config) -> None:
    """Creates the node's directories; a read-only or missing parent is reported, not raised."""
    for path in (config.home_path, config.store_path):
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StartupError(
                f"cannot create {path}: {exc.strerror} (see home / store.path)"
            ) from None


def web_address(config: Config) -> ListenAddress:
    return ListenAddress("web", config.web.host, config.web.port, "web.port / ECHO_AGENT_WEB_PORT")


def dicom_address(config: Config) -> ListenAddress:
    return ListenAddress(
        "DICOM", config.dicom.host, config.dicom.port, "dicom.port / ECHO_AGENT_DICOM_PORT"
    )


def check_port_free(address: ListenAddress) -> None:
    """Binds and releases the port, for servers that must bind it themselves (pynetdicom).

    Port 0 (any free port, for tests) needs no check.
    """
    if address.port == 0:
        return
    bind_listen_socket(address).close()
