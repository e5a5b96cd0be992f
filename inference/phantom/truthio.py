"""Byte-reproducible writers for the truth files (JSON and .npz).

numpy's savez stamps the current time into the zip entries, which would make two runs with
the same seed differ; this writer fixes the timestamp.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

_EPOCH = (1980, 1, 1, 0, 0, 0)


def save_npz(path: Path, **arrays: np.ndarray) -> Path:
    """Like np.savez_compressed (np.load reads it), but deterministic."""
    path = Path(path)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue(), compresslevel=6)
    return path


def save_json(path: Path, obj: dict[str, Any]) -> Path:
    """Floats are written in full (repr) precision so derived values recompute exactly."""
    path = Path(path)
    path.write_text(json.dumps(obj, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path
