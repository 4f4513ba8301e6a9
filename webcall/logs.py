"""Structured logs: one line per event, `key=value` pairs that a log shipper can split.

Values that come from clients (stream names, info texts) may contain spaces, quotes or `=`; `q()` quotes
them (JSON string syntax) so a line still splits unambiguously. The formatter keeps every record on one
line, tracebacks included (newlines escaped), so one event is always one line.

Never log secrets: ICE passwords, SDP bodies (they carry ICE credentials and fingerprints) and sip*
fields of `connection` stay out of the logs at every level.
"""

from __future__ import annotations

import json
import logging

_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:/@+,")


def q(value: object) -> str:
    """A log value: as-is when it is a plain token, else a JSON-quoted string."""
    text = str(value)
    if text and all(ch in _PLAIN for ch in text):
        return text
    return json.dumps(text, ensure_ascii=True)


class OneLineFormatter(logging.Formatter):
    """Escapes line breaks, so tracebacks and stray newlines cannot split (or forge) log lines."""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\r", "\\r").replace("\n", "\\n")


LOG_FORMAT = "%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"


def configure(level: str, worker: int | None = None) -> None:
    """Log lines to stderr; a media worker's lines also say which worker wrote them (they share the stream)."""
    handler = logging.StreamHandler()
    fmt = LOG_FORMAT if worker is None else LOG_FORMAT.replace("%(message)s", f"worker={worker} %(message)s")
    handler.setFormatter(OneLineFormatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
