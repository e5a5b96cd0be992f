"""The inference package's error hierarchy: every error it raises on purpose (a loop it cannot
decode, a checkpoint it cannot load, a frame it cannot measure) derives from
``InferenceError``, so a caller above can catch "the models refused this" in one class.

The classes live beside the code that raises them (``decode.DecodeError``, ...) and keep
``ValueError`` as a second base, so every ``except ValueError`` site still catches them.
"""

from __future__ import annotations


class InferenceError(Exception):
    """Base of every error ``inference`` raises on purpose."""


__all__ = ["InferenceError"]
