"""Two threads reaching transformers at once get the finished module (the warm-up thread and a
job or chat request do this in the node)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# A fresh interpreter (transformers is imported once per process): one thread starts the first
# import; the main thread asks for a class while that import is provably still running.
RACE = textwrap.dedent(
    """
    import sys, threading, time
    from llm.hf_imports import transformers_module

    first = threading.Thread(target=transformers_module)
    first.start()
    deadline = time.monotonic() + 60
    while True:
        module = sys.modules.get("transformers")
        if module is not None and getattr(module.__spec__, "_initializing", False):
            break
        if time.monotonic() > deadline or not first.is_alive():
            sys.exit("the first import was not seen in progress")
        time.sleep(0.0005)
    cls = transformers_module().AutoModelForCausalLM
    first.join()
    print(cls.__name__)
    """
)


@pytest.mark.slow
def test_a_second_thread_gets_the_finished_transformers_module() -> None:
    done = subprocess.run(
        [sys.executable, "-c", RACE], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "AutoModelForCausalLM"
