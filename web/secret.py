"""The key that signs session cookies: generated once per node and kept under ``<home>``.

A fixed key in code would let anyone who reads the source forge a session; a key made at every
start would log everyone out on each restart. So it is random, written once with 0600
permissions (readable by the node's account only), and read back afterwards.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from pacs_agent.errors import EchoAgentError

SECRET_FILE_NAME = "web-secret-key"
KEY_BYTES = 32


class SecretKeyError(EchoAgentError, RuntimeError):
    """The key file exists but cannot be used (unreadable, too short, too open)."""


def load_or_create_secret_key(home: Path) -> bytes:
    """Reads ``<home>/web-secret-key``, creating it (0600, O_EXCL) when missing."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / SECRET_FILE_NAME
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read(path)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(secrets.token_hex(KEY_BYTES))
        fh.flush()
        os.fsync(fh.fileno())
    return _read(path)


def _read(path: Path) -> bytes:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise SecretKeyError(
            f"{path} is readable by other accounts (mode {mode:o}); run: chmod 600 {path}"
        )
    text = path.read_text(encoding="ascii").strip()
    if len(text) < KEY_BYTES:
        raise SecretKeyError(f"{path} holds no usable key (delete it to make a new one)")
    return text.encode("ascii")
