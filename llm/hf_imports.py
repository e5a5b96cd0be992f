"""The Hugging Face libraries (transformers, peft), imported so that several threads may ask
for them at once.

transformers replaces its own entry in ``sys.modules`` with a lazy module at the end of its
first import. An ``import``/``from ... import`` statement in a thread that arrives while another
thread is still inside that first import waits for it and is then handed the half-built
original module: ``cannot import name 'AutoModelForCausalLM' from 'transformers'``. In the node
this happens when the model warm-up thread and a job or a chat request reach the language model
at the same moment. Every import of these libraries in the project goes through here: the lock
makes a later caller wait for the finished import, and ``importlib.import_module`` hands back
what ``sys.modules`` holds then, the finished module."""

from __future__ import annotations

import importlib
import threading
from types import ModuleType

# One lock for the process, because the import system it protects is one per process.
_IMPORT_LOCK = threading.Lock()


def _import_whole(name: str) -> ModuleType:
    with _IMPORT_LOCK:
        return importlib.import_module(name)


def transformers_module() -> ModuleType:
    """``transformers``, completely imported."""
    return _import_whole("transformers")


def peft_module() -> ModuleType:
    """``peft`` (which imports transformers itself), completely imported."""
    return _import_whole("peft")
