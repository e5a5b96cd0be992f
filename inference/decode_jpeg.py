"""JPEG Baseline colour frames decoded by libjpeg-turbo (through Pillow) straight to RGB.

Most echo loops arrive as JPEG Baseline YBR_FULL_422. pydicom's default route for them
(pylibjpeg's libjpeg, then a float YCbCr -> RGB pass in numpy) took 3.6 times as long as
dcmtk's ``dcmdjpeg`` on the 100-frame 800x600 bench loop. libjpeg-turbo does the upsampling
and the colour conversion inside the decoder, in integer arithmetic, and gives exactly the
pixels ``dcmdjpeg`` gives (both follow the IJG reference decoder; the old route differed by
up to 11 levels on about 2 % of the pixels), in about half dcmdjpeg's time. Pillow releases
the GIL while it decodes, so a whole loop is decoded on a few threads at once
(``decode_all``).

Only frames whose colour space libjpeg itself infers as YCbCr come here (see
``_stream_is_ycbcr``); anything else (grey, RGB-coded streams, other syntaxes, 12-bit data)
stays on pydicom's decoders. The caller keeps the frame-size check: each frame's own header
is checked against Rows x Columns before it is decoded.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import JPEGBaseline8Bit

from inference.frame_size import FrameSizeError

YBR_PHOTOMETRICS = frozenset({"YBR_FULL_422", "YBR_FULL"})
# component identifiers 'R', 'G', 'B': libjpeg then takes the stream as RGB, not YCbCr
_RGB_COMPONENT_IDS = (82, 71, 66)
# decoding threads for a whole loop: the work is in C with the GIL released
MAX_DECODE_THREADS = 4


class NotYCbCrError(ValueError):
    """The frame is not one this module decodes (its markers say it is not YCbCr coded)."""


def turbo_applies(ds: Dataset, samples: int, photometric: str) -> bool:
    """True for 8-bit, 3-sample JPEG Baseline loops stored as YBR_FULL(_422): the ones
    ``decode_rgb`` may decode (each frame's own markers are checked as it is decoded)."""
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    return (
        syntax == JPEGBaseline8Bit
        and samples == 3
        and photometric in YBR_PHOTOMETRICS
        and int(ds.get("BitsAllocated", 8) or 8) == 8
    )


def decode_rgb(frame: bytes, rows: int, cols: int) -> np.ndarray:
    """One JPEG frame as (rows, cols, 3) uint8 RGB. Raises ``NotYCbCrError`` when the
    stream is not YCbCr coded (the caller falls back to pydicom), ``FrameSizeError`` when it
    does not hold Rows x Columns, and Pillow's own errors when it is corrupt."""
    with Image.open(io.BytesIO(frame), formats=("JPEG",)) as image:
        if image.mode != "RGB" or not _stream_is_ycbcr(image):
            raise NotYCbCrError(f"a {image.mode} JPEG stream that is not YCbCr coded")
        if image.size != (cols, rows):
            width, height = image.size
            raise FrameSizeError(
                f"the frame holds {height} x {width}, Rows x Columns are {rows} x {cols}"
            )
        image.load()
        array = np.asarray(image)
    if array.shape != (rows, cols, 3) or array.dtype != np.uint8:
        raise FrameSizeError(f"the decoder gave {array.shape} {array.dtype} for one frame")
    return array


def decode_all(
    frames: Sequence[bytes],
    out: np.ndarray,
    decode_one: Callable[[int], np.ndarray],
    threads: int | None = None,
) -> np.ndarray:
    """Fills ``out[i]`` with ``decode_one(i)`` for every frame, on a few threads (the
    decoder releases the GIL); the first error raised by any frame is raised here."""
    n_threads = threads or min(MAX_DECODE_THREADS, os.cpu_count() or 1, len(frames))
    if n_threads <= 1 or len(frames) < 2:
        for i in range(len(frames)):
            out[i] = decode_one(i)
        return out

    def fill(i: int) -> None:
        out[i] = decode_one(i)

    with ThreadPoolExecutor(max_workers=n_threads, thread_name_prefix="jpeg-decode") as pool:
        futures = [pool.submit(fill, i) for i in range(len(frames))]
        try:
            for future in futures:
                future.result()  # a frame's error is raised here, in frame order
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)  # frames not started are dropped
            raise
    return out


def _stream_is_ycbcr(image: Image.Image) -> bool:
    """libjpeg's own rule for a 3-component stream (jdapimin.c, default_decompress_parms): a
    JFIF marker means YCbCr; else an Adobe marker's transform flag decides; else component
    identifiers 'R', 'G', 'B' mean RGB and anything else YCbCr."""
    if "jfif" in image.info:
        return True
    if "adobe_transform" in image.info:
        return int(image.info["adobe_transform"] or 0) != 0  # 0: RGB; 1, 2 (YCCK): YCbCr
    layer = getattr(image, "layer", None) or []
    ids = tuple(ord(c[0]) if isinstance(c[0], str) else int(c[0]) for c in layer)
    return ids != _RGB_COMPONENT_IDS
