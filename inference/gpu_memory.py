"""GPU memory held by this process, read without importing torch.

A metrics scrape in a web-only process must not load torch nor create a CUDA context, so this
module never imports torch: it looks at ``sys.modules`` and reads only a torch that the process
imported already, with CUDA already initialised.
"""

from __future__ import annotations

import logging
import sys

log = logging.getLogger(__name__)


def gpu_memory_bytes() -> dict[tuple[str, str], float]:
    """(device index, allocated|reserved) -> bytes; {} without an initialised CUDA."""
    loaded = sys.modules.get("torch")
    if loaded is None:
        return {}
    try:
        if not (loaded.cuda.is_available() and loaded.cuda.is_initialized()):
            return {}
        out: dict[tuple[str, str], float] = {}
        for index in range(loaded.cuda.device_count()):
            out[(str(index), "allocated")] = float(loaded.cuda.memory_allocated(index))
            out[(str(index), "reserved")] = float(loaded.cuda.memory_reserved(index))
        return out
    except Exception:  # a driver problem must not fail the scrape
        log.debug("GPU memory not readable", exc_info=True)
        return {}
