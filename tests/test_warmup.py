"""The start-up warm-up of the DICOM writers (``reporting.warmup``): in a fresh process it
leaves highdicom's standard tables parsed, and after it an SR build reads those tables
without parsing any of them again (so the first job's first SR does not pay for them)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from highdicom import _standard_utils
from orthanc_helpers import REPO_ROOT, phantom_cache
from reporting_helpers import SEED_ONE_STUDY, a4c_paths, demo_algorithms, draft, load_loop

from reporting.sr import build_sr
from reporting.warmup import _STANDARD_TABLES, dicom_writers_warm, warm_dicom_writers

FRESH_PROCESS = """
from reporting.warmup import dicom_writers_warm, warm_dicom_writers
from echo_agent.node_models import warm_dicom_tables
assert not dicom_writers_warm(), "tables parsed at import: the warm-up has nothing to do"
warm_dicom_tables()
assert dicom_writers_warm(), "the node's warm-up left a table unparsed"
print("warm")
"""


def test_warm_up_in_a_fresh_process_parses_the_tables() -> None:
    result = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "warm"


@pytest.fixture(scope="module")
def loop(request, tmp_path_factory):
    (path,) = a4c_paths(phantom_cache(request.config, tmp_path_factory), 1, SEED_ONE_STUDY)
    return load_loop(path)


def test_after_the_warm_up_an_sr_build_parses_no_table(loop) -> None:
    warm_dicom_writers()
    assert dicom_writers_warm()
    before = [load.cache_info() for load in _STANDARD_TABLES]
    build_sr(loop.header, loop.measurements, demo_algorithms(), draft())
    after = [load.cache_info() for load in _STANDARD_TABLES]
    assert [a.misses for a in after] == [b.misses for b in before]
    # the SR build does read the warmed tables (else the warm-up warms the wrong thing)
    assert all(a.hits > b.hits for a, b in zip(after, before, strict=True))
    assert _standard_utils.get_module_attribute_map.cache_info().currsize == 1
