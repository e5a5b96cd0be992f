"""The llm package's error hierarchy: every error it raises on purpose derives from
``LlmError``, so a caller can catch "the language model could not answer" in one class. The
classes live beside the code that raises them (``backend.LanguageModelError``) and keep their
older built-in base as a second one, so earlier ``except`` sites still catch them.
"""

from __future__ import annotations


class LlmError(Exception):
    """Base of every error ``llm`` raises on purpose."""


__all__ = ["LlmError"]
