"""The free-disk guard (``dicom.min_free_disk_mb``), as one rule for every place that applies it.

The listener refuses a C-STORE with 0xA700 when keeping it would leave less free disk than the
guard, and ``/readyz`` reports not-ready while the guard refuses every store; both ask here, so
the two can never disagree. No imports of the store or the listener: both import this module.
"""

from __future__ import annotations

import shutil
from pathlib import Path

BYTES_PER_MB = 1024 * 1024


def disk_guard_shortfall(root: Path, min_free_disk_mb: int, incoming_bytes: int = 0) -> str:
    """Why storing ``incoming_bytes`` under ``root`` would go below ``min_free_disk_mb`` MiB of
    free disk, or "" when it would not."""
    free = shutil.disk_usage(root).free
    if free - incoming_bytes >= min_free_disk_mb * BYTES_PER_MB:
        return ""
    return (
        f"{free // BYTES_PER_MB} MiB free, storing {incoming_bytes // BYTES_PER_MB} MiB "
        f"would go below dicom.min_free_disk_mb = {min_free_disk_mb}"
    )
