"""multipart/related framing (RFC 2387): reading STOW-RS request bodies without copying their
parts, and writing WADO-RS answers streamed from the stored files.
"""

from __future__ import annotations

import mmap
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from flask import Response
from werkzeug.http import parse_options_header

from pacs_agent.errors import EchoAgentError
from web.dicomweb.blueprint import (
    SPOOL_CHUNK_BYTES,
)


class MultipartError(EchoAgentError, ValueError):
    """The request body is not the multipart/related message its Content-Type announces."""


def split_multipart(body: mmap.mmap | bytes, boundary: bytes) -> Iterator[tuple[bytes, int, int]]:
    """(part headers, content start, content end) of each body part (RFC 2046 5.1.1), found
    without copying the contents: a part of several hundred MB stays in the file."""
    marker = b"--" + boundary
    delimiter = b"\r\n" + marker
    pos = body.find(marker)
    if pos < 0 or (pos > 0 and (pos < 2 or body[pos - 2 : pos] != b"\r\n")):
        raise MultipartError("no opening boundary")
    pos += len(marker)
    while True:
        if body[pos : pos + 2] == b"--":
            return  # the close delimiter
        line_end = body.find(b"\r\n", pos)
        if line_end < 0 or body[pos:line_end].strip(b" \t"):
            raise MultipartError("boundary line not followed by CRLF")
        headers_end = body.find(b"\r\n\r\n", line_end)  # == line_end: a part without headers
        if headers_end < 0:
            raise MultipartError("part headers do not end")
        start = headers_end + 4
        end = body.find(delimiter, start)
        if end < 0:
            raise MultipartError("part does not end with a boundary")
        yield bytes(body[line_end + 2 : headers_end]), start, end
        pos = end + len(delimiter)


def part_content_type(headers_raw: bytes) -> str:
    for line in headers_raw.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-type":
            return parse_options_header(value.decode("latin-1").strip())[0]
    return ""


def _part_head(content_type: str, boundary: str) -> bytes:
    return f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode("ascii")


def _body_length(parts: Sequence[tuple[str, Path]], boundary: str) -> int:
    close = len(f"--{boundary}--\r\n")
    return close + sum(
        len(_part_head(content_type, boundary)) + path.stat().st_size + 2
        for content_type, path in parts
    )


def _body(parts: Sequence[tuple[str, Path]], boundary: str) -> Iterator[bytes]:
    """The files, byte for byte, one per part, read in pieces (a loop is large)."""
    for content_type, path in parts:
        yield _part_head(content_type, boundary)
        with path.open("rb") as source:
            while chunk := source.read(SPOOL_CHUNK_BYTES):
                yield chunk
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode("ascii")


def multipart_response(parts: Sequence[tuple[str, Path]], part_type: str) -> Response:
    """A 200 ``multipart/related; type=part_type`` answer of (content type, file) parts,
    streamed from the files, with its length known up front."""
    boundary = uuid.uuid4().hex
    response = Response(_body(parts, boundary), status=200, direct_passthrough=True)
    response.headers["Content-Type"] = (
        f'multipart/related; type="{part_type}"; boundary={boundary}'
    )
    response.headers["Content-Length"] = str(_body_length(parts, boundary))
    return response
