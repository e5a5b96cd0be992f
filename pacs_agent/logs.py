"""Log set-up for the command line: one line per event on stderr, never patient names.

``logging.format = "json"`` writes one JSON object per line (time, level, logger, message, and
``study_id`` / ``job_id`` / ``instance_uid`` when known: see ``pacs_agent.logcontext``).

Python warnings go through logging too (``logging.captureWarnings``), so a library's
UserWarning is one line in the chosen format instead of free text that breaks JSON logs. Some
libraries quote a dataset's value in their messages (highdicom's person-name check quotes the
name, pydicom's value checks quote the value: a birth date, a name); ``RedactQuotedValues``
blanks whatever such a message quotes before any handler writes it.
"""

from __future__ import annotations

import logging
import re

from pacs_agent.logcontext import ContextFilter, JsonFormatter, TextFormatter

# Loggers whose messages may quote a value read from a dataset; "py.warnings" carries every
# Python warning once captureWarnings is on.
VALUE_QUOTING_LOGGERS = ("py.warnings", "pydicom", "highdicom")
REDACTED = "<redacted>"
# a run in double or single quotes (Python's repr of str and bytes uses the latter)
_QUOTED = re.compile(r"\"[^\"]*\"|'[^']*'")


class RedactQuotedValues(logging.Filter):
    """Blanks quoted text in messages from ``VALUE_QUOTING_LOGGERS``.

    A handler filter, so it sees every record the handler writes, the libraries' included. It
    cannot know which quoted text is a name, so it blanks all of it: these messages still say
    what went wrong, and the node's own messages (UIDs and ids, never values) are untouched.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if _quotes_values(record.name):
            message = record.getMessage()
            if record.name == "py.warnings":
                # "file:line: Category: message" and then the source line: keep one line
                message = message.strip().splitlines()[0] if message.strip() else message
            redacted = _QUOTED.sub(_blank, message)
            if redacted != record.msg or record.args:
                record.msg, record.args = redacted, None
        return True


def _quotes_values(logger_name: str) -> bool:
    return any(
        logger_name == name or logger_name.startswith(name + ".") for name in VALUE_QUOTING_LOGGERS
    )


def _blank(match: re.Match[str]) -> str:
    quote = match.group(0)[0]
    return f"{quote}{REDACTED}{quote}"


def configure_logging(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    handler.addFilter(RedactQuotedValues())
    logging.basicConfig(level=getattr(logging, level), handlers=[handler])
    # warnings become records of the "py.warnings" logger: formatted, and redacted as above
    logging.captureWarnings(True)
    # pynetdicom logs every PDU at INFO; a node serving a lab needs its own lines, not those
    logging.getLogger("pynetdicom").setLevel(max(logging.WARNING, getattr(logging, level)))
    logging.getLogger("alembic").setLevel(max(logging.WARNING, getattr(logging, level)))
    # highdicom narrates every module it copies at INFO
    logging.getLogger("highdicom").setLevel(max(logging.WARNING, getattr(logging, level)))
