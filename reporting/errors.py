"""The reporting package's error hierarchy: every error it raises on purpose derives from
``ReportingError``, so a caller can catch "an output object could not be written" in one
class. The classes live beside the code that raises them (``overlay.RenderingError``) and keep
their older built-in base as a second one, so earlier ``except`` sites still catch them.
"""

from __future__ import annotations


class ReportingError(Exception):
    """Base of every error ``reporting`` raises on purpose."""


__all__ = ["ReportingError"]
