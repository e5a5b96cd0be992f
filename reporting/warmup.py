"""Loads, at process start, what the first written SR or SEG would otherwise load on its way.

highdicom checks every attribute it sets against the DICOM standard's IOD tables, which it
ships as JSON (the SOP Class -> IOD map, the IOD -> modules map and the large module ->
attributes map) and parses on first use, once per process (``functools.lru_cache``). Parsing
them takes about 0.4 s on this project's 2-core machine, paid by the first job's first SR
(or SEG) build inside its "write" stage. ``warm_dicom_writers`` parses them up front, in the
node's background model warm-up, so the first job writes as fast as the later ones.

The three loaders are highdicom's private helpers (``highdicom._standard_utils``); if a
highdicom release renames them, the warm-up raises AttributeError at start (logged, not fatal)
and ``tests/test_warmup.py`` fails, rather than the warm-up silently doing nothing.
"""

from __future__ import annotations

import time

from highdicom import _standard_utils

# highdicom's cached parsers of its bundled copy of the standard's tables
_STANDARD_TABLES = (
    _standard_utils.get_sop_class_iod_map,
    _standard_utils.get_iod_module_map,
    _standard_utils.get_module_attribute_map,
)


def warm_dicom_writers() -> float:
    """Parses highdicom's standard tables now (a no-op once they are parsed); returns the
    seconds it took."""
    started = time.perf_counter()
    for load in _STANDARD_TABLES:
        load()
    return time.perf_counter() - started


def dicom_writers_warm() -> bool:
    """True when every table ``warm_dicom_writers`` loads is already parsed in this process."""
    return all(load.cache_info().currsize > 0 for load in _STANDARD_TABLES)
